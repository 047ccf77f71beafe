"""The default job (`python -m mmtx.main`) over seeds: how much of its
number is the recipe and how much the draw.

  ./run.sh python experiments/default_seeds.py --out=runs/default_seeds
  ./run.sh python experiments/default_seeds.py --parallel=1   # wall times alone
  ./run.sh python experiments/default_seeds.py --name=lr2e-3 -- \\
      --config=configs/default.py:lr=2e-3            # a recipe variant
  ./run.sh python experiments/default_seeds.py --quick        # smoke run

Each seed is the CLI itself, `python -m mmtx.main --config.seed=N
--workdir=OUT/NAME_seedN [ARGS after --]`, --parallel of them at a time
(two at a time on two cores share the cores, so their wall times are not
the job's time alone; the table says which). A seed already in
OUT/results.json under the same name is not run again, and a stopped run
resumes from its checkpoint. The table (test accuracy per question type
on the paper's 200 test images, the validation accuracy recipes are chosen
on, wall time) goes to OUT/results.md (+ results.json, accuracy.png).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runlib  # noqa: E402

TYPES = ("accuracy", "accuracy/nonrel", "accuracy/rel", "accuracy/ternary")
QUICK = ["--config.data.name=sort_of_clevr/tiny", "--config.total_steps=4",
         "--config.batch_size=4", "--config.eval_every=4",
         "--config.checkpoint_every=4", "--config.data.eval_batch_size=32",
         "--config.log_every=2"]


def final_eval(workdir: str) -> tuple[int, dict, dict]:
  """(step, test metrics, validation metrics) of the run's last evaluation:
  the default config evaluates 'validation' (eval/NAME) and 'test'
  (eval/test/NAME)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  last = [r for r in rows if "eval/accuracy" in r]
  if not last:
    raise SystemExit(f"{workdir}: no evaluation in metrics.jsonl; see "
                     f"{workdir}/log.txt")
  row = last[-1]
  test = {k: row.get(f"eval/test/{k}") for k in TYPES}
  val = {k: row.get(f"eval/{k}") for k in TYPES}
  if test["accuracy"] is None:
    raise SystemExit(f"{workdir}: its config does not evaluate 'test' "
                     "(data.eval_splits must be ('validation', 'test')).")
  return int(row["step"]), test, val


def start(name: str, seed: int, args, extra) -> tuple:
  workdir = os.path.join(args.out, f"{name}_seed{seed}")
  os.makedirs(workdir, exist_ok=True)
  cmd = [sys.executable, "-m", "mmtx.main", f"--workdir={workdir}",
         f"--config.seed={seed}", "--progress=false"] + extra
  log = open(os.path.join(workdir, "log.txt"), "a")
  log.write(f"$ {' '.join(cmd)}\n")
  log.flush()
  env = dict(os.environ,
             PYTHONPATH=os.pathsep.join(filter(None, [
                 _REPO, os.environ.get("PYTHONPATH")])))
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                          cwd=_REPO, env=env)
  return proc, log, workdir, seed, time.time()


def run_seeds(name, seeds, args, extra, done, path) -> None:
  """Runs the seeds with no row yet, --parallel at a time, saving a row to
  `path` as each run finishes."""
  todo = [s for s in seeds if (name, s) not in done]
  running = []
  while todo or running:
    while todo and len(running) < args.parallel:
      running.append(start(name, todo.pop(0), args, extra))
    time.sleep(1.0)
    for item in list(running):
      proc, log, workdir, seed, t0 = item
      if proc.poll() is None:
        continue
      running.remove(item)
      log.close()
      if proc.returncode != 0:
        for p, *_ in running:
          p.terminate()
        raise SystemExit(f"{name} seed {seed}: mmtx.main exited with "
                         f"{proc.returncode}; see {workdir}/log.txt")
      step, test, val = final_eval(workdir)
      done[(name, seed)] = {
          "name": name, "seed": seed, "steps": step,
          "args": extra, "metrics": test, "validation": val,
          "wall_s": time.time() - t0, "parallel": args.parallel,
          "date": time.strftime("%Y-%m-%d"), "machine": runlib.machine()}
      runlib.save_rows(path, done.values())
      print(f"{name} seed {seed}: test " + " ".join(
          f"{k.split('/')[-1]}={100 * v:.2f}" for k, v in test.items()
          if v is not None) + f", validation {100 * val['accuracy']:.2f}, "
          f"{done[(name, seed)]['wall_s'] / 60:.1f} min", flush=True)


def table(rows) -> str:
  cell = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
  body = [[r["seed"]] + [cell(r["metrics"][k]) for k in TYPES]
          + [cell(r["validation"]["accuracy"]),
             f"{r['wall_s'] / 60:.1f}",
             "alone" if r["parallel"] == 1 else f"{r['parallel']} at a time"]
          for r in rows]
  stats = []
  for k in TYPES:
    vals = [r["metrics"][k] for r in rows if r["metrics"][k] is not None]
    stats.append(f"{runlib.pct_cell(vals)} ({100 * min(vals):.1f}-"
                 f"{100 * max(vals):.1f})" if vals else "-")
  body.append(["mean ± std (min-max)"] + stats + [runlib.pct_cell(
      [r["validation"]["accuracy"] for r in rows]), "", ""])
  return runlib.markdown_table(
      ["seed", "test: all", "non-relational", "relational", "ternary",
       "validation: all", "wall (min)", "runs"], body)


def main():
  argv = sys.argv[1:]
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/default_seeds")
  parser.add_argument("--name", default="default",
                      help="the recipe's name in the table (runs go to "
                           "OUT/NAME_seedN)")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--parallel", type=int, default=2,
                      help="runs at a time")
  parser.add_argument("--quick", action="store_true",
                      help="tiny data, 4 steps: checks the script runs")
  args = parser.parse_args(argv)
  if args.parallel < 1:
    parser.error("--parallel must be >= 1")
  seeds = [int(s) for s in args.seeds.split(",") if s]
  if args.quick:
    extra = QUICK + extra
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "results.json")
  done = {(r["name"], r["seed"]): r
          for r in runlib.load_rows(path).values()}
  run_seeds(args.name, seeds, args, extra, done, path)

  rows = sorted((r for r in done.values() if r["name"] == args.name),
                key=lambda r: r["seed"])
  cmd = ("python experiments/default_seeds.py " + " ".join(sys.argv[1:]))
  md = "\n".join([
      f"## The default job over seeds: {args.name}", "",
      "Test: the paper's 200 test images (6,000 questions), reported; "
      "validation: 500 held-out training-distribution images, where "
      "recipes are chosen.", "", table(rows), "",
      f"Machine: {runlib.machine()}. Command: {cmd}", ""])
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(md)
  series = [(f"seed {r['seed']}", [100 * (r["metrics"][k] or float("nan"))
                                   for k in TYPES], None) for r in rows]
  runlib.bar_chart(os.path.join(args.out, "accuracy.png"),
                   ["all", "non-relational", "relational", "ternary"],
                   series, title=f"Default job ({args.name}), "
                   "Sort-of-CLEVR test, per seed")
  print(md, flush=True)


if __name__ == "__main__":
  main()
