"""The one training loop. It imports no task: `main` hands it one, built
once from the config (mmtx/tasks/*, `tasks.build_task(config)`), which has:
  model: the flax module
  init_batch() -> dict of numpy arrays with the model's input shapes
  init_variables(rng, batch) -> variables (boxed, logical axis names)
  loss_fn(params, batch, rng, train) -> (loss, metrics dict)
  train_iterator(shard_index, shard_count) -> iterator with
    get_state() / set_state(state)
  evaluate(params, mesh) -> (metrics dict, printable table); its jitted steps
    are made once per task, so later evaluations reuse their compilations
  import_weights() -> params (only for config.init_from.weights)

Per step: batch -> `put_batch` (sharded over data x fsdp) -> jitted
`train_step` (grad of task.loss_fn, optax update) -> metrics. Checkpoints hold
params, optimizer state, step, RNG and the iterator position.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmtx import checkpoint as ckpt_lib
from mmtx import optimizers
from mmtx import sharding
from mmtx.layers import video as video_lib

log = logging.getLogger(__name__)

# Steps dispatched ahead of the last one known finished. JAX dispatches
# asynchronously, and the loop only reads metrics every log_every steps; with
# two XLA:CPU devices, ~2,000 steps queued ahead (the default job with
# log_every=2000) deadlocks XLA at a gradient all-reduce (one device waiting
# in the rendezvous, the other's launch blocked).
# A few steps ahead keep the host a step or more in front of the device.
MAX_STEPS_IN_FLIGHT = 8


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


class NonFiniteLossError(RuntimeError):
  pass


class ConfigError(ValueError):
  """A config value the trainer cannot run with (the message names it)."""


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint was saved and the run stopped early. The
  same command resumes it (`mmtx.main` exits with EXIT_PREEMPTED)."""


# The CLI's exit status after a SIGTERM (128 + 15, as if killed by it):
# schedulers read it as "terminated", not "succeeded" or "failed".
EXIT_PREEMPTED = 143


def check_config(config):
  """The trainer's fields, checked where a run starts: a value that would
  train nothing, divide by zero or delete every checkpoint is an error
  naming the field, not a quiet run."""
  def need(ok, field, what):
    if not ok:
      value = config
      for part in field.split("."):
        value = value[part]
      raise ConfigError(f"config.{field}={value!r}: {what}")

  def steps(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1

  need(steps(config.total_steps), "total_steps",
       "must be an int >= 1 (the step training ends at).")
  need(steps(config.batch_size), "batch_size", "must be an int >= 1.")
  need(steps(config.log_every), "log_every",
       "must be an int >= 1 (steps between logged metrics).")
  need(steps(config.checkpoint_every), "checkpoint_every",
       "must be an int >= 1 (steps between checkpoints; the last step is "
       "always saved, so a value above total_steps saves only at the end).")
  need(isinstance(config.eval_every, int) and config.eval_every >= 0,
       "eval_every", "must be an int >= 0 (steps between evaluations; 0 = "
       "only at the end).")
  need(steps(config.keep_checkpoints), "keep_checkpoints",
       "must be an int >= 1 (checkpoints kept; fewer would delete the last "
       "one too).")
  lr = config.optimizer.learning_rate
  need(isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0,
       "optimizer.learning_rate", "must be a finite number >= 0 (a negative "
       "rate climbs the loss).")


# Config fields a resumed run may change: they set how long it trains, what
# it logs, evaluates and keeps, and where it runs, not what it learns.
RESUME_FREE = ("total_steps", "log_every", "eval_every", "checkpoint_every",
               "keep_checkpoints", "best_metric", "best_mode", "mesh.",
               "init_from.", "data.eval_splits", "data.eval_batch_size",
               "data.data_dir", "data.num_workers", "model.unique_texts")
RUN_CONFIG = "config.json"


def _flat_config(config) -> dict:
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[prefix + k] = v
  walk(json.loads(config.to_json_best_effort()), "")
  return out


def check_run_config(config, workdir: str, step: int | None, *,
                     accept_changes: bool = False, write: bool = True):
  """WORKDIR/config.json records the config a run trains with. A run that
  resumes (`step`: the checkpoint's) with other values in any field outside
  RESUME_FREE is a ConfigError naming them, so one run's checkpoints never
  hold two configs' training without a word; `accept_changes` goes on with
  the new config and keeps the old one as config.stepSTEP.json. A workdir
  without the record (from before it existed) gets one."""
  path = os.path.join(workdir, RUN_CONFIG)
  now = _flat_config(config)
  if step is not None and os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    free = lambda k: any(k == f or (f.endswith(".") and k.startswith(f))  # noqa: E731
                         for f in RESUME_FREE)
    diffs = [k for k in sorted(set(before) | set(now))
             if not free(k) and before.get(k, "(absent)") != now.get(
                 k, "(absent)")]
    if diffs and not accept_changes:
      shown = "; ".join(f"config.{k} was {before.get(k, '(absent)')!r}, now "
                        f"{now.get(k, '(absent)')!r}" for k in diffs[:3])
      more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
      back = " ".join(f"--config.{k}={before[k]}" for k in diffs[:3]
                      if k in before)
      back = f"; to resume that run as it was, pass its values back " \
             f"({back})" if back else ""
      raise ConfigError(
          f"{workdir} holds a run at step {step} trained with another config: "
          f"{shown}{more}. Nothing was changed. To train this config from "
          f"scratch, pass a new --workdir{back}; to resume it with the change "
          f"on purpose, add --config_change=accept (its old config is kept "
          f"as config.step{step}.json).")
    if not (diffs and write):
      return
    os.replace(path, os.path.join(workdir, f"config.step{step}.json"))
  if write:
    with open(path + ".tmp", "w") as f:
      json.dump(now, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


class MetricWriter:
  """WORKDIR/metrics.jsonl (one JSON object per logged step) + TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if enabled:
      try:
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # pragma: no cover - tensorboardX is a dependency
        self.tb = None

  def write(self, step: int, metrics: dict[str, float]):
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.tb is not None:
      for k, v in metrics.items():
        self.tb.add_scalar(k, float(v), int(step))
      self.tb.flush()

  def drop_after(self, step: int):
    """Drops the rows past `step`: training a resumed run repeats from its
    checkpoint (after a kill, or a fallback from a damaged checkpoint), so
    the file keeps one history instead of two copies of those steps."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          keep.append(line)
      except (ValueError, KeyError):  # a row cut short by a kill
        pass
    if len(keep) < len(lines):
      tmp = f"{self.path}.tmp{os.getpid()}"
      with open(tmp, "w") as f:
        f.writelines(keep)
      os.replace(tmp, self.path)

  def close(self):
    if self.tb is not None:
      self.tb.close()


def create_train_state(task, tx, mesh, rng):
  """Params and optimizer state created already sharded (jit out_shardings)."""
  batch = task.init_batch()
  boxed = jax.eval_shape(lambda r: task.init_variables(r, batch)["params"],
                         rng)
  p_shard = sharding.param_shardings(boxed, mesh)

  def init(r):
    params = nn.meta.unbox(task.init_variables(r, batch)["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=r)

  abstract = jax.eval_shape(init, rng)
  repl = sharding.replicated(mesh)
  # Frozen params (optimizer.freeze) leave an empty MaskedNode in the
  # optimizer state where their moments would be: it keeps that place.
  opt_shard = optax.tree_map_params(
      tx, lambda s, sh: s if isinstance(s, optax.MaskedNode) else sh,
      abstract.opt_state, p_shard, transform_non_params=lambda _: repl,
      is_leaf=lambda x: isinstance(x, (jax.ShapeDtypeStruct,
                                       optax.MaskedNode)))
  shardings = TrainState(step=repl, params=p_shard, opt_state=opt_shard,
                         rng=repl)
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings, abstract


def make_train_step(task, tx):
  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss(params):
      return task.loss_fn(params, batch, rng, True)

    (l, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=l, grad_norm=optax.global_norm(grads))
    return state.replace(step=state.step + 1, params=params,
                         opt_state=opt_state), metrics
  return train_step


def load_transfer_params(config, params, task=None):
  """config.init_from: {workdir, rules: [[from_regex, to_template], ...],
  weights, inflate}.

  Loads params from another run's latest checkpoint (workdir), or from
  released weights that `task.import_weights()` converts (weights);
  each target path is renamed by the first matching rule. From a checkpoint,
  params missing there keep their fresh init and are reported by name, and a
  2-D patch kernel `[ph, pw, c, d]` whose target is a tubelet kernel `[t,
  ph, pw, c, d]` is inflated (`inflate`: 'central', ViViT's central-frame
  initialisation, or 'average'; '' leaves it missing), so an image tower's
  weights start a video tower. From weights, a missing or misshapen param or
  a source param left unused is a ValueError naming them (and both shapes),
  raised before any training."""
  weights = config.init_from.get("weights", "")
  if weights:
    src = task.import_weights()
  else:
    ck = ckpt_lib.Checkpointer(
        os.path.join(config.init_from.workdir, "checkpoints"),
        async_save=False)
    src = ck.restore_params()["params"]
    ck.close()
  src_flat = {optimizers.path_str(p): v for p, v in
              jax.tree_util.tree_flatten_with_path(src)[0]}
  rules = [(r, t) for r, t in (config.init_from.rules or [])]
  inflate = "" if weights else config.init_from.get("inflate", "central")
  missing, misshapen, used, inflated, loaded = [], [], set(), [], 0

  import re

  def one(path, leaf):
    nonlocal loaded
    name = optimizers.path_str(path)
    src_name = name
    for rx, tmpl in rules:
      if re.search(rx, name):
        src_name = re.sub(rx, tmpl, name)
        break
    v = src_flat.get(src_name)
    if (v is not None and inflate and np.ndim(v) == 4 and leaf.ndim == 5
        and tuple(np.shape(v)) == tuple(leaf.shape[1:])):
      v = video_lib.inflate_patch_kernel(v, leaf.shape[0], inflate)
      inflated.append(name)
    if v is None or tuple(np.shape(v)) != tuple(leaf.shape):
      missing.append(name)
      if v is not None:
        misshapen.append(f"{src_name}: {tuple(np.shape(v))} in the source, "
                         f"{tuple(leaf.shape)} in the model")
      return leaf
    used.add(src_name)
    loaded += 1
    return jax.device_put(jnp.asarray(v, leaf.dtype), leaf.sharding)

  new = jax.tree_util.tree_map_with_path(one, params)
  if inflated:
    print(f"mmtx: inflated {len(inflated)} 2-D patch kernel(s) into tubelet "
          f"kernels (init_from.inflate={inflate!r}): {inflated}", flush=True)
  unused = sorted(set(src_flat) - used)
  if weights and (missing or unused):
    raise ValueError(
        f"init_from.weights={weights} does not fit config.model (whose input "
        f"shapes come from config.data: image size, max_len): misshapen "
        f"{misshapen}, missing {missing}, unused source params {unused}.")
  return new, loaded, missing


def train_and_evaluate(config, workdir: str, task, *, mode: str = "train",
                       progress: bool = True,
                       accept_config_change: bool = False) -> dict[str, float]:
  """Trains (resuming from WORKDIR/checkpoints if present) and evaluates
  `task`, built from the same config (`mmtx.tasks.build_task(config)`).

  Returns the final evaluation metrics.

  Raises:
    ConfigError: a trainer field of `config` is out of range, or the run in
      WORKDIR was trained with other values (`check_run_config`; pass
      accept_config_change=True to resume it with this config anyway).
    checkpoint.CheckpointError: WORKDIR's checkpoints do not fit the model
      (CheckpointMismatchError) or none can be read; nothing is changed.
    FileNotFoundError: mode='eval' and WORKDIR has no checkpoint.
    NonFiniteLossError: the loss became NaN or inf.
    Preempted: SIGTERM; a checkpoint was saved first.
    TypeError: `task` is a Task class, not a built task.
  """
  check_config(config)
  if isinstance(task, type):
    raise TypeError(f"train_and_evaluate takes a built task, got the class "
                    f"{task.__name__}; pass mmtx.tasks.build_task(config).")
  if mode not in ("train", "eval"):
    raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}.")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"workdir {workdir} is a file; pass a directory "
                             "(new or of an earlier run) as --workdir.")
  sharding.maybe_initialize_distributed()
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(**config.mesh)
  tx, sched = optimizers.make_optimizer(config.optimizer, config.total_steps)
  rng = jax.random.key(config.seed)
  state, shardings, abstract = create_train_state(task, tx, mesh, rng)
  ck = ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
      best_metric=config.best_metric or None, best_mode=config.best_mode)
  train_iter = task.train_iterator(jax.process_index(), jax.process_count())

  def on_corrupt(step, err):
    print(f"mmtx: checkpoint at step {step} is corrupt or partial "
          f"({type(err).__name__}: {str(err)[:200]}); trying the previous one.",
          flush=True)

  try:
    restored = ck.restore_latest(abstract, on_corrupt=on_corrupt)
  except Exception:
    ck.close()
    raise
  if restored is None and mode == "train" and is_main:
    check_run_config(config, workdir, None)
  if restored is not None:
    step0, st, data_state = restored
    try:
      check_run_config(config, workdir, step0,
                       accept_changes=accept_config_change,
                       write=is_main and mode == "train")
    except Exception:
      ck.close()
      raise
    state = jax.device_put(st, shardings)
    train_iter.set_state(ckpt_lib.from_json_state(data_state))
    print(f"mmtx: resumed from {ck.directory} at step {step0}.", flush=True)
    if ck.damaged and mode == "train":
      print(f"mmtx: the damaged checkpoint(s) at step(s) "
            f"{sorted(ck.damaged)} are replaced when training reaches them.",
            flush=True)
    if step0 > config.total_steps and mode == "train":
      ck.close()
      raise ConfigError(
          f"config.total_steps={config.total_steps} is below the step "
          f"{step0} the checkpoint in {ck.directory} is at: nothing to "
          f"train. Raise --config.total_steps to train on, or use "
          f"--mode=eval to evaluate it.")
  elif mode == "eval" and not (config.init_from.workdir or
                                config.init_from.get("weights")):
    ck.close()
    raise FileNotFoundError(
        f"--mode=eval: no checkpoint in {ck.directory} to evaluate. Train "
        f"first (--mode=train), or pass the --workdir of a trained run.")
  elif config.init_from.workdir or config.init_from.get("weights"):
    try:
      params, loaded, missing = load_transfer_params(config, state.params,
                                                     task)
    except Exception:
      ck.close()
      raise
    state = state.replace(params=params)
    if mode == "eval" and missing:
      ck.close()
      raise FileNotFoundError(
          f"--mode=eval: no checkpoint in {ck.directory}, and init_from "
          f"leaves {len(missing)} params at their random init ({missing[:3]}"
          f"{' ...' if len(missing) > 3 else ''}): train first "
          f"(--mode=train).")
    print(f"mmtx: initialised {loaded} params from "
          f"{config.init_from.workdir or config.init_from.weights}; "
          f"{len(missing)} not in the checkpoint (fresh init): {missing}",
          flush=True)

  writer = MetricWriter(workdir, enabled=is_main)
  if mode == "train":
    writer.drop_after(int(state.step))
  step_fn = jax.jit(make_train_step(task, tx),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(shardings, sharding.replicated(mesh)),
                    donate_argnums=(0,))

  def evaluate(step):
    with sharding.use_rules(mesh):   # the rules the train step runs under
      metrics, table = task.evaluate(state.params, mesh)
    if is_main:
      writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
      if table:
        print(table, flush=True)
    return metrics

  if mode == "eval":
    metrics = evaluate(int(state.step))
    ck.close()
    writer.close()
    return metrics

  stop = {"sigterm": False, "saved_at": None}
  prev_handler = signal.getsignal(signal.SIGTERM)

  def on_sigterm(signum, frame):
    del signum, frame
    stop["sigterm"] = True
  try:
    signal.signal(signal.SIGTERM, on_sigterm)
  except ValueError:  # not in the main thread
    prev_handler = None

  start = int(state.step)
  total = int(config.total_steps)
  if start == total:
    print(f"mmtx: the run in {workdir} is already at total_steps={total}; "
          f"nothing to train.", flush=True)
  bar = None
  if progress and is_main:
    from tqdm import tqdm
    bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True,
               mininterval=1.0)
  pending: list[tuple[int, Any]] = []
  t_last, n_last = time.time(), 0
  last_eval: dict[str, float] = {}

  def flush_metrics(step):
    """Fetches pending step metrics; stops at the first non-finite loss."""
    nonlocal t_last, n_last
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      if not (math.isfinite(float(m["loss"])) and
              math.isfinite(float(m["grad_norm"]))):
        raise NonFiniteLossError(
            f"non-finite loss ({float(m['loss'])}) or gradient norm at step "
            f"{s}; stopping. The last good checkpoint in {ck.directory} is "
            f"kept (steps {ck.all_steps()}); lower the learning rate or check "
            f"the data.")
    avg = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
    dt = time.time() - t_last
    avg["examples_per_sec"] = n_last * config.batch_size / max(dt, 1e-9)
    avg["learning_rate"] = float(sched(step))
    pending.clear()
    t_last, n_last = time.time(), 0
    if is_main:
      writer.write(step, {f"train/{k}": v for k, v in avg.items()})
      if bar is not None:
        bar.set_postfix(loss=f"{avg['loss']:.4f}",
                        ex_s=f"{avg['examples_per_sec']:.0f}")

  def save(step, metrics=None):
    flush_metrics(step)  # never checkpoint non-finite state
    if step in ck.damaged:
      print(f"mmtx: replacing the damaged checkpoint at step {step}.",
            flush=True)
    ck.save(step, state, ckpt_lib.to_json_state(train_iter.get_state()),
            metrics=metrics)

  try:
    for step in range(start + 1, total + 1):
      batch = sharding.put_batch(next(train_iter), mesh)
      with sharding.use_rules(mesh):  # traced here on first call
        state, metrics = step_fn(state, batch)
      pending.append((step, metrics))
      if len(pending) > MAX_STEPS_IN_FLIGHT:
        # Bounded async dispatch: wait for the step MAX_STEPS_IN_FLIGHT back.
        jax.block_until_ready(pending[-MAX_STEPS_IN_FLIGHT - 1][1])
      n_last += 1
      if bar is not None:
        bar.update(1)
      if step % config.log_every == 0 or step == total:
        flush_metrics(step)
      eval_now = config.eval_every and (step % config.eval_every == 0 or
                                        step == total)
      if eval_now:
        last_eval = evaluate(step)
      if (step % config.checkpoint_every == 0 or step == total or
          eval_now or stop["sigterm"]):
        best = None
        if eval_now and config.best_metric in last_eval:
          best = {config.best_metric: float(last_eval[config.best_metric])}
        save(step, best)
      if stop["sigterm"]:
        ck.wait()
        print(f"mmtx: SIGTERM: saved a checkpoint at step {step}; exiting.",
              flush=True)
        stop["saved_at"] = step
        break
  finally:
    if bar is not None:
      bar.close()
    ck.close()
    writer.close()
    if prev_handler is not None:
      signal.signal(signal.SIGTERM, prev_handler)
  if stop["saved_at"] is not None:
    raise Preempted(f"SIGTERM at step {stop['saved_at']} of {total}: stopped "
                    f"after saving a checkpoint in {ck.directory}; the same "
                    f"command resumes it.")
  return last_eval
