"""The default main job: a small cross-attention VQA model (text queries image
patches, ALBEF-style fusion) on the built-in Sort-of-CLEVR data.

  python -m mmtx.main                       # this config, workdir runs/default
  python -m mmtx.main --config=configs/default.py:fusion=co_attention
"""
import ml_collections

from configs import common


def get_config(arg: str = ""):
  args = dict(a.split("=", 1) for a in arg.split(",") if a)
  c = common.base(task="vqa", total_steps=int(args.get("steps", 4000)),
                  batch_size=64, log_every=50, eval_every=2000,
                  checkpoint_every=1000)
  c.data = common.data("sort_of_clevr", eval_splits=("test",), max_len=24)
  width = int(args.get("width", 64))
  c.model = ml_collections.ConfigDict(dict(
      # 5x5 patches (each object covers ~4 pure-colour patches) with fixed
      # 2-D sin-cos positions, and no image self-attention: the question's
      # tokens find objects by colour and compare their positions through
      # the cross-attention layers (sin-cos dot products fall with distance).
      image=dict(patch_size=int(args.get("patch", 5)), width=width,
                 depth=int(args.get("image_depth", 0)), mlp_dim=2 * width,
                 num_heads=4, posemb="sincos2d", dtype="float32"),
      text=dict(vocab_size=-1, width=width, depth=1, mlp_dim=2 * width,
                num_heads=4, max_len=24, causal=False, dtype="float32"),
      fusion=dict(name=args.get("fusion", "cross_attention"), target="text",
                  dim=width, num_heads=4,
                  num_layers=int(args.get("fusion_layers", 2)),
                  mlp_dim=2 * width),
      heads=("vqa",), num_answers=-1, head_hidden=256, head_dropout=0.0,
      zero_image=False))
  c.optimizer.learning_rate = float(args.get("lr", 2e-3))
  c.optimizer.warmup_steps = 200
  return c
