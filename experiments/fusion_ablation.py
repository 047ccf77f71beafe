"""Fusion ablation on Sort-of-CLEVR: every strategy in mmtx.fusion.FUSIONS in
the default job's model (configs/default.py), same budget, several seeds;
mean ± std test accuracy per question type, parameters, questions/s.

  ./run.sh python experiments/fusion_ablation.py --steps=4000 --seeds=0,1,2 \
      --out=runs/fusion_ablation_4k
  ./run.sh python experiments/fusion_ablation.py --quick     # smoke run

Budget: 4,000 steps (16 images x 10 questions each, weight decay 1e-4:
`runlib.soc_table_config`, the recipe the committed rows were measured
with, which the default job's 2026-12-05 recipe replaced) by default. It
is a third of that recipe's 12,000 steps, so the table ranks how fast each
strategy learns to ground the question (at 4k only cross-attention has, 97 %
non-relational), not where it ends; on the 2-core CPU box one seed of
every strategy is ~3 h (3-7 min for most; concat, co_attention, m_modal
and bottleneck, which cannot share the image pass, ~25-30 min each),
8,000 steps twice that.
Finished rows are kept in OUT/results.json: rerunning resumes. Measured
rows are committed in experiments/results/ (runs/ is not kept between
machines); `--resume_from` merges such a file in, `--table_only` writes the
table from the rows at hand without training:

  ./run.sh python experiments/fusion_ablation.py --table_only \
      --resume_from=experiments/results/fusion_ablation_4k.json \
      --out=runs/fusion_ablation_4k

Only model.fusion.name changes between rows (FiLM modulates the image, so
its target is 'image'; every other directional strategy has the question
query the image, target 'text'). A floor row (--floor, on by default)
trains the cross-attention model with the image replaced by zeros. Each run
is the one trainer (mmtx.train); results.md / results.json / accuracy.png
go to OUT, one workdir per run under OUT/runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runlib  # noqa: E402

TYPES = ("accuracy", "accuracy/nonrel", "accuracy/rel", "accuracy/ternary")
# The floor row: the default (cross_attention) model with the image replaced
# by zeros, same budget - what a strategy gets without using the image.
FLOOR = "question_only"


def config_for(fusion, seed, args):
  """configs/default.py with strategy `fusion` (or the floor row's)."""
  floor = fusion == FLOOR
  cfg = runlib.soc_table_config(
      f"steps={args.steps},fusion={'cross_attention' if floor else fusion}")
  with cfg.unlocked():
    cfg.model.zero_image = floor
    cfg.seed = seed
    cfg.data.eval_splits = ("test",)   # a report: nothing is chosen on it
    cfg.eval_every = args.steps
    cfg.checkpoint_every = args.steps
    cfg.keep_checkpoints = 1
    cfg.log_every = max(args.steps // 10, 1)
    if args.quick:
      cfg.data.name = "sort_of_clevr/tiny"
      cfg.batch_size = 4
      cfg.data.eval_batch_size = 32
  return cfg


def run_one(fusion, seed, args):
  cfg = config_for(fusion, seed, args)
  workdir = os.path.join(args.out, "runs", f"{fusion}_seed{seed}")
  r = runlib.train_run(cfg, workdir)
  return {"name": fusion, "seed": seed, "steps": args.steps,
          "wall_s": r["wall_s"],
          "params": r["params"], "questions_per_sec": r["questions_per_sec"],
          "metrics": {k: r["metrics"].get(k) for k in TYPES},
          "date": time.strftime("%Y-%m-%d"), "machine": runlib.machine()}


def ordered(results):
  """The strategies of `results`, best mean accuracy first (ties by name,
  so a table redrawn in another process is the same), the floor last."""
  import numpy as np
  return sorted({r["name"] for r in results},
                key=lambda n: (n == FLOOR, -np.mean([
                    r["metrics"]["accuracy"] for r in results
                    if r["name"] == n]), n))


def plot(results, path):
  """accuracy.png: a bar per strategy (table order) for each question type,
  the mean over seeds with the std as an error bar."""
  series = runlib.seed_series(
      results, ordered(results), TYPES,
      label=lambda n: "question only" if n == FLOOR else n)
  return runlib.bar_chart(path, ["all", "nonrel", "rel", "ternary"], series,
                          title="Fusion ablation, Sort-of-CLEVR test")


def table(results, args):
  import numpy as np
  names = ordered(results)
  head = ["fusion", "params", "questions/s", "seeds", "all", "nonrel", "rel",
          "ternary"]
  rows = []
  for n in names:
    rs = [r for r in results if r["name"] == n]
    label = "floor: question only (image zeroed)" if n == FLOOR else n
    cells = [label, f"{rs[0]['params'] / 1e3:.0f}k",
             f"{np.median([r['questions_per_sec'] or 0 for r in rs]):.0f}",
             ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))]
    cells += [runlib.pct_cell([r["metrics"][k] for r in rs]) for k in TYPES]
    rows.append(cells)
  dates = sorted({r.get("date", "undated") for r in results})
  machines = sorted({r.get("machine", "unrecorded") for r in results})
  meta = (f"Sort-of-CLEVR test split (200 images, 6,000 questions); "
          f"{args.steps} steps x {'4' if args.quick else '16'} images x 10 "
          f"questions; mean ± std over a row's seeds; machine: "
          f"{'; '.join(machines)}; measured {dates[0]}"
          f"{f' to {dates[-1]}' if len(dates) > 1 else ''}.")
  return runlib.markdown_table(head, rows) + "\n\n" + meta + "\n"


def main(argv=None):
  from mmtx.fusion import FUSIONS
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=4000)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--fusions", default=",".join(sorted(FUSIONS)))
  p.add_argument("--floor", action=argparse.BooleanOptionalAction,
                 default=True, help="also train the question-only floor "
                 "(image replaced by zeros), same budget")
  p.add_argument("--out", default="runs/fusion_ablation")
  runlib.add_committed_args(p, "fusion_ablation_4k.json")
  p.add_argument("--quick", action="store_true",
                 help="tiny data, 2 steps, seed 0: checks every row runs")
  args = p.parse_args(argv)
  if args.quick:
    args.steps, args.seeds = 2, "0"
  fusions = runlib.fusion_names(args.fusions, "fusion_ablation")
  if args.floor:
    fusions.append(FLOOR)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "results.json")
  done = runlib.merge_committed(args.resume_from, path, "fusion_ablation")
  seeds = [] if args.table_only else [int(s) for s in args.seeds.split(",")]
  mine = runlib.run_missing(done, path, fusions, seeds, args.steps,
                            lambda f, seed: run_one(f, seed, args))
  md = table(mine, args)
  open(os.path.join(args.out, "results.md"), "w").write(md)
  if mine:
    plot(mine, os.path.join(args.out, "accuracy.png"))
  print(md)
  return mine


if __name__ == "__main__":
  main()
