"""WiSE-FT: how much of what zero-shot weights know survives fine-tuning on
little data, and how much weight-space interpolation between the two gives
back (Wortsman et al. 2022) - one table over alpha.

  ./run.sh python experiments/wise_ft.py --out=runs/wise_ft
  ./run.sh python experiments/wise_ft.py --init=DIR --out=runs/wise_ft  # HF
  ./run.sh python experiments/wise_ft.py --quick                # smoke run

The zero-shot weights are --init (a Hugging Face CLIP / SigLIP directory or
hub name, configs/clip.py:init=) or, offline, a CLIP trained with
configs/clip.py on the Sort-of-CLEVR captions (OUT/zero_shot). Fine-tuning
(OUT/fine_tuned, the one trainer) starts from them on the first --fraction
of the training images at a high learning rate. Each alpha's weights,
mmtx.interop.wise_ft.interpolate(zero_shot, fine_tuned, alpha), are
evaluated on the 'validation' split (retrieval R@1, zero-shot 'how many
circles'); the alpha with the best mean of the two is chosen there and only
it is reported on 'test_large'. The table goes to OUT/results.md (+ results.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runlib  # noqa: E402

KEYS = ("i2t_r1", "t2i_r1", "zero_shot/top1")


def _config(args, steps, **init):
  from mmtx.configs import clip
  arg = f"steps={steps}" + (f",init={args.init}" if args.init else
                            f",width={args.width}")
  cfg = clip.get_config(arg)
  with cfg.unlocked():
    cfg.seed = 0
    cfg.eval_every = steps
    cfg.checkpoint_every = steps
    cfg.log_every = max(steps // 10, 1)
    cfg.mesh.cpu_devices = args.cpu_devices
    cfg.optimizer.warmup_steps = min(cfg.optimizer.warmup_steps, steps // 10)
    cfg.init_from.update(init)
    cfg.data.eval_splits = ("validation",)   # alpha is chosen here
  if args.quick:
    runlib.shrink_for_quick(cfg)
  return cfg


def _params(workdir):
  from mmtx import checkpoint
  ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                               async_save=False)
  params = ck.restore_params()["params"]
  ck.close()
  return params


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  runlib.add_common_args(parser, "runs/wise_ft")
  parser.add_argument("--init", default="",
                      help="zero-shot weights (configs/clip.py:init=); "
                           "default: train them on Sort-of-CLEVR captions")
  parser.add_argument("--zero_shot_steps", type=int, default=3000)
  parser.add_argument("--finetune_steps", type=int, default=1000)
  parser.add_argument("--fraction", type=float, default=0.02,
                      help="the fine-tuning set: this fraction of 'train'")
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
  args = parser.parse_args()
  if args.quick:
    args.zero_shot_steps, args.finetune_steps, args.alphas = 4, 4, "0,0.5,1"
    args.width = 32
  os.makedirs(args.out, exist_ok=True)

  import flax.linen as nn
  import jax
  import numpy as np
  from mmtx import sharding, tasks, train
  from mmtx.interop import wise_ft

  if args.init:
    zs_cfg = _config(args, 1)
    task = tasks.build_task(zs_cfg)
    batch = task.init_batch()
    shapes = jax.eval_shape(lambda: nn.meta.unbox(task.init_variables(
        jax.random.key(0), batch)["params"]))
    fresh = jax.tree_util.tree_map(
        lambda s: jax.device_put(np.zeros(s.shape, s.dtype)), shapes)
    theta0 = train.load_transfer_params(zs_cfg, fresh, task)[0]
    ft_init = {"weights": args.init}
  else:
    zs_dir = os.path.join(args.out, "zero_shot")
    runlib.train_run(_config(args, args.zero_shot_steps), zs_dir)
    theta0 = _params(zs_dir)
    ft_init = {"workdir": zs_dir}
  ft_cfg = _config(args, args.finetune_steps, **ft_init)
  with ft_cfg.unlocked():
    ft_cfg.data.train_fraction = args.fraction
    ft_cfg.optimizer.learning_rate = args.learning_rate
  ft_dir = os.path.join(args.out, "fine_tuned")
  runlib.train_run(ft_cfg, ft_dir)
  theta1 = _params(ft_dir)

  task = tasks.build_task(ft_cfg)
  mesh = sharding.make_mesh(**ft_cfg.mesh)
  rows = []
  for alpha in (float(a) for a in args.alphas.split(",")):
    params = jax.device_put(wise_ft.interpolate(theta0, theta1, alpha),
                            sharding.replicated(mesh))
    metrics, _ = task.evaluate(params, mesh)
    rows.append({"alpha": alpha, "metrics": {k: metrics.get(k)
                                             for k in KEYS}})
    print(f"alpha={alpha}: {rows[-1]['metrics']}", flush=True)
  score = lambda r: np.mean([r["metrics"][k] for k in  # noqa: E731
                             ("t2i_r1", "zero_shot/top1")
                             if r["metrics"][k] is not None])
  best = max(rows, key=score)
  with ft_cfg.unlocked():
    ft_cfg.data.eval_splits = ("test_large",)
  test, _ = task.evaluate(jax.device_put(
      wise_ft.interpolate(theta0, theta1, best["alpha"]),
      sharding.replicated(mesh)), mesh)

  source = args.init or (f"configs/clip.py:width={args.width} trained "
                         f"{args.zero_shot_steps} steps on "
                         f"{ft_cfg.data.name} captions")
  cell = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
  table = runlib.markdown_table(
      ["alpha", "i2t R@1", "t2i R@1", "zero-shot top-1"],
      [[r["alpha"]] + [cell(r["metrics"][k]) for k in KEYS] for r in rows])
  md = "\n".join([
      f"## WiSE-FT on {ft_cfg.data.name}", "",
      f"Zero-shot weights (alpha 0): {source}. Fine-tuned (alpha 1): "
      f"{args.finetune_steps} steps on {100 * args.fraction:g}% of 'train' "
      f"at learning rate {args.learning_rate}. Split 'validation' "
      f"(chooses alpha):", "", table, "",
      f"Chosen alpha {best['alpha']} on 'test_large' (reported once): "
      + ", ".join(f"{k} {cell(test.get(k))}" for k in KEYS) + ".", "",
      f"Machine: {runlib.machine()}. Command: python experiments/wise_ft.py "
      + " ".join(sys.argv[1:]), ""])
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(md)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"rows": rows, "chosen_alpha": best["alpha"],
               "test_large": {k: test.get(k) for k in KEYS}}, f, indent=1,
              default=float)
  print(md)


if __name__ == "__main__":
  main()
