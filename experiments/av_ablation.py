"""Audio-visual fusion ablation on AV-Scenes (configs/avqa.py): fusion
strategies over video, audio and question tokens against the video-only,
audio-only and question-only floors; accuracy per question type (sight /
sound / both), parameters, forward FLOPs per (clip, question) and
questions/s - MBT's accuracy-against-cost table (Nagrani et al. 2021).

  ./run.sh python experiments/av_ablation.py --steps=3000 --seeds=0,1,2 \
      --parallel=2 --out=runs/av_ablation
  ./run.sh python experiments/av_ablation.py --quick      # smoke run

Rows are reported on the test split; nothing here is chosen on it (every row
runs the config's recipe). --parallel runs trainings side by side, each in
its own process; accuracy does not depend on it. Questions/s is measured
apart from them: once every row has trained, a SPEED_STEPS-step run of each
model alone on the machine (median of its logged windows after the first,
which holds the compile). Rows and speeds are kept in OUT/results.json:
rerunning resumes; `--resume_from=experiments/results/av_ablation.json`
counts the committed ones as done (runs/ is not kept between machines),
`--table_only` redraws the table from them. results.md, results.json,
accuracy.png (per question type) and cost.png (accuracy against GFLOPs) go
to OUT, one workdir per run under OUT/runs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runlib  # noqa: E402

TYPES = ("accuracy", "accuracy/sight", "accuracy/sound", "accuracy/both")
FUSIONS = ("bottleneck", "cross_attention", "concat", "late", "m_modal")
# Floors: the cross-attention model with inputs replaced by zeros.
FLOORS = {"video_only": "audio", "audio_only": "video",
          "question_only": "video+audio"}
SPEED_STEPS = 100


def config_for(name, seed, args):
  from mmtx.configs import avqa
  floor = FLOORS.get(name)
  cfg = avqa.get_config(f"steps={args.steps},fusion="
                        f"{'cross_attention' if floor else name}"
                        + (f",zero={floor}" if floor else ""))
  with cfg.unlocked():
    cfg.seed = seed
    cfg.checkpoint_every = args.steps
    cfg.keep_checkpoints = 1
    cfg.log_every = max(args.steps // 10, 1)
    cfg.data.eval_splits = ("test",)
    if args.quick:
      cfg.data.name = "av_scenes/tiny"
      cfg.batch_size = 4
      cfg.data.eval_batch_size = 16
      cfg.model.video.width = cfg.model.audio.width = 16
  return cfg


def forward_flops(cfg) -> float:
  """XLA's FLOP count of the model's forward pass on one clip with one
  question."""
  import jax
  import numpy as np
  from mmtx import tasks
  task = tasks.build_task(cfg)
  model = task.model
  with cfg.unlocked():
    cfg.batch_size = 1
  batch = task.init_batch()
  params = jax.eval_shape(lambda: task.init_variables(
      jax.random.key(0), batch))["params"]
  inputs = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
            for x in task.inputs(batch)]
  compiled = jax.jit(lambda p, *x: model.apply({"params": p}, *x)).lower(
      params, *inputs).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def run_one(name, seed, args):
  cfg = config_for(name, seed, args)
  workdir = os.path.join(args.out, "runs", f"{name}_seed{seed}")
  r = runlib.train_run(cfg, workdir)
  return {"name": name, "seed": seed, "steps": args.steps,
          "wall_s": r["wall_s"], "parallel": args.parallel,
          "params": r["params"],
          "gflops": forward_flops(config_for(name, seed, args)) / 1e9,
          "metrics": {k: r["metrics"].get(k) for k in TYPES},
          "date": time.strftime("%Y-%m-%d"), "machine": runlib.machine()}


def train_side_by_side(names, seeds, args, path) -> None:
  """Trains every (name, seed) with no row in `path`, --parallel processes
  at a time (this script with --only=NAME:SEED, which adds its row to
  `path`); logs go to OUT/logs."""
  done = runlib.load_rows(path)
  todo = [(n, s) for s in seeds for n in names if (n, s, args.steps) not in done]
  os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
  running = []
  while todo or running:
    while todo and len(running) < args.parallel:
      n, s = todo.pop(0)
      log = os.path.join(args.out, "logs", f"{n}_seed{s}.txt")
      cmd = [sys.executable, os.path.abspath(__file__), f"--only={n}:{s}",
             f"--steps={args.steps}", f"--out={args.out}",
             f"--parallel={args.parallel}"] + (["--quick"] if args.quick else [])
      with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
      running.append((proc, n, s, log))
    time.sleep(1.0)
    for item in list(running):
      proc, n, s, log = item
      if proc.poll() is None:
        continue
      running.remove(item)
      if proc.returncode != 0:
        for p, *_ in running:
          p.terminate()
        raise SystemExit(f"{n} seed {s} exited with {proc.returncode}; see "
                         f"{log}. Rerunning the command resumes.")
      r = runlib.load_rows(path)[(n, s, args.steps)]
      print(f"{n} seed {s}: " + " ".join(
          f"{k.split('/')[-1]}={100 * v:.1f}" for k, v in r["metrics"].items()
          if v is not None) + f" ({r['wall_s']:.0f} s)", flush=True)


def speed_steps(args) -> int:
  """Steps of the run that times each model (--quick: a few)."""
  return 6 if args.quick else SPEED_STEPS


def measure_speeds(names, args, path) -> dict:
  """{name: {'questions_per_sec', ...}}: the speed of each model's training
  step from a SPEED_STEPS-step run of it (seed 0) alone, kept under
  'speeds' in `path`; measured only for names not there yet (none with
  --table_only)."""
  speeds = runlib.load_results(path).get("speeds", {})
  if args.table_only:
    return speeds
  steps = speed_steps(args)
  for n in names:
    if n in speeds:
      continue
    cfg = config_for(n, 0, args)
    with cfg.unlocked():
      cfg.total_steps = cfg.checkpoint_every = cfg.eval_every = steps
      cfg.log_every = max(steps // 10, 1)
    r = runlib.train_run(cfg, os.path.join(args.out, "speed", n))
    speeds[n] = {"questions_per_sec": r["questions_per_sec"],
                 "steps": steps, "date": time.strftime("%Y-%m-%d"),
                 "machine": runlib.machine()}
    runlib.add_row(path, speeds={n: speeds[n]})
    print(f"{n}: {r['questions_per_sec']:.0f} questions/s alone", flush=True)
  return speeds


def _label(name):
  return f"floor: {name.replace('_', ' ')}" if name in FLOORS else name


def ordered(results):
  """Row names: fusions before floors, each by mean accuracy, ties by
  name (so a table redrawn in another process is the same)."""
  import numpy as np
  return sorted({r["name"] for r in results},
                key=lambda n: (n in FLOORS, -np.mean([
                    r["metrics"]["accuracy"] for r in results
                    if r["name"] == n]), n))


def table(results, speeds, args):
  import numpy as np
  head = ["model", "params", "GFLOPs / question", "questions/s", "seeds",
          "all", "sight", "sound", "both"]
  rows = []
  for n in ordered(results):
    rs = [r for r in results if r["name"] == n]
    cells = [_label(n), f"{rs[0]['params'] / 1e3:.0f}k",
             f"{rs[0]['gflops']:.4f}",
             f"{speeds[n]['questions_per_sec']:.0f}" if n in speeds else "-",
             ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))]
    cells += [runlib.pct_cell([r["metrics"][k] for r in rs]) for k in TYPES]
    rows.append(cells)
  dates = sorted({r["date"] for r in results})
  machines = sorted({r["machine"] for r in results})
  parallel = sorted({r.get("parallel", 1) for r in results})
  meta = (f"AV-Scenes test split; {args.steps} steps; mean ± std over a row's "
          f"seeds; machine: {'; '.join(machines)}; measured {dates[0]}"
          f"{f' to {dates[-1]}' if len(dates) > 1 else ''}; trained "
          f"{'/'.join(map(str, parallel))} at a time; questions/s: training "
          f"steps of a {speed_steps(args)}-step run of "
          f"each model alone, median of the logged windows after the first.")
  return runlib.markdown_table(head, rows) + "\n\n" + meta + "\n"


def cost_chart(results, path):
  """cost.png: mean test accuracy against forward GFLOPs, one point per
  row."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for n in ordered(results):
    rs = [r for r in results if r["name"] == n]
    acc = 100 * np.mean([r["metrics"]["accuracy"] for r in rs])
    ax.scatter(rs[0]["gflops"], acc, marker="x" if n in FLOORS else "o")
    ax.annotate(_label(n), (rs[0]["gflops"], acc), fontsize=7,
                xytext=(3, 3), textcoords="offset points")
  ax.set_xlabel("forward GFLOPs per (clip, question)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("AV-Scenes: accuracy against cost", fontsize=9)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--fusions", default=",".join(FUSIONS))
  p.add_argument("--floors", action=argparse.BooleanOptionalAction,
                 default=True, help="also train the three floors")
  p.add_argument("--out", default="runs/av_ablation")
  p.add_argument("--quick", action="store_true",
                 help="tiny data, 2 steps, seed 0: checks every row runs")
  p.add_argument("--parallel", type=int, default=1,
                 help="trainings side by side, each its own process")
  runlib.add_committed_args(p, "av_ablation.json")
  p.add_argument("--only", default="",
                 help="NAME:SEED: train that row alone and add it to "
                 "OUT/results.json (what --parallel runs)")
  args = p.parse_args(argv)
  if args.parallel < 1:
    p.error("--parallel must be >= 1")
  if args.quick:
    args.steps, args.seeds = 2, "0"
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "results.json")
  if args.only:
    name, seed = args.only.rsplit(":", 1)
    runlib.add_row(path, run_one(name, int(seed), args))
    return None
  names = runlib.fusion_names(args.fusions, "av_ablation")
  if args.floors:
    names += list(FLOORS)
  runlib.merge_committed(args.resume_from, path, "av_ablation")
  seeds = [] if args.table_only else [int(s) for s in args.seeds.split(",")]
  if args.parallel > 1:
    train_side_by_side(names, seeds, args, path)
  mine = runlib.run_missing(runlib.load_rows(path), path, names, seeds,
                            args.steps, lambda n, seed: run_one(n, seed, args))
  if not mine:
    raise SystemExit(f"av_ablation: no rows at {args.steps} steps in {path}.")
  speeds = measure_speeds(ordered(mine), args, path)
  md = table(mine, speeds, args)
  open(os.path.join(args.out, "results.md"), "w").write(md)
  series = runlib.seed_series(mine, ordered(mine), TYPES, label=_label)
  runlib.bar_chart(os.path.join(args.out, "accuracy.png"),
                   ["all", "sight", "sound", "both"], series,
                   title="AV-Scenes fusion ablation, test")
  cost_chart(mine, os.path.join(args.out, "cost.png"))
  print(md)
  return mine


if __name__ == "__main__":
  main()
