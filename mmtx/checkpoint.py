"""orbax-checkpoint: async saves, keep the last K and the best, exact resume.

A checkpoint holds three items: 'state' (params, optimizer state, step, RNG:
a pytree of arrays), 'data' (the input iterator's position, JSON) and
'checksums' (one checksum per array of 'state', JSON). Restoring tells two
failures apart:
- a checkpoint that does not fit the model (a parameter missing, extra, or of
  another shape: the config changed) is a `CheckpointMismatchError` naming
  the first difference; nothing is tried or changed;
- a checkpoint that cannot be read, or whose arrays no longer match their
  checksums, is damaged: it is reported and the previous one is tried. The
  damaged step is kept until training reaches it again, and that save
  replaces it (`damaged`). If no checkpoint can be read the restore is a
  `CheckpointError`, so a run never silently starts over in an old workdir.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Optional

from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from mmtx.optimizers import path_str

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """Checkpoints that cannot be used; the message says what to do."""


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint whose arrays do not fit the model."""


class Checkpointer:
  """Wraps `ocp.CheckpointManager` for the trainer."""

  def __init__(self, directory: str, *, keep: int = 3,
               best_metric: Optional[str] = None, best_mode: str = "max",
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(
          f"{self.directory} is a file, not a directory; checkpoints go "
          f"there. Move the file away, or pass another --workdir.")
    if keep < 1:
      raise ValueError(f"checkpoint keep={keep}: keep at least 1 checkpoint.")
    # Steps found unreadable by restore_latest; a save at one replaces it.
    self.damaged: set[int] = set()
    policies = [ocm.LatestN(n=keep)]
    if best_metric:
      if best_mode not in ("max", "min"):
        raise ValueError(f"checkpoint best_mode must be 'max' or 'min', got "
                         f"{best_mode!r}.")
      policies.append(ocm.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
          n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=("state", "data", "checksums"))

  def save(self, step: int, state: Any, data_state: Any,
           metrics: Optional[dict[str, float]] = None):
    """Saves `step` (the caller decides when). A damaged checkpoint at `step`
    is replaced; any other existing step is an error, never skipped."""
    sums = checksums(state)
    if step in self.damaged:
      self.manager.delete(step)
      self.damaged.discard(step)
    # force: orbax would skip (without a word) any step not above the newest
    # one, and damaged newer steps stay until training reaches them.
    self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=ocp.args.JsonSave(data_state),
                                checksums=ocp.args.JsonSave(sums)),
        metrics=metrics, force=True)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state: Any,
                     on_corrupt: Callable[[int, Exception], None] | None = None):
    """Newest checkpoint that restores cleanly -> (step, state, data_state);
    None if there is none. Damaged ones are reported via `on_corrupt`, and
    recorded in `damaged`.

    Raises:
      CheckpointMismatchError: a checkpoint does not fit `abstract_state`.
      CheckpointError: there are checkpoints and none can be read.
    """
    self.manager.wait_until_finished()
    steps = self.all_steps()
    failed = []
    for step in reversed(steps):
      try:
        meta = self._metadata(step)
      except Exception as e:  # noqa: BLE001 - unreadable means damaged
        failed.append((step, e))
        self._report(step, e, on_corrupt)
        continue
      self._check_fits(step, abstract_state, meta)
      try:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore()))
        self._verify(step, out["state"])
      except Exception as e:  # noqa: BLE001 - any failure means "damaged"
        failed.append((step, e))
        self._report(step, e, on_corrupt)
        continue
      self.damaged = {s for s, _ in failed}
      return step, out["state"], out["data"]
    if failed:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be read (steps "
          f"{[s for s, _ in failed]} are damaged; the newest: "
          f"{type(failed[0][1]).__name__}: {str(failed[0][1])[:300]}). "
          f"Nothing was changed. Pass a new --workdir to train from scratch "
          f"(a checkpoint from a backup copied into {self.directory} "
          f"resumes).")
    return None

  def _report(self, step, err, on_corrupt):
    if on_corrupt:
      on_corrupt(step, err)
    log.warning("checkpoint at step %d is unusable: %s", step, err)

  def _metadata(self, step: int):
    """The saved 'state' tree's array metadata (shape, dtype)."""
    # The handler reads the item's own metadata; StandardCheckpointer would
    # also look for a step-level metadata file inside the item directory and
    # log a spurious "Metadata file does not exist" warning.
    return ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "state").tree

  def _check_fits(self, step: int, abstract: Any, meta: Any):
    model = _shapes(abstract)
    saved = _shapes(meta)
    for k in [k for k, v in model.items() if v is None]:  # PRNG keys
      model.pop(k)
      saved.pop(k, None)
    diffs = []
    for name, shape in model.items():
      if name not in saved:
        diffs.append(f"{name} {shape} is in the model but not in the "
                     "checkpoint")
      elif saved[name] != shape:
        diffs.append(f"{name} has shape {saved[name]} in the checkpoint and "
                     f"{shape} in the model")
    diffs += [f"{name} {shape} is in the checkpoint but not in the model"
              for name, shape in saved.items() if name not in model]
    diffs.sort(key=lambda d: not d.startswith("params/"))  # params first
    if diffs:
      workdir = os.path.dirname(self.directory)
      more = f" (and {len(diffs) - 1} more differences)" if len(diffs) > 1 else ""
      raise CheckpointMismatchError(
          f"the checkpoint at step {step} in {self.directory} does not fit "
          f"this model: {diffs[0]}{more}. The model or optimizer config "
          f"differs from the run that wrote it; nothing was changed. To train "
          f"this config from scratch, pass a new --workdir; to start it from "
          f"that run's weights, pass a new --workdir and "
          f"--config.init_from.workdir={workdir} (the params whose shapes "
          f"fit are copied).")

  def _verify(self, step: int, state: Any):
    """Raises if the restored arrays differ from the checksums saved with
    them (checkpoints without checksums are not checked)."""
    path = epath.Path(self.directory) / str(step) / "checksums"
    if not path.exists():
      return
    saved = self.manager.restore(step, args=ocp.args.Composite(
        checksums=ocp.args.JsonRestore()))["checksums"]
    got = checksums(state)
    for name in sorted(set(saved) | set(got)):
      if saved.get(name) != got.get(name):
        raise ValueError(
            f"{name}: the bytes read do not match the checksum saved with "
            f"them (saved {saved.get(name)}, read {got.get(name)}).")

  def restore_params(self, step: Optional[int] = None):
    """The saved state tree as host-local arrays on this process's first
    device, whatever mesh saved it (e.g. for transfer, or inspection)."""
    self.manager.wait_until_finished()
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint under {self.directory}.")
    step = steps[-1] if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        self._metadata(step), is_leaf=_is_array_meta)
    state = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]
    try:
      self._verify(step, state)
    except ValueError as e:
      raise CheckpointError(f"the checkpoint at step {step} in "
                            f"{self.directory} is damaged: {e}") from None
    return state

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _is_array_meta(m) -> bool:
  return hasattr(m, "shape") and hasattr(m, "dtype")


def _shapes(tree) -> dict[str, Optional[tuple]]:
  """'/'-joined path -> shape of each array (None for PRNG keys, which are
  saved as their key data)."""
  out = {}
  for p, x in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=_is_array_meta)[0]:
    key = jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    out[path_str(p)] = None if key else tuple(x.shape)
  return out


def _checksum(x):
  """A uint32 checksum of an array's bits: sum_i bits_i * w_i mod 2^32 with
  odd weights w_i that depend on the position i, so any one changed word
  changes it. Integer sums are exact, so it does not depend on sharding."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}
  bits = jax.lax.bitcast_convert_type(x, unsigned[x.dtype.itemsize])
  bits = bits.astype(jnp.uint32).reshape(-1)
  w = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(0x9E3779B1)
  return jnp.sum(bits * (w | jnp.uint32(1)), dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: jax.tree_util.tree_map(_checksum, tree))


def checksums(tree: Any) -> dict[str, int]:
  """'/'-joined path -> `_checksum` of every array of `tree`."""
  sums = jax.device_get(_checksums(tree))
  return {path_str(p): int(v) for p, v in
          jax.tree_util.tree_flatten_with_path(sums)[0]}


def to_json_state(state: Any) -> Any:
  """Iterator states may be bytes; JSON needs text."""
  if isinstance(state, bytes):
    return {"__bytes__": state.decode("utf-8")}
  return json.loads(json.dumps(state))


def from_json_state(state: Any) -> Any:
  if isinstance(state, dict) and set(state) == {"__bytes__"}:
    return state["__bytes__"].encode("utf-8")
  return state
