"""Sort-of-CLEVR (Santoro et al. 2017): the mmtx cross-attention model against
a CNN+MLP-style late-fusion baseline and a question-only model, one table.

  ./run.sh python experiments/sort_of_clevr.py --steps=20000 --out=runs/soc
  ./run.sh python experiments/sort_of_clevr.py --quick        # smoke run

Each model is trained by the one trainer (mmtx.train) from configs/default.py
with overrides, evaluated on the paper's 200-image test split and on the
2,000-image 'test_large' split, and the table (accuracy per question type,
with the question-only floor beside it, parameters, examples/s, wall time,
machine) is written to OUT/results.md (+ results.json, accuracy.png).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runlib  # noqa: E402

# name -> (description, config overrides)
MODELS = {
    "cross_attention": ("mmtx: question tokens cross-attend to image patches",
                        {}),
    "film": ("FiLM (Perez et al. 2018): question modulates image tokens",
             {"model.fusion.name": "film", "model.fusion.target": "image"}),
    "cnn_mlp_late": ("CNN+MLP-style baseline: conv stem, late fusion",
                     {"model.fusion.name": "late",
                      "model.image.stem_channels": (24, 24, 24, 24),
                      "model.image.patch_size": 1,
                      "model.image.depth": 0}),
    "question_only": ("question only (image replaced by zeros): the floor",
                      {"model.zero_image": True}),
}


def _set(cfg, dotted, value):
  *path, leaf = dotted.split(".")
  node = cfg
  for p in path:
    node = node[p]
  node[leaf] = value


def run_one(name, overrides, args):
  from configs import default
  cfg = default.get_config(f"steps={args.steps}")
  with cfg.unlocked():
    cfg.data.eval_splits = ("test", "test_large")
    cfg.eval_every = args.eval_every or args.steps
    cfg.checkpoint_every = min(args.steps, 5000)
    cfg.log_every = max(args.steps // 20, 1)
    cfg.seed = args.seed
    cfg.mesh.cpu_devices = args.cpu_devices
    for k, v in overrides.items():
      _set(cfg, k, v)
  if args.quick:
    runlib.shrink_for_quick(cfg)
  workdir = os.path.join(args.out, name)
  r = runlib.train_run(cfg, workdir)
  return {"name": name, "metrics": r["metrics"], "wall_s": r["wall_s"],
          "examples_per_sec": r["questions_per_sec"], "params": r["params"],
          "history": runlib.eval_history(workdir, TYPES)}


TYPES = ("accuracy", "accuracy/nonrel", "accuracy/rel", "accuracy/ternary")


def history_table(results) -> str:
  """Test accuracy at every evaluation of each model (--eval_every)."""
  rows = [[r["name"], f"{step:,}"] + [f"{100 * v.get(k, float('nan')):.1f}%"
                                      for k in TYPES]
          for r in results for step, v in r["history"]]
  return runlib.markdown_table(["model", "step", "all", "nonrel", "rel",
                                "ternary"], rows)


def table(results, args):
  cols = [("test", "accuracy"), ("test", "accuracy/nonrel"),
          ("test", "accuracy/rel"), ("test", "accuracy/ternary"),
          ("test_large", "accuracy/nonrel"), ("test_large", "accuracy/rel"),
          ("test_large", "accuracy/ternary")]
  floor = next((r for r in results if r["name"] == "question_only"), None)

  def get(r, split, key):
    k = key if split == "test" else f"{split}/{key}"
    return r["metrics"].get(k)

  head = ["model", "params", "questions/s", "wall"] + [f"{s} {k.split('/')[-1]}"
                                                  for s, k in cols]
  rows = []
  for r in results:
    cells = [r["name"], f"{r['params'] / 1e6:.2f}M",
             f"{r['examples_per_sec']:.0f}" if r["examples_per_sec"] else "-",
             f"{r['wall_s'] / 60:.1f} min"]
    for s, k in cols:
      v = get(r, s, k)
      f = get(floor, s, k) if floor and r is not floor else None
      cells.append("-" if v is None else f"{100 * v:.1f}%" + (
          f" (floor {100 * f:.1f})" if f is not None else ""))
    rows.append(cells)
  from configs import default
  d = default.get_config()
  images = 8 if args.quick else d.batch_size
  meta = (f"{args.steps} steps x {images} images x "
          f"{d.data.questions_per_image} questions per image, seed "
          f"{args.seed}; machine: {platform.machine()} {os.cpu_count()} CPU "
          f"cores ({platform.processor() or 'cpu'}); "
          f"{time.strftime('%Y-%m-%d')}")
  return runlib.markdown_table(head, rows) + "\n\n" + meta + "\n"


def plot(results, path):
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  types = ["nonrel", "rel", "ternary"]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  w = 0.8 / len(results)
  for i, r in enumerate(results):
    vals = [100 * r["metrics"].get(f"accuracy/{t}", 0) for t in types]
    ax.bar([j + i * w for j in range(3)], vals, w, label=r["name"])
  ax.set_xticks([j + w * (len(results) - 1) / 2 for j in range(3)], types)
  ax.set_ylabel("test accuracy (%)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return True


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--steps", type=int, default=20000)
  p.add_argument("--eval_every", type=int, default=0,
                 help="intermediate evaluations (in OUT/MODEL/metrics.jsonl); "
                      "0 = only at the end")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--models", default=",".join(MODELS))
  runlib.add_common_args(p, out="runs/sort_of_clevr")
  args = p.parse_args()
  if args.quick:
    args.steps = min(args.steps, 4)
  names = args.models.split(",")
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    p.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
  os.makedirs(args.out, exist_ok=True)
  results = [run_one(n, MODELS[n][1], args) for n in names]
  md = "# Sort-of-CLEVR\n\n" + "\n".join(
      f"- **{n}**: {MODELS[n][0]}" for n in names) + "\n\n" + table(
          results, args)
  if any(len(r["history"]) > 1 for r in results):
    md += "\nTest split during training:\n\n" + history_table(results) + "\n"
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(md)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  plot(results, os.path.join(args.out, "accuracy.png"))
  print(md)


if __name__ == "__main__":
  main()
