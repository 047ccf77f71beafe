"""Where does the question look? Cross-attention maps of a trained VQA run,
overlaid on the images, as one PNG.

  ./run.sh python -m mmtx.main                                  # train first
  ./run.sh python experiments/attention_map.py --workdir=runs/default \
      --out=runs/default/attention.png

For each of `--num` test questions, the panel shows the image, and over it
the attention of the question's query (text_query='mean': the one question
vector; 'tokens': the mean over its real tokens) on the image tokens in the
chosen fusion layer, averaged over heads, upsampled to the image grid; the
title gives the question, the prediction and the true answer. The weights
are recomputed from the layer's own query/key projections (captured with
flax's capture_intermediates), so the script needs no change to the model.
Works for fusion 'cross_attention' with target 'text' (the default job).
"""
from __future__ import annotations

import argparse
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)


def load_config(path_and_arg: str):
  import importlib.util
  path, _, arg = path_and_arg.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def attention_maps(model, params, images, questions, layer):
  """(logits [B, A], weights [B, n_image_tokens]): the mean over heads (and
  over real query tokens) of the cross-attention of fusion layer `layer`."""
  import jax
  import jax.numpy as jnp
  (out, extras), state = model.apply(
      {"params": params}, images, questions,
      capture_intermediates=True, mutable=["intermediates"])
  inter = state["intermediates"]
  fusion = next(v for k, v in inter.items() if "Fusion" in k)
  key = f"layers_{layer}"
  if key not in fusion:
    raise ValueError(f"attention_map: the fusion has no layer {layer}; it has "
                     f"{sorted(k for k in fusion if k.startswith('layers_'))}.")
  attn = fusion[key].get("cross_attention")
  if attn is None or "query" not in attn:
    raise ValueError("attention_map: needs fusion 'cross_attention' (dot-"
                     "product scores) with target 'text'.")
  b = images.shape[0]   # projections run on [B*T, dim] rows
  q = attn["query"]["__call__"][0].reshape(b, -1, *attn["query"][
      "__call__"][0].shape[-2:])            # [B, Tq, H, hd]
  k = attn["key"]["__call__"][0].reshape(b, -1, *attn["key"][
      "__call__"][0].shape[-2:])            # [B, Tk, H, hd]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1])
  w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)   # no key padding
  qmask = extras["fused_mask"].astype(jnp.float32)           # [B, Tq]
  w = (w.mean(1) * qmask[..., None]).sum(1) / qmask.sum(1, keepdims=True)
  return out["vqa_logits"], w


def draw(cfg, workdir, *, split="test", num=8, start=0, every=1, layer=-1,
         out=""):
  """Draws the sheet for run `workdir` trained with config `cfg`; returns
  the PNG's path (default WORKDIR/attention.png)."""
  import numpy as np
  from PIL import Image, ImageDraw
  from mmtx import checkpoint, tasks

  ck_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ck_dir):
    raise SystemExit(f"attention_map: no checkpoints under {ck_dir}; train "
                     f"first (./run.sh python -m mmtx.main --workdir="
                     f"{workdir}).")
  ck = checkpoint.Checkpointer(ck_dir, async_save=False)
  params = ck.restore_params()["params"]
  ck.close()
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.eval_batch_size = start + every * (num - 1) + 1
  task = tasks.build_task(cfg)
  model = task.model
  it, info = task.eval_iterator(split)
  batch = next(it)
  pick = start + every * np.arange(num)
  images, questions = batch["image"][pick], batch["question"][pick]
  layer = layer if layer >= 0 else cfg.model.fusion.num_layers - 1
  logits, w = attention_maps(model, params, images, questions, layer)
  pred = np.asarray(logits).argmax(-1)
  w = np.asarray(w)
  n_tok = w.shape[-1]
  g = int(round(n_tok ** 0.5))
  if g * g != n_tok:
    raise ValueError(f"attention_map: {n_tok} image tokens are not a square "
                     f"grid (a class token?); only square grids are drawn.")
  scale, pad = 4, 44
  h, wd = images.shape[1] * scale, images.shape[2] * scale
  sheet = Image.new("RGB", (num * (wd + 8), h + pad), "white")
  pen = ImageDraw.Draw(sheet)
  for i in range(num):
    img = ((images[i] + 1) * 127.5).clip(0, 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(img).resize((wd, h), Image.NEAREST),
                     np.float32)
    heat = w[i].reshape(g, g) / max(w[i].max(), 1e-9)
    heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(
        (wd, h), Image.BILINEAR), np.float32)[..., None] / 255.0
    red = np.array([255.0, 0.0, 0.0])
    over = img * (1 - 0.6 * heat) + red * 0.6 * heat
    x0 = i * (wd + 8)
    sheet.paste(Image.fromarray(over.clip(0, 255).astype(np.uint8)), (x0, pad))
    q = info.tokenizer.decode(questions[i])
    true = batch["answer"][pick[i]]
    ok = "ok" if pred[i] == true else "WRONG"
    for j in range(0, len(q), 40):
      pen.text((x0 + 2, 2 + 10 * (j // 40)), q[j:j + 40], fill="black")
    pen.text((x0 + 2, pad - 12), f"pred {info.answers[pred[i]]} / true "
             f"{info.answers[true]} ({ok})", fill="black")
  out = out or os.path.join(workdir, "attention.png")
  sheet.save(out)
  print(f"attention_map: wrote {out} ({num} questions of {info.name} {split},"
        f" fusion layer {layer}, {g}x{g} tokens)")
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/default")
  p.add_argument("--config", default=os.path.join(_REPO, "configs",
                                                  "default.py"),
                 help="the run's config file[:args], as given to mmtx.main")
  p.add_argument("--split", default="test")
  p.add_argument("--num", type=int, default=8)
  p.add_argument("--start", type=int, default=0,
                 help="first question index of the split")
  p.add_argument("--every", type=int, default=1,
                 help="take every k-th question (e.g. 37: other images and "
                      "question types)")
  p.add_argument("--layer", type=int, default=-1,
                 help="fusion layer (-1 = last)")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  return draw(load_config(args.config), args.workdir, split=args.split,
              num=args.num, start=args.start, every=args.every,
              layer=args.layer, out=args.out)


if __name__ == "__main__":
  main()
