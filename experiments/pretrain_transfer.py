"""Does pretraining help? ALBEF-style image-text pretraining (ITC + ITM with
hard negatives + MLM, configs/pretrain.py) on the Sort-of-CLEVR captions, then
VQA fine-tuning (configs/finetune_vqa.py) with 1 %, 10 % and 100 % of the
training images' question labels, against the same model trained from
scratch on the same labels - one table.

  ./run.sh python experiments/pretrain_transfer.py --pretrain_steps=3000 \
      --finetune_steps=2000 --out=runs/transfer
  ./run.sh python experiments/pretrain_transfer.py --quick          # smoke run

Every row is the one trainer (mmtx.train) on a config file: the pretraining
run is OUT/pretrain; each fine-tuning run (OUT/{scratch,pretrained}_L{labels}
_s{seed}) starts from its latest checkpoint (towers + fusion; the VQA head
starts fresh) or from scratch, same steps, same seed. Rerunning with the same
--out resumes finished / interrupted runs instead of retraining them. The
table (test accuracy overall and per question type, mean ± std over
--seeds, the gain from pretraining, the pretraining run's own retrieval / ITM
/ MLM numbers, wall times, machine) goes to OUT/results.md (+ results.json,
transfer.png).
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

KEYS = ("accuracy", "accuracy/nonrel", "accuracy/rel", "accuracy/ternary")
PRETRAIN_KEYS = ("t2i_r1", "i2t_r1", "itm_accuracy", "mlm_accuracy")


def pretrain(args):
  from mmtx.configs import pretrain as pretrain_cfg
  cfg = pretrain_cfg.get_config(f"steps={args.pretrain_steps},"
                                f"width={args.width},tower={args.tower}")
  with cfg.unlocked():
    cfg.seed = 0
    cfg.eval_every = args.pretrain_steps
    cfg.checkpoint_every = max(args.pretrain_steps // 4, 1)
    cfg.log_every = max(args.pretrain_steps // 20, 1)
    cfg.mesh.cpu_devices = args.cpu_devices
  if args.quick:
    runlib.shrink_for_quick(cfg)
  return runlib.train_run(cfg, os.path.join(args.out, "pretrain"))


def finetune(args, labels, seed, pretrained):
  from mmtx.configs import finetune_vqa
  init = os.path.join(args.out, "pretrain") if pretrained else ""
  cfg = finetune_vqa.get_config(f"steps={args.finetune_steps},labels={labels},"
                                f"width={args.width},tower={args.tower},"
                                f"pretrained={init}")
  with cfg.unlocked():
    cfg.seed = seed
    cfg.eval_every = args.finetune_steps
    cfg.checkpoint_every = args.finetune_steps
    cfg.log_every = max(args.finetune_steps // 20, 1)
    cfg.mesh.cpu_devices = args.cpu_devices
    cfg.best_metric = ""
  if args.quick:
    runlib.shrink_for_quick(cfg)
  name = f"{'pretrained' if pretrained else 'scratch'}_L{labels}_s{seed}"
  r = runlib.train_run(cfg, os.path.join(args.out, name))
  return {"name": name, "labels": labels, "seed": seed,
          "pretrained": pretrained, **r}


def mean_accuracy(runs):
  """Mean overall test accuracy of `runs`, in percent."""
  return runlib.mean_std([r["metrics"]["accuracy"] for r in runs])[0]


def table(pre, runs, args):
  cell = runlib.pct_cell

  head = ["labels", "train images", "init"] + [
      k.split("/")[-1] if "/" in k else "all" for k in KEYS] + ["gain (all)",
                                                            "wall / run"]
  rows = []
  for labels in args.labels:
    by = {p: [r for r in runs if r["labels"] == labels and
              r["pretrained"] == p] for p in (False, True)}
    images = round(labels * args.train_images)
    for p in (False, True):
      rs = by[p]
      if not rs:
        continue
      gain = ""
      if p and by[False]:
        gain = f"{mean_accuracy(rs) - mean_accuracy(by[False]):+.1f} points"
      rows.append([f"{100 * labels:g}%", images,
                   "pretrained" if p else "scratch"] +
                  [cell([r["metrics"].get(k, float("nan")) for r in rs])
                   for k in KEYS] +
                  [gain, f"{sum(r['wall_s'] for r in rs) / len(rs) / 60:.1f} min"])
  pm = pre["metrics"]
  pre_line = (f"Pretraining run (configs/pretrain.py:tower={args.tower}, "
              f"{args.pretrain_steps} "
              f"steps x 64 captions, {pre['params'] / 1e6:.2f}M params, "
              f"{pre['wall_s'] / 60:.1f} min): test " + ", ".join(
                  f"{k} {100 * pm[k]:.1f}%" for k in PRETRAIN_KEYS if k in pm)
              + ".")
  meta = (f"Fine-tuning: configs/finetune_vqa.py, {args.finetune_steps} steps "
          f"x 64 questions, {runs[0]['params'] / 1e6:.2f}M params, seeds "
          f"{','.join(map(str, args.seeds))} (mean ± std over seeds); test = "
          f"the paper's 200-image test split (6,000 questions). Machine: "
          f"{runlib.machine()}; "
          f"{time.strftime('%Y-%m-%d')}.")
  return "\n\n".join([runlib.markdown_table(head, rows), pre_line, meta]) + "\n"


def plot(runs, args, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for p, style in ((False, "o--"), (True, "s-")):
    xs, ms, ss = [], [], []
    for labels in args.labels:
      rs = [r["metrics"]["accuracy"] for r in runs
            if r["labels"] == labels and r["pretrained"] == p]
      if rs:
        m, s = runlib.mean_std(rs)
        xs.append(100 * labels)
        ms.append(m)
        ss.append(s)
    ax.errorbar(xs, ms, yerr=ss, fmt=style, capsize=3,
                label="pretrained" if p else "scratch")
  ax.set_xscale("log")
  ax.set_xlabel("% of training labels")
  ax.set_ylabel("test accuracy (%)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--pretrain_steps", type=int, default=3000)
  p.add_argument("--finetune_steps", type=int, default=2000)
  p.add_argument("--labels", default="0.01,0.1,1.0",
                 help="comma-separated label fractions")
  p.add_argument("--seeds", default="0", help="fine-tuning seeds")
  p.add_argument("--width", type=int, default=128)
  from mmtx.configs import pretrain as pretrain_cfg
  p.add_argument("--tower", default="vit", choices=pretrain_cfg.TOWERS,
                 help="image tower (configs/pretrain.py): 'vit' (15-pixel "
                 "patches, learned positions) or 'conv' (the default VQA "
                 "job's conv stem + sin-cos positions)")
  runlib.add_common_args(p, out="runs/transfer")
  args = p.parse_args(argv)
  args.labels = [float(x) for x in args.labels.split(",")]
  args.seeds = [int(x) for x in args.seeds.split(",")]
  for x in args.labels:
    if not 0 < x <= 1:
      p.error(f"--labels: each fraction must be in (0, 1], got {x}")
  if args.quick:
    args.pretrain_steps = args.finetune_steps = 2
    args.labels = [x for x in args.labels if x >= 0.1]
  from mmtx import data as data_lib
  name = "sort_of_clevr/tiny" if args.quick else "sort_of_clevr"
  args.train_images = len(data_lib.ensure_built(name).as_data_source("train"))
  os.makedirs(args.out, exist_ok=True)
  pre = pretrain(args)
  print("pretrain: " + " ".join(f"{k}={100 * pre['metrics'].get(k, 0):.1f}"
                                 for k in PRETRAIN_KEYS), flush=True)
  runs = []
  for labels in args.labels:
    for seed in args.seeds:
      for pretrained in (False, True):
        r = finetune(args, labels, seed, pretrained)
        runs.append(r)
        print(f"{r['name']}: " + " ".join(
            f"{k}={100 * r['metrics'].get(k, 0):.1f}" for k in KEYS),
              flush=True)
  md = "# Pretraining transfer (Sort-of-CLEVR)\n\n" + table(pre, runs, args)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(md)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"pretrain": pre, "finetune": runs}, f, indent=1)
  plot(runs, args, os.path.join(args.out, "transfer.png"))
  print(md)
  return pre, runs


if __name__ == "__main__":
  main()
