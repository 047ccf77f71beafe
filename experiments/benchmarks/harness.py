"""What the step benchmarks share, so that each script is what it measures:
the mmtx CLIP training step they build (task, optimizer, batch, jitted step),
worker processes that answer in tagged JSON lines, the timing loop, presets
of small sizes, markdown tables and the machine line.

Used by clip_step.py (GPU: mmtx against open_clip), cpu_step.py (CPU: mmtx
against Flax/PyTorch peers), scaling.py and op_profile.py.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


# ----------------------------------------------------------------------------
# Processes and their output
# ----------------------------------------------------------------------------
def log(msg: str):
  print(msg, file=sys.stderr, flush=True)


def emit(tag: str, obj: dict):
  """One `TAG {json}` line on stdout, which the parent reads."""
  print(f"{tag} " + json.dumps(obj), flush=True)


def tagged(line: str, tag: str):
  """The JSON object of a `TAG {json}` line, else None."""
  if line.startswith(tag + " "):
    return json.loads(line[len(tag) + 1:])
  return None


def read_tagged(proc, tag: str) -> dict:
  """The next `TAG {json}` line of `proc`'s stdout (others are skipped)."""
  for line in proc.stdout:
    got = tagged(line, tag)
    if got is not None:
      return got
  raise RuntimeError(f"worker exited (status {proc.wait()}) before '{tag}'; "
                     f"see its stderr above.")


def start_worker(script: str, argv: list[str], *, xla_flags: str = "",
                 jax_free: bool = False, stdin: bool = False):
  """`python script argv...` with the repository on PYTHONPATH, `xla_flags`
  added to XLA_FLAGS (`jax_free`: no XLA_FLAGS at all, for a torch-only
  worker), stdout piped for `read_tagged`."""
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if xla_flags:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
  if jax_free:
    env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, script, *argv],
                          stdin=subprocess.PIPE if stdin else None,
                          stdout=subprocess.PIPE, text=True, env=env)


def short_error(e: BaseException) -> str:
  text = f"{type(e).__name__}: {e}".replace("\n", " ")
  return text[:300]


def apply_preset(args, argv: list[str], preset: dict):
  """Sets each `preset` field that `argv` did not give (--tiny, --quick)."""
  given = {a.split("=")[0].lstrip("-") for a in argv}
  for k, v in preset.items():
    if k not in given:
      setattr(args, k, v)


# ----------------------------------------------------------------------------
# Timing and reporting
# ----------------------------------------------------------------------------
def time_steps(step, sync, *, warmup: int, repeats: int, steps: int):
  """(median over `repeats` of the mean seconds per call of `steps` calls
  of `step()`, each run ended by `sync()`; the first call's result). The
  first `warmup` calls (at least one) are not timed."""
  first = step()
  for _ in range(warmup - 1):
    step()
  sync()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    sync()
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times), first


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(cells) + " |" for cells in rows]
  return "\n".join(lines)


def machine() -> str:
  sys.path.insert(0, os.path.dirname(HERE))
  import runlib   # experiments/runlib.py: the same name every table uses
  return runlib.machine(accelerator=False)


def versions(names=("jax", "flax", "optax", "torch", "transformers",
                    "open_clip_torch")) -> str:
  from importlib import metadata
  return ", ".join(f"{n} {metadata.version(n)}" for n in names)


# ----------------------------------------------------------------------------
# The mmtx CLIP step
# ----------------------------------------------------------------------------
def make_batch(args, batch: int, seed: int = 0):
  """Random NHWC images and token ids: a random length in [L/4, L], the EOT
  (highest id, so argmax pooling finds it) last, 0 = padding after it."""
  import numpy as np
  rs = np.random.RandomState(seed)
  images = rs.randn(batch, args.image_size, args.image_size, 3).astype(
      np.float32)
  texts = np.zeros((batch, args.text_len), np.int32)
  lengths = rs.randint(max(2, args.text_len // 4), args.text_len + 1, batch)
  for i, n in enumerate(lengths):
    texts[i, :n - 1] = rs.randint(1, args.vocab - 1, n - 1)
    texts[i, n - 1] = args.vocab - 1
  return images, texts


def optimizer_config():
  """open_clip's training defaults: lr 5e-4, betas (0.9, 0.98), eps 1e-6,
  weight decay 0.2 (not on gains/biases), cosine schedule, no clipping."""
  import ml_collections
  return ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=5e-4, b1=0.9, b2=0.98, eps=1e-6,
      weight_decay=0.2, warmup_steps=10, schedule="cosine",
      end_lr_factor=0.0, grad_clip_norm=0.0, accumulate_steps=1, freeze=(),
      lr_multipliers=(), layer_decay=0.0))


def bench_task(args, v: dict, config):
  """The real contrastive task's loss_fn on synthetic shapes (no dataset)."""
  import jax
  import jax.numpy as jnp
  from mmtx.models import DualEncoder
  from mmtx.tasks.contrastive import ContrastiveTask

  class BenchTask(ContrastiveTask):
    """ContrastiveTask without data: fixed model config and input shapes."""

    def build_model(self):
      return DualEncoder(self.config.model.to_dict())

    def init_batch(self):
      # Params do not depend on the batch: init on 2 rows.
      images, texts = make_batch(args, 2)
      return {"image": images, "text": texts}

    def init_variables(self, rng, batch):
      variables = super().init_variables(rng, batch)
      if v["param_dtype"] != "bf16":
        return variables
      # Pure-bf16 params (and so AdamW moments); scalars stay float32.
      return jax.tree_util.tree_map(
          lambda x: x.astype(jnp.bfloat16) if x.ndim else x, variables)

    def loss_fn(self, params, batch, rng, train):
      if v["loss"] == "softmax":
        return super().loss_fn(params, batch, rng, train)
      # 'dot': a surrogate with the same towers and no B x B logits; the
      # step time difference to 'softmax' is the contrastive loss's cost.
      img_emb, txt_emb, _ = self.model.apply(
          {"params": params}, batch["image"], batch["text"],
          deterministic=not train)
      return -jnp.mean(jnp.sum(img_emb * txt_emb, axis=-1)), {}
  return BenchTask(config)


def jit_train_step(task, tx, shardings, mesh, donate: bool = True):
  """`train.make_train_step` jitted as `mmtx.train` does: in/out shardings,
  the state donated."""
  import jax
  from mmtx import sharding, train
  return jax.jit(train.make_train_step(task, tx),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def abstract_state(task, tx, mesh, rng):
  """(abstract TrainState, its shardings): `train.create_train_state` under
  `jax.eval_shape`, so nothing is allocated."""
  import jax
  from mmtx import train
  held = {}

  def state_only(r):
    state, shardings, _ = train.create_train_state(task, tx, mesh, r)
    held["shardings"] = shardings
    return state
  abstract = jax.eval_shape(state_only, rng)
  return abstract, held["shardings"]


def abstract_batch(args, v, mesh):
  import jax
  import jax.numpy as jnp
  from mmtx import sharding
  s = sharding.batch_sharding(mesh)
  b = v["batch"]
  return {"image": jax.ShapeDtypeStruct(
              (b, args.image_size, args.image_size, 3), jnp.float32,
              sharding=s),
          "text": jax.ShapeDtypeStruct((b, args.text_len), jnp.int32,
                                       sharding=s)}
