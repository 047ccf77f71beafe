"""Captioning, image-text retrieval + zero-shot classification, and visual
dialogue on the built-in Sort-of-CLEVR data, each with its standard metric and
a floor in the same table.

  ./run.sh python experiments/downstream_tasks.py --steps=3000 --out=runs/downstream
  ./run.sh python experiments/downstream_tasks.py --rows=clip,siglip   # a subset
  (rows already in OUT/results.json with the same --steps and --seed are
  reused, so subsets run at different budgets add up to one table)
  ./run.sh python experiments/downstream_tasks.py --quick              # smoke run

Rows (each the one trainer on a config file, same --steps and seed):
  caption         configs/caption.py (CoCa: captioning + contrastive loss),
                  greedy decoding: BLEU-1..4, CIDEr-D against all 5 reference
                  captions, and retrieval from its contrastive embeddings;
  clip / siglip   configs/clip.py:loss=softmax|sigmoid (DualEncoder): image
                  <-> text recall@1/5/10 over all (image, caption) pairs, and
                  zero-shot "how many circles" classification from prompts;
  dialogue_full   configs/dialogue.py: accuracy and MRR of the answer (ranked
                  among the whole answer vocabulary) per turn;
  dialogue_last   the same with only the current question (no history);
  dialogue_full_tested_last
                  dialogue_full's trained model (no training: its checkpoint)
                  evaluated with only the current question - the same
                  weights with the history removed at test time.
Floors, computed from the test records (no model): captioning - each test
image "captioned" with the first reference of another test image (same
templates, wrong scene); retrieval - chance recall@K; zero-shot - the
majority class; dialogue - the no-history rows (turn 1 names the object and
needs no history; the later turns say "it", so without the history they
fall to guessing, which dialogue_full_tested_last shows on one set of
weights). Tables go to OUT/results.md (+ results.json), bars with the
floors to OUT/captioning.png, retrieval.png and dialogue.png (those with
rows).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runlib  # noqa: E402

ROWS = {
    "caption": ("caption", ""),
    "clip": ("clip", "loss=softmax"),
    "siglip": ("clip", "loss=sigmoid"),
    "dialogue_full": ("dialogue", "history=full"),
    "dialogue_last": ("dialogue", "history=last"),
    "dialogue_full_tested_last": ("dialogue", "history=last"),
}
# Rows that train nothing: they evaluate another row's checkpoint.
EVAL_OF = {"dialogue_full_tested_last": "dialogue_full"}


def run_row(name, args):
  import importlib
  module, arg = ROWS[name]
  cfg = importlib.import_module(f"mmtx.configs.{module}").get_config(
      ",".join(filter(None, [arg, f"steps={args.steps}"])))
  with cfg.unlocked():
    cfg.seed = args.seed
    cfg.eval_every = args.steps
    cfg.checkpoint_every = args.steps
    cfg.log_every = max(args.steps // 20, 1)
    cfg.mesh.cpu_devices = args.cpu_devices
  if args.quick:
    runlib.shrink_for_quick(cfg)
  workdir = os.path.join(args.out, name)
  config = f"configs/{module}.py" + (f":{arg}" if arg else "")
  source = EVAL_OF.get(name)
  if source:
    trained = os.path.abspath(os.path.join(args.out, source, "checkpoints"))
    if not runlib.checkpoint_steps(os.path.join(args.out, source)):
      raise SystemExit(f"downstream_tasks: row {name} evaluates the "
                       f"checkpoint of row {source}, but {trained} does not "
                       f"exist; run --rows={source},{name}.")
    os.makedirs(workdir, exist_ok=True)
    link = os.path.join(workdir, "checkpoints")
    if not os.path.islink(link):
      os.symlink(trained, link)
    r = runlib.train_run(cfg, workdir, mode="eval")
    config = f"configs/{module}.py:{ROWS[source][1]} model, tested with {arg}"
  else:
    r = runlib.train_run(cfg, workdir)
  return {"name": name, "config": config, "steps": args.steps,
          "seed": args.seed, **r}


def chance_recall(direction: str, images: int, per_image: int, k: int):
  """Recall@K of a random ranking: text -> image, the one right image among
  `images` in the top K; image -> text, any of its `per_image` captions among
  all `images * per_image` in the top K."""
  if direction == "t2i":
    return min(k / images, 1.0)
  total = images * per_image
  return 1 - math.comb(total - per_image, k) / math.comb(total, k)


def floors(dataset: str) -> dict:
  """Model-free floors from the test records (see the module doc)."""
  import numpy as np
  from mmtx import data as data_lib
  from mmtx import metrics as metrics_lib
  from mmtx.tasks import contrastive
  source = data_lib.ensure_built(dataset, verbose=False).as_data_source("test")
  records = [source[i] for i in range(len(source))]
  refs = {i: [data_lib.as_text(c) for c in r["caption"]]
          for i, r in enumerate(records)}
  n = len(records)
  wrong = {i: [refs[(i + 1) % n][0]] for i in range(n)}
  cap = metrics_lib.caption_scores(refs, wrong, tokenize=True)
  per_image = len(refs[0])
  total = n * per_image
  chance = {f"{d}_r{k}": chance_recall(d, n, per_image, k)
            for d in ("i2t", "t2i") for k in (1, 5, 10)}
  labels = np.array([contrastive.circle_count_label(r["objects"])
                     for r in records]) if "objects" in records[0] else None
  majority = (float(np.bincount(labels).max() / len(labels))
              if labels is not None else float("nan"))
  return {"caption": cap, "retrieval": chance, "zero_shot_majority": majority,
          "images": n, "captions": total}


def _pct(x):
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else (
      f"{100 * x:.1f}")


def tables(results, fl, args) -> str:
  by = {r["name"]: r for r in results}
  out = []

  def info(r):
    steps = f"{r['steps']:,}" if "steps" in r else "?"
    return (f"{r['params'] / 1e6:.2f}M", steps, f"{r['wall_s'] / 60:.1f} min")

  if "caption" in by:
    r = by["caption"]
    m = r["metrics"]
    keys = [f"bleu_{k}" for k in range(1, 5)] + ["cider"]
    out.append("### Captioning (greedy decoding, x100)\n\n" +
               runlib.markdown_table(
                   ["model", "params", "steps", "wall"] + ["BLEU-1", "BLEU-2", "BLEU-3",
                                                  "BLEU-4", "CIDEr-D"],
                   [[r["config"], *info(r)] + [_pct(m.get(k)) for k in keys],
                    ["floor: another image's caption", "", "", ""] +
                    [_pct(fl["caption"][k]) for k in keys]]))
  rec_rows = []
  keys = [f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
  for name in ("clip", "siglip", "caption"):
    if name in by:
      r = by[name]
      m = r["metrics"]
      rec_rows.append([r["config"], *info(r)] + [_pct(m.get(k)) for k in keys]
                      + [_pct(m.get("zero_shot/top1"))])
  if rec_rows:
    rec_rows.append(["floor: chance / majority class", "", "", ""] +
                    [_pct(fl["retrieval"][k]) for k in keys] +
                    [_pct(fl["zero_shot_majority"])])
    out.append(
        f"### Retrieval ({fl['images']} images, {fl['captions']} captions) "
        f"and zero-shot 'how many circles' (%)\n\n" + runlib.markdown_table(
            ["model", "params", "steps", "wall", "i2t R@1", "i2t R@5", "i2t R@10",
             "t2i R@1", "t2i R@5", "t2i R@10", "zero-shot top-1"], rec_rows))
  dia = [by[n] for n in ("dialogue_full", "dialogue_last",
                         "dialogue_full_tested_last") if n in by]
  if dia:
    turns = sorted({int(k.split("_")[-1]) for r in dia for k in r["metrics"]
                    if k.startswith("accuracy/turn_")})
    rows = []
    for r in dia:
      m = r["metrics"]
      rows.append([r["config"], *info(r), _pct(m.get("accuracy")),
                   f"{m.get('mrr', float('nan')):.3f}"] +
                  [_pct(m.get(f"accuracy/turn_{t}")) for t in turns])
    out.append("### Visual dialogue (answer accuracy %, MRR over the answer "
               "vocabulary)\n\n" + runlib.markdown_table(
                   ["model", "params", "steps", "wall", "accuracy", "MRR"] +
                   [f"turn {t}" for t in turns], rows))
  meta = (f"Seed {args.seed}, test split of "
          f"{args.dataset}; machine: {runlib.machine()}; "
          f"{time.strftime('%Y-%m-%d')}.")
  return "\n\n".join(out + [meta]) + "\n"


def plots(results, fl, out: str) -> list[str]:
  """The tables' headline numbers as bar charts beside their floors:
  captioning (BLEU-1..4, CIDEr-D), retrieval (R@1/5/10 both ways, zero-shot
  top-1), dialogue (accuracy per turn). Returns the PNG paths written."""
  by = {r["name"]: r for r in results}
  nan = float("nan")
  get = lambda m, k: 100 * m[k] if m.get(k) is not None else nan  # noqa: E731
  paths = []
  if "caption" in by:
    keys = [f"bleu_{k}" for k in range(1, 5)] + ["cider"]
    paths.append(runlib.bar_chart(
        os.path.join(out, "captioning.png"),
        ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"],
        [("CoCa (configs/caption.py)",
          [get(by["caption"]["metrics"], k) for k in keys], None),
         ("floor: another image's caption",
          [get(fl["caption"], k) for k in keys], None)],
        ylabel="score (x100)", title="Captioning, greedy"))
  keys = [f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
  rec = [(by[n]["config"], [get(by[n]["metrics"], k) for k in keys] +
          [get(by[n]["metrics"], "zero_shot/top1")], None)
         for n in ("clip", "siglip", "caption") if n in by]
  if rec:
    floor = ([get(fl["retrieval"], k) for k in keys] +
             [100 * fl["zero_shot_majority"]])
    paths.append(runlib.bar_chart(
        os.path.join(out, "retrieval.png"),
        ["i2t R@1", "R@5", "R@10", "t2i R@1", "R@5", "R@10", "zero-shot"],
        rec + [("floor: chance / majority", floor, None)],
        ylabel="%", title="Retrieval and zero-shot"))
  dia = [by[n] for n in ("dialogue_full", "dialogue_last",
                         "dialogue_full_tested_last") if n in by]
  if dia:
    turns = sorted({int(k.split("_")[-1]) for r in dia for k in r["metrics"]
                    if k.startswith("accuracy/turn_")})
    paths.append(runlib.bar_chart(
        os.path.join(out, "dialogue.png"),
        ["all"] + [f"turn {t}" for t in turns],
        [(r["name"], [get(r["metrics"], "accuracy")] +
          [get(r["metrics"], f"accuracy/turn_{t}") for t in turns], None)
         for r in dia], title="Visual dialogue, answer accuracy"))
  return paths


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--rows", default=",".join(ROWS))
  runlib.add_common_args(p, out="runs/downstream")
  args = p.parse_args(argv)
  names = args.rows.split(",")
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    p.error(f"unknown row(s) {unknown}; known: {list(ROWS)}")
  if args.quick:
    args.steps = 2
  args.dataset = "sort_of_clevr/tiny" if args.quick else "sort_of_clevr"
  os.makedirs(args.out, exist_ok=True)
  fl = floors(args.dataset)
  # Rows of an earlier run into the same --out stay in the table; a row
  # asked for again with the same steps and seed is reused, not retrained.
  path = os.path.join(args.out, "results.json")
  done = runlib.load_rows(path)
  for name in names:
    key = (name, args.seed, args.steps)
    if key in done:
      print(f"{name}: reusing the row in {path}", flush=True)
      continue
    done[key] = run_row(name, args)
    runlib.save_rows(path, done.values(), floors=fl)
    print(f"{name}: " + " ".join(f"{k}={v:.4f}" for k, v in
                                 sorted(done[key]["metrics"].items())
                                 if "/" not in k or k.startswith("zero")),
          flush=True)
  # One row per name in the table: this command's, else the newest stored.
  latest = {r["name"]: r for r in done.values()}
  latest.update({n: done[(n, args.seed, args.steps)] for n in names})
  results = [latest[n] for n in ROWS if n in latest]
  md = "# Downstream tasks (Sort-of-CLEVR)\n\n" + tables(results, fl, args)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(md)
  plots(results, fl, args.out)
  print(md)
  return results, fl


if __name__ == "__main__":
  main()
