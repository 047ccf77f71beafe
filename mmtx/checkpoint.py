"""orbax-checkpoint: async saves, keep the last K and the best, exact resume.

A checkpoint holds two items: 'state' (params, optimizer state, step, RNG: a
pytree of arrays) and 'data' (the input iterator's position, JSON). A
checkpoint whose restore fails (partial or corrupt files) is reported and the
previous one is tried; nothing is deleted.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Optional

from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

log = logging.getLogger(__name__)


class Checkpointer:
  """Wraps `ocp.CheckpointManager` for the trainer."""

  def __init__(self, directory: str, *, keep: int = 3,
               best_metric: Optional[str] = None, best_mode: str = "max",
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
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
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def save(self, step: int, state: Any, data_state: Any,
           metrics: Optional[dict[str, float]] = None, force: bool = False):
    self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=ocp.args.JsonSave(data_state)),
        metrics=metrics, force=force)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state: Any,
                     on_corrupt: Callable[[int, Exception], None] | None = None):
    """Newest checkpoint that restores cleanly -> (step, state, data_state);
    None if there is none. Broken ones are reported via `on_corrupt`."""
    self.manager.wait_until_finished()
    for step in reversed(self.all_steps()):
      try:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore()))
        _check_complete(abstract_state, out["state"])
        return step, out["state"], out["data"]
      except Exception as e:  # noqa: BLE001 - any failure means "unusable"
        if on_corrupt:
          on_corrupt(step, e)
        log.warning("checkpoint at step %d is unusable: %s", step, e)
    return None

  def restore_params(self, step: Optional[int] = None):
    """The saved state tree as host-local arrays on this process's first
    device, whatever mesh saved it (e.g. for transfer, or inspection)."""
    self.manager.wait_until_finished()
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint under {self.directory}.")
    step = steps[-1] if step is None else step
    # The handler reads the item's own metadata; StandardCheckpointer would
    # also look for a step-level metadata file inside the item directory and
    # log a spurious "Metadata file does not exist" warning.
    meta = ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "state").tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        meta, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    return self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _check_complete(abstract, restored):
  a = jax.tree_util.tree_structure(abstract)
  r = jax.tree_util.tree_structure(restored)
  if a != r:
    raise ValueError(f"restored tree structure differs from the model's: {r} "
                     f"vs {a}")
  for x, y in zip(jax.tree_util.tree_leaves(abstract),
                  jax.tree_util.tree_leaves(restored)):
    if tuple(x.shape) != tuple(y.shape):
      raise ValueError(f"restored array shape {y.shape} != expected {x.shape}")


def to_json_state(state: Any) -> Any:
  """Iterator states may be bytes; JSON needs text."""
  if isinstance(state, bytes):
    return {"__bytes__": state.decode("utf-8")}
  return json.loads(json.dumps(state))


def from_json_state(state: Any) -> Any:
  if isinstance(state, dict) and set(state) == {"__bytes__"}:
    return state["__bytes__"].encode("utf-8")
  return state
