"""Would flattening `[batch, tokens, features]` to `[rows, features]` around
the projections pay on this backend? (mmtx's layers keep the 3-D layout,
whose batch and token axes the sharding constraints name.)

  python experiments/benchmarks/dense_rows.py            # cpu_step's shapes
  python experiments/benchmarks/dense_rows.py --quick    # smoke test

Times forward + backward (`jax.grad` w.r.t. params and input) of the FFN of
one Transformer layer, Dense(d -> 4d), GELU, Dense(4d -> d), applied to the
3-D activations as they are and to the same activations flattened to 2-D
first (the same math). Alternating turns, median of `--repeats` turns of
`--steps` calls each; prints ms per call and the ratio 3-D / 2-D (above 1:
flattening is faster).
"""
from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax


class Ffn(nn.Module):
  width: int
  flatten: bool

  @nn.compact
  def __call__(self, x):
    lead = x.shape[:-1]
    if self.flatten:
      x = x.reshape(-1, x.shape[-1])
    h = nn.gelu(nn.Dense(4 * self.width)(x))
    return nn.Dense(self.width)(h).reshape(lead + (self.width,))


def step_fn(flatten: bool, width: int, x):
  model = Ffn(width, flatten)
  params = model.init(jax.random.key(0), x)

  @jax.jit
  def step(p, x):
    return jax.grad(lambda p, x: (model.apply(p, x) ** 2).mean(),
                    argnums=(0, 1))(p, x)
  jax.block_until_ready(step(params, x))
  return lambda: jax.block_until_ready(step(params, x))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--tokens", type=int, default=37)
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--quick", action="store_true",
                 help="batch 4, tokens 9, width 32, 2 x 2 calls")
  a = p.parse_args(argv)
  if a.quick:
    a.batch, a.tokens, a.width, a.steps, a.repeats = 4, 9, 32, 2, 2
  x = jax.random.normal(jax.random.key(1), (a.batch, a.tokens, a.width))
  fns = {"3-D": step_fn(False, a.width, x), "2-D": step_fn(True, a.width, x)}
  times = {k: [] for k in fns}
  for r in range(a.repeats):
    for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
      t0 = time.perf_counter()
      for _ in range(a.steps):
        fns[name]()
      times[name].append((time.perf_counter() - t0) / a.steps)
  med = {k: statistics.median(v) for k, v in times.items()}
  dev = jax.devices()[0]
  print(f"dense_rows on {dev.device_kind} ({jax.default_backend()}), jax "
        f"{jax.__version__}: FFN fwd+bwd, x [{a.batch}, {a.tokens}, "
        f"{a.width}], hidden {4 * a.width}, median of {a.repeats} x "
        f"{a.steps} calls\n")
  print("| layout | ms/call | min-max |")
  print("|---|---|---|")
  for k, v in times.items():
    print(f"| {k} | {med[k] * 1e3:.2f} | {min(v) * 1e3:.2f}-"
          f"{max(v) * 1e3:.2f} |")
  print(f"\nratio 3-D / 2-D: {med['3-D'] / med['2-D']:.2f}")


if __name__ == "__main__":
  main()
