"""ALBEF-style image-text pretraining (ITC + ITM with hard negatives + MLM)
of a cross-attention FusionModel on Sort-of-CLEVR captions. Fine-tune it on
VQA with configs/finetune_vqa.py:pretrained=WORKDIR.

  python -m mmtx.main --config=configs/pretrain.py --workdir=runs/pretrain

Args: width (towers and fusion), steps, tower=vit|conv (the image tower:
'vit' a ViT on 15-pixel patches with learned positions; 'conv' the default
VQA job's conv stem with sin-cos positions, `common.image_tower`).
"""
import ml_collections

from mmtx.configs import common

# Captions of Sort-of-CLEVR are at most 48 words: 50 tokens keeps them all.
MAX_LEN = 50


TOWERS = ("vit", "conv")


def model(width: int, heads, tower: str = "vit") -> ml_collections.ConfigDict:
  """The FusionModel shared by pretraining and fine-tuning (same param
  paths and shapes, so the towers and the fusion transfer as they are)."""
  if tower not in TOWERS:
    raise ValueError(f"tower={tower!r}: expected one of {TOWERS}.")
  image = (dict(patch_size=15, width=width, depth=2, mlp_dim=2 * width,
                num_heads=4, posemb="learned", dtype="float32")
           if tower == "vit" else common.image_tower(width))
  m = dict(
      image=image,
      text=dict(vocab_size=-1, width=width, depth=2, mlp_dim=2 * width,
                num_heads=4, max_len=MAX_LEN, causal=False, dtype="float32"),
      fusion=dict(name="cross_attention", target="text", dim=width,
                  num_heads=4, num_layers=2, mlp_dim=2 * width),
      heads=tuple(heads), zero_image=False)
  # Only the fields that the heads read (no dead flags).
  if "vqa" in heads:
    m.update(num_answers=-1, head_hidden=256, head_dropout=0.0)
  if "contrastive" in heads:
    m.update(embed_dim=width)
  return ml_collections.ConfigDict(m)


def get_config(arg: str = ""):
  args = common.parse_args(arg, "configs/pretrain.py", steps=6000, width=128,
                           tower="vit")
  c = common.base(task="pretrain", total_steps=args["steps"],
                  batch_size=64, log_every=50, eval_every=2000,
                  checkpoint_every=1000, best_metric="t2i_r1")
  c.data = common.data("sort_of_clevr", eval_splits=("test",),
                       max_len=MAX_LEN, eval_batch_size=100)
  c.model = model(args["width"], ("contrastive", "itm", "mlm"),
                  args["tower"])
  # ALBEF weighs the three objectives equally; BERT masks 15% of tokens.
  # itm_random_negatives: the share of ITM negatives drawn uniformly instead
  # of from the ITC similarities (ALBEF: 0, all hard; why 0.5:
  # experiments/results/README.md, "Why ITM sat at its prior").
  c.loss = ml_collections.ConfigDict(dict(weight_itc=1.0, weight_itm=1.0,
                                          weight_mlm=1.0, mask_prob=0.15,
                                          itm_random_negatives=0.5))
  c.optimizer.learning_rate = 5e-4
  c.optimizer.warmup_steps = 200
  return c
