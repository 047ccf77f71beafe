"""Per-device memory of the CLIP training step under data parallelism and
FSDP on 1, 2, 4, 8 devices, from the compiled program (issue 8, item 5).

  python experiments/benchmarks/scaling.py                 # B/16 and L/14
  python experiments/benchmarks/scaling.py --models tiny   # smoke test

Nothing big is allocated: the train state is `jax.eval_shape` of
`mmtx.train.create_train_state` (its shardings come from
`mmtx.sharding.param_shardings`), the batch is `ShapeDtypeStruct`s, and the
step (`train.make_train_step`, jitted as train.py does: in/out shardings,
`donate_argnums=(0,)`) is lowered and compiled for a mesh of N emulated CPU
devices (`--xla_force_host_platform_device_count=8`, set before JAX starts):
  dp    make_mesh(data=N): params and AdamW state replicated, batch split.
  fsdp  make_mesh(data=1, fsdp=N): params and state sharded (ZeRO-3 style),
        batch split.
  fsdp-nc  fsdp traced outside `sharding.use_rules`, i.e. without the
        logical-axis constraints mmtx's Transformer blocks put on their
        activations (`sharding.constrain`): with the weights
        sharded on their 'embed' dim, XLA's partitioner then all-gathers the
        activations of the whole global batch instead of the weights, and
        per-device temp grows with N. The row shows what the constraint buys
        (`--modes dp,fsdp` leaves it out).
Weak scaling: `--per_device_batch` rows per device (global batch = N x that).
Columns, GiB per device:
  state   params + optimizer state (exact: the shard shapes of the state)
  args    everything the step takes (state + batch shard); `compiled.
          memory_analysis().argument_size_in_bytes`
  temp    XLA's temporary buffers: activations kept for the backward pass,
          gradients, collectives' buffers, workspace (`temp_size_in_bytes`)
  peak    args + outputs - donated aliases + temp: what the step needs.
Models: 'B/16' = CLIP ViT-B/16 (image B/16 @224, text M: width 512, 77
tokens, embed 512, vocab 49408), 'L/14' = CLIP ViT-L/14 (image L/14 @224,
text B: width 768, embed 768). Layers use `nn.scan` by default (`--no_scan`
to unroll): same memory plan, much shorter compiles on this CPU. bf16 compute
with float32 params by default. The temp column is what XLA:CPU plans; XLA:GPU
fuses differently (and keeps bf16 activations where the CPU may keep float32
copies), so read temp as indicative and rerun this on the GPU host for one
device; the state column is backend-independent.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clip_step  # noqa: E402
import harness  # noqa: E402

from mmtx import optimizers, sharding  # noqa: E402
from mmtx.layers import REMAT_POLICIES  # noqa: E402

MODELS = {
    "B/16": dict(image="B/16", text="M", image_size=224, text_len=77,
                 vocab=49408, embed_dim=512),
    "L/14": dict(image="L/14", text="B", image_size=224, text_len=77,
                 vocab=49408, embed_dim=768),
    "tiny": dict(image="mu/8", text="mu", image_size=32, text_len=16,
                 vocab=256, embed_dim=32),
}
UNITS = {"GiB": 2 ** 30, "MiB": 2 ** 20}


def mesh_for(mode: str, n: int):
  if mode == "dp":
    return sharding.make_mesh(data=n, num_devices=n)
  return sharding.make_mesh(data=1, fsdp=n, num_devices=n)


def shard_bytes(abstract_tree, shardings) -> int:
  """Bytes per device of a tree whose leaves have these shardings."""
  total = 0
  for leaf, s in zip(jax.tree_util.tree_leaves(abstract_tree),
                     jax.tree_util.tree_leaves(shardings)):
    shape = s.shard_shape(leaf.shape) if leaf.shape else ()
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def measure(name: str, mode: str, n: int, a) -> dict:
  """Compiles the step for one (model, mode, device count); returns sizes."""
  shapes = argparse.Namespace(**MODELS[name])
  v = dict(precision=a.precision, attention="xla", pool="cls",
           scan=not a.no_scan, remat=a.remat, param_dtype="fp32",
           loss="softmax")
  config = ml_collections.ConfigDict(dict(
      batch_size=a.per_device_batch * n,
      model=clip_step.model_config(shapes, v)))
  task = harness.bench_task(shapes, v, config)
  tx, _ = optimizers.make_optimizer(harness.optimizer_config(), 1000)
  mesh = mesh_for(mode.split("-")[0], n)
  t0 = time.perf_counter()
  abstract, shardings = harness.abstract_state(task, tx, mesh,
                                               jax.random.key(0))
  b = config.batch_size
  batch = harness.abstract_batch(shapes, dict(v, batch=b), mesh)
  step = harness.jit_train_step(task, tx, shardings, mesh)
  with sharding.use_rules(None if mode == "fsdp-nc" else mesh):
    compiled = step.lower(abstract, batch).compile()
  mem = compiled.memory_analysis()
  state = shard_bytes((abstract.params, abstract.opt_state),
                      (shardings.params, shardings.opt_state))
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.params))
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes -
          mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  unit = UNITS[a.unit]
  return dict(model=name, mode=mode, devices=n, batch=b, params=n_params,
              state=state / unit, args=mem.argument_size_in_bytes / unit,
              temp=mem.temp_size_in_bytes / unit, peak=peak / unit,
              compile_s=time.perf_counter() - t0)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="B/16,L/14",
                 help=f"comma-separated, of {sorted(MODELS)}")
  p.add_argument("--devices", default="1,2,4,8")
  p.add_argument("--modes", default="dp,fsdp,fsdp-nc")
  p.add_argument("--per_device_batch", type=int, default=16)
  p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
  p.add_argument("--remat", default="none", choices=sorted(REMAT_POLICIES))
  p.add_argument("--no_scan", action="store_true")
  p.add_argument("--unit", choices=sorted(UNITS), default="GiB")
  a = p.parse_args(argv)
  names = [m for m in a.models.split(",") if m]
  for m in names:
    if m not in MODELS:
      p.error(f"--models: {m!r} is not one of {sorted(MODELS)}")
  counts = [int(c) for c in a.devices.split(",")]
  modes = [m for m in a.modes.split(",") if m]
  for m in modes:
    if m not in ("dp", "fsdp", "fsdp-nc"):
      p.error(f"--modes: {m!r} is not one of dp, fsdp, fsdp-nc")
  if max(counts) > jax.device_count():
    p.error(f"--devices {a.devices}: only {jax.device_count()} devices; "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}")
  t0 = time.perf_counter()
  print(f"scaling: {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"(emulated); {a.per_device_batch} rows per device, {a.precision} "
        f"compute, float32 params + AdamW, remat {a.remat}, "
        f"{'unrolled' if a.no_scan else 'scan'} layers; "
        f"{time.strftime('%Y-%m-%d')}\n", flush=True)
  u = a.unit
  print(f"| model | params (M) | mode | devices | global batch | state {u} | "
        f"args {u} | temp {u} | peak {u} | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
  for name in names:
    for n in counts:
      for mode in (("dp",) if n == 1 else modes):
        r = measure(name, mode, n, a)
        label = "dp = fsdp" if n == 1 else mode
        print(f"| {name} | {r['params'] / 1e6:.1f} | {label} | {n} | "
              f"{r['batch']} | {r['state']:.3f} | {r['args']:.3f} | "
              f"{r['temp']:.3f} | {r['peak']:.3f} | {r['compile_s']:.0f} |",
              flush=True)
  print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  main()
