"""easy-VQA (Zhou 2020): the mmtx model against its image-ablated copy (the
image replaced by zeros, i.e. question only), one table.

  ./run.sh python experiments/easy_vqa_ablation.py --steps=12000 --out=runs/easy_vqa
  ./run.sh python experiments/easy_vqa_ablation.py --quick            # smoke run

Published references: the dataset author's CNN + bag-of-words model reports
99.5 % test accuracy; a question-only model gets about 67 %. Both rows use
configs/easy_vqa.py and the one trainer; the table (test accuracy overall and
per question type, parameters, questions/s, wall time, machine) goes to
OUT/results.md and OUT/results.json, the bars to OUT/accuracy.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runlib  # noqa: E402

ROWS = {"mmtx": "cross-attention model (configs/easy_vqa.py)",
        "image_ablated": "same model, image replaced by zeros"}
KEYS = ("accuracy", "accuracy/shape", "accuracy/color", "accuracy/yes/no")


def main(argv=None):
  from mmtx.configs import easy_vqa
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=12000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="runs/easy_vqa")
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  if args.quick:
    args.steps = 2
  results = []
  for name in ROWS:
    cfg = easy_vqa.get_config(f"steps={args.steps},"
                              f"zero_image={int(name == 'image_ablated')}")
    with cfg.unlocked():
      cfg.seed = args.seed
      cfg.log_every = max(args.steps // 10, 1)
      if args.quick:
        cfg.data.train_split = "train[:32]"
        cfg.data.eval_splits = ("test[:64]",)
        cfg.batch_size = 4
        cfg.data.eval_batch_size = 32
    r = runlib.train_run(cfg, os.path.join(args.out, name))
    results.append({"name": name, **r})
    print(f"{name}: " + " ".join(f"{k}={100 * r['metrics'].get(k, 0):.2f}"
                                 for k in KEYS), flush=True)
  head = ["model", "params", "questions/s", "wall", "test", "shape", "color",
          "yes/no"]
  rows = [[r["name"], f"{r['params'] / 1e3:.0f}k",
           f"{r['questions_per_sec'] or 0:.0f}", f"{r['wall_s'] / 60:.1f} min"]
          + [f"{100 * r['metrics'].get(k, float('nan')):.2f}%" for k in KEYS]
          for r in results]
  rows.append(["published: CNN + BoW (Zhou 2020)", "", "", "", "99.5%", "",
               "", ""])
  rows.append(["published: question only", "", "", "", "~67%", "", "", ""])
  md = runlib.markdown_table(head, rows) + (
      f"\n\n{args.steps} steps x 16 images x 8 questions per image, seed "
      f"{args.seed}; easy-VQA test split (1,000 images, 9,673 questions); "
      f"machine: {runlib.machine()}; "
      f"{time.strftime('%Y-%m-%d')}.\n")
  os.makedirs(args.out, exist_ok=True)
  open(os.path.join(args.out, "results.md"), "w").write(md)
  runlib.bar_chart(
      os.path.join(args.out, "accuracy.png"), ["test", "shape", "color",
                                               "yes/no"],
      [(ROWS[r["name"]], [100 * r["metrics"].get(k, float("nan"))
                          for k in KEYS], None) for r in results],
      title=f"easy-VQA test, {args.steps} steps")
  json.dump(results, open(os.path.join(args.out, "results.json"), "w"),
            indent=1)
  print(md)
  return results


if __name__ == "__main__":
  main()
