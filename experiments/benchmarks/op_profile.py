"""Where the mmtx CLIP training step spends its time, op by op (issue 8:
"know where every second goes").

  python experiments/benchmarks/op_profile.py              # cpu_step's shapes
  taskset -c 0 python experiments/benchmarks/op_profile.py # one core
  python experiments/benchmarks/op_profile.py --quick      # smoke test

Builds the same step as `cpu_step.py`'s mmtx worker (same flags for the
shapes), traces `--steps` steps with `jax.profiler.trace`, reads the trace
back (`jax.profiler.ProfileData`), sums the duration of every XLA op (on
CPU: the thunks of the XLA:CPU runtime; on GPU: the kernels, named after
their HLO fusion) and joins each with the compiled HLO's `op_name`
metadata. Prints the step time, then the time per (phase, kind, part):
phase fwd / bwd (transpose of the forward) / update (optimizer and the
rest), kind gemm (dot / convolution / library GEMM fusions) or other,
part mlp / attention / norm / embedding / other by the Flax module path;
then the `--top` most expensive ops with their HLO shapes. Per-op times
can sum to more than the step when the runtime runs ops side by side.

With one glibc malloc arena (GLIBC_TUNABLES=glibc.malloc.arena_max=1, not
run.sh's setting) the profiler's allocations contend with XLA's and the
traced op times inflate (one core: 790 ms of ops for a 291 ms step); the
script says so when that is set.
"""
from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

# Library GEMM fusions and dots / convolutions (CPU), GEMM kernels (GPU).
GEMM = re.compile(r"^(ynn_fusion|xnn_fusion|dot|convolution|conv_general|"
                  r"cublas)|gemm|matmul", re.I)


def hlo_ops(hlo_text: str) -> dict:
  """HLO instruction name -> (op_name metadata, the instruction's text)."""
  ops = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if m and m.group(1) not in ops:
      meta = re.search(r'op_name="([^"]+)"', line)
      ops[m.group(1)] = (meta.group(1) if meta else "",
                         re.sub(r",? metadata=.*", "", line.strip()))
  return ops


def classify(name: str, op_name: str) -> tuple[str, str, str]:
  phase = ("bwd" if "transpose(jvp(" in op_name else
           "fwd" if "jvp(" in op_name else "update")
  kind = "gemm" if GEMM.search(name) or "conv_general" in op_name else "other"
  part = ("mlp" if "/mlp/" in op_name else
          "attention" if "/attention/" in op_name else
          "norm" if re.search(r"/(ln|norm)[\w]*/", op_name) else
          "embedding" if "embedding" in op_name else "other")
  return phase, kind, part


def op_times(trace_dir: str, steps: int) -> collections.Counter:
  """Milliseconds per step of each XLA op in the trace."""
  import jax
  path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                   recursive=True)[0]
  data = jax.profiler.ProfileData.from_file(path)
  total = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if line.name == "python" or "XLA Modules" in line.name:
        continue
      for ev in line.events:
        if ev.name.startswith(("Thunk", "end:", "Threadpool", "Slinky")):
          continue
        total[ev.name] += ev.duration_ns / 1e6 / steps
  return total


def main(argv=None):
  import argparse
  import cpu_step
  import jax
  p = argparse.ArgumentParser(add_help=False)
  p.add_argument("--top", type=int, default=25, help="ops listed")
  own, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
  a = cpu_step.parse_args(rest)
  step, _ = cpu_step.mmtx_worker(a)
  for _ in range(max(a.warmup, 1)):
    step()
  n = max(a.steps, 1)
  start = time.perf_counter()
  for _ in range(n):
    step()
  step_ms = (time.perf_counter() - start) / n * 1e3
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(n):
        step()
    times = op_times(d, n)
  ops = hlo_ops(step.hlo_text())
  known = {k: v for k, v in times.items() if k in ops}
  groups = collections.Counter()
  for k, v in known.items():
    groups[classify(k, ops[k][0])] += v
  print(f"op_profile: {jax.devices()[0].device_kind}, "
        f"{len(os.sched_getaffinity(0))} core(s) allowed; step "
        f"{step_ms:.1f} ms (untraced, mean of {n}); ops in the trace "
        f"{sum(known.values()):.1f} ms per step\n")
  if "glibc.malloc.arena_max=1" in os.environ.get("GLIBC_TUNABLES", ""):
    print("Note: GLIBC_TUNABLES has glibc.malloc.arena_max=1, under which "
          "tracing inflates op times; run without it (run.sh's default) for "
          "a faithful breakdown.\n")
  print("| phase | kind | part | ms / step | share |")
  print("|---|---|---|---|---|")
  total = sum(groups.values()) or 1.0
  for (phase, kind, part), v in groups.most_common():
    print(f"| {phase} | {kind} | {part} | {v:.1f} | {100 * v / total:.1f}% |")
  print("\n| op | ms / step | module | HLO |\n|---|---|---|---|")
  for k, v in sorted(known.items(), key=lambda kv: -kv[1])[:own.top]:
    op_name, text = ops[k]
    module = re.sub(r"^jit\([^)]*\)/", "", op_name)[-60:]
    print(f"| {k} | {v:.2f} | {module} | `{text[:110]}` |")


if __name__ == "__main__":
  main()
