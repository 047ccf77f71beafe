"""Sort-of-CLEVR (Santoro et al. 2017): the mmtx cross-attention model against
the paper's CNN+MLP baseline (flattened CNN map + question -> MLP), a
late-fusion variant of it, FiLM and a question-only model, one table.

  ./run.sh python experiments/sort_of_clevr.py --steps=20000 --out=runs/soc
  ./run.sh python experiments/sort_of_clevr.py --models=cross_attention_wd --seeds=0,1,2 --steps=48000
  ./run.sh python experiments/sort_of_clevr.py --quick        # smoke run

With several seeds a model's cells are the mean ± std over its seeds, and a
second table lists every run. Run folders: OUT/MODEL for seed 0,
OUT/MODEL_seedN otherwise. Runs already in OUT/results.json with the same
--steps are reused (not retrained), and the table holds every run there at
--steps, so models and seeds run at different times add up to one table.

Each model is trained by the one trainer (mmtx.train) from configs/default.py
with the recipe the committed tables were measured with
(`runlib.soc_table_config`: 10 questions per image, weight decay 1e-4,
every question row encoded, two CPU devices) and
the model's overrides, evaluated on the paper's 200-image test split and on
the 2,000-image 'test_large' split, and the table (accuracy per question type,
with the question-only floor beside it, parameters, examples/s, wall time,
machine) is written to OUT/results.md (+ results.json, accuracy.png).
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

# name -> (description, config overrides)
MODELS = {
    "cross_attention": ("mmtx: question tokens cross-attend to image patches",
                        {}),
    "cross_attention_wd": (
        "mmtx, AdamW weight decay 0.05 (this table's others: 1e-4): the "
        "relational-target recipe at 48,000 steps",
        {"optimizer.weight_decay": 0.05}),
    "film": ("FiLM (Perez et al. 2018): question modulates image tokens",
             {"model.fusion.name": "film", "model.fusion.target": "image"}),
    "cnn_mlp_late": ("CNN+MLP-style baseline: conv stem, late fusion",
                     {"model.fusion.name": "late",
                      "model.image.stem_channels": (24, 24, 24, 24),
                      "model.image.patch_size": 1,
                      "model.image.depth": 0}),
    "cnn_mlp": ("CNN+MLP (Santoro et al. 2017): the flattened 5x5 map of "
                "a 4-layer CNN and the question vector into one MLP "
                "(fusion 'flatten', 2 x 256 hidden)",
                {"model.fusion.name": "flatten",
                 "model.fusion.num_layers": 2,
                 "model.fusion.mlp_dim": 256,
                 "model.image.stem_channels": (24, 24, 24, 24),
                 "model.image.patch_size": 1,
                 "model.image.depth": 0}),
    "question_only": ("question only (image replaced by zeros): the floor",
                      {"model.zero_image": True}),
}

# The paper's table (the default --models); the others run when named.
TABLE = ("cross_attention", "film", "cnn_mlp_late", "cnn_mlp", "question_only")


def _set(cfg, dotted, value):
  *path, leaf = dotted.split(".")
  node = cfg
  for p in path:
    node = node[p]
  node[leaf] = value


def workdir_of(out, name, seed):
  return os.path.join(out, name if seed == 0 else f"{name}_seed{seed}")


def config_for(overrides, args, seed):
  """configs/default.py with the fusion the overrides name, then them."""
  fusion = overrides.get("model.fusion.name", "cross_attention")
  cfg = runlib.soc_table_config(f"steps={args.steps},fusion={fusion}")
  with cfg.unlocked():
    cfg.data.eval_splits = ("test", "test_large")
    cfg.eval_every = args.eval_every or args.steps
    cfg.checkpoint_every = min(args.steps, 5000)
    cfg.log_every = max(args.steps // 20, 1)
    cfg.seed = seed
    cfg.mesh.cpu_devices = args.cpu_devices
    for k, v in overrides.items():
      _set(cfg, k, v)
  if args.quick:
    runlib.shrink_for_quick(cfg)
  return cfg


def run_one(name, overrides, args, seed):
  cfg = config_for(overrides, args, seed)
  workdir = workdir_of(args.out, name, seed)
  r = runlib.train_run(cfg, workdir)
  return {"name": name, "seed": seed, "steps": args.steps,
          "metrics": r["metrics"],
          "wall_s": r["wall_s"],
          "examples_per_sec": r["questions_per_sec"], "params": r["params"],
          "history": runlib.eval_history(workdir, TYPES)}


TYPES = ("accuracy", "accuracy/nonrel", "accuracy/rel", "accuracy/ternary")


def _seeds(results, name):
  return [r["seed"] for r in results if r["name"] == name]


def history_table(results) -> str:
  """Test accuracy at every evaluation of each run (--eval_every)."""
  def label(r):
    several = len(_seeds(results, r["name"])) > 1
    return r["name"] + (f" (seed {r['seed']})" if several else "")
  rows = [[label(r), f"{step:,}"] + [
      f"{100 * v.get(k, float('nan')):.1f}%" for k in TYPES]
          for r in results for step, v in r["history"]]
  return runlib.markdown_table(["model", "step", "all", "nonrel", "rel",
                                "ternary"], rows)


def table(results, args):
  """Per model (mean ± std over its seeds), then every run if any model has
  several seeds."""
  cols = [("test", "accuracy"), ("test", "accuracy/nonrel"),
          ("test", "accuracy/rel"), ("test", "accuracy/ternary"),
          ("test_large", "accuracy/nonrel"), ("test_large", "accuracy/rel"),
          ("test_large", "accuracy/ternary")]
  names = list(dict.fromkeys(r["name"] for r in results))
  runs = {n: [r for r in results if r["name"] == n] for n in names}

  def values(rs, split, key):
    k = key if split == "test" else f"{split}/{key}"
    return [r["metrics"][k] for r in rs if k in r["metrics"]]

  head = ["model", "seeds", "params", "questions/s", "wall / run"] + [
      f"{s} {k.split('/')[-1]}" for s, k in cols]
  rows = []
  for n in names:
    rs = runs[n]
    speeds = [r["examples_per_sec"] for r in rs if r["examples_per_sec"]]
    cells = [n, ",".join(str(r["seed"]) for r in rs),
             f"{rs[0]['params'] / 1e6:.2f}M",
             f"{sum(speeds) / len(speeds):.0f}" if speeds else "-",
             f"{sum(r['wall_s'] for r in rs) / len(rs) / 60:.1f} min"]
    for s, k in cols:
      v = values(rs, s, k)
      floor = (values(runs["question_only"], s, k)
               if "question_only" in runs and n != "question_only" else [])
      cells.append(runlib.pct_cell(v) + (
          f" (floor {runlib.mean_std(floor)[0]:.1f})" if v and floor else ""))
    rows.append(cells)
  d = runlib.soc_table_config()
  images = 8 if args.quick else d.batch_size
  several = any(len(rs) > 1 for rs in runs.values())
  meta = (f"{args.steps} steps x {images} images x "
          f"{d.data.questions_per_image} questions per image"
          f"{'; mean ± std over seeds' if several else ''}; "
          f"machine: {runlib.machine()}; "
          f"{time.strftime('%Y-%m-%d')}")
  out = runlib.markdown_table(head, rows) + "\n\n" + meta + "\n"
  if several:
    out += "\nEvery run:\n\n" + runlib.markdown_table(
        ["model", "seed", "wall"] + [f"{s} {k.split('/')[-1]}" for s, k in cols],
        [[r["name"], r["seed"], f"{r['wall_s'] / 60:.1f} min"] +
         [runlib.pct_cell(values([r], s, k)) for s, k in cols]
         for r in results]) + "\n"
  return out


def plot(results, path):
  """accuracy.png: test accuracy per question type, a bar per model (mean
  over seeds, the std as an error bar)."""
  types = ["nonrel", "rel", "ternary"]
  series = runlib.seed_series(results, dict.fromkeys(r["name"] for r in results),
                              [f"accuracy/{t}" for t in types])
  return runlib.bar_chart(path, types, series, title="Sort-of-CLEVR test")


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--steps", type=int, default=20000)
  p.add_argument("--eval_every", type=int, default=0,
                 help="intermediate evaluations (in OUT/MODEL/metrics.jsonl); "
                      "0 = only at the end")
  p.add_argument("--seeds", default="0",
                 help="comma-separated seeds; several give mean ± std")
  p.add_argument("--models", default=",".join(TABLE),
                 help=f"comma-separated, of {list(MODELS)}")
  runlib.add_common_args(p, out="runs/sort_of_clevr")
  args = p.parse_args()
  args.seeds = [int(x) for x in args.seeds.split(",") if x]
  if args.quick:
    args.steps = min(args.steps, 4)
  names = args.models.split(",")
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    p.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "results.json")
  done = runlib.load_rows(path)
  for n in names:
    for seed in args.seeds:
      if (n, seed, args.steps) in done:
        print(f"{n} seed {seed}: reusing the run in {path}", flush=True)
        continue
      done[(n, seed, args.steps)] = run_one(n, MODELS[n][1], args, seed)
      runlib.save_rows(path, done.values())
  order = {n: i for i, n in enumerate(MODELS)}
  results = sorted((r for k, r in done.items()
                    if k[2] == args.steps and k[0] in MODELS),
                   key=lambda r: (order[r["name"]], r["seed"]))
  shown = list(dict.fromkeys(r["name"] for r in results))
  md = "# Sort-of-CLEVR\n\n" + "\n".join(
      f"- **{n}**: {MODELS[n][0]}" for n in shown) + "\n\n" + table(
          results, args)
  if any(len(r["history"]) > 1 for r in results):
    md += "\nTest split during training:\n\n" + history_table(results) + "\n"
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(md)
  plot(results, os.path.join(args.out, "accuracy.png"))
  print(md)


if __name__ == "__main__":
  main()
