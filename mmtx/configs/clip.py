"""CLIP / SigLIP: a DualEncoder on image-caption pairs (Sort-of-CLEVR captions
by default), evaluated by image <-> text retrieval and zero-shot
classification.

  python -m mmtx.main --config=configs/clip.py
  python -m mmtx.main --config=configs/clip.py:loss=sigmoid     # SigLIP
  python -m mmtx.main --config=configs/clip.py:preset=siglip-B/16-224 \\
      --config.data.name=my_pairs                       # published size
  python -m mmtx.main --config=configs/clip.py:init=DIR,lit=1   # fine-tune

Args: loss=softmax|sigmoid, width (both towers), steps; preset, a published
architecture (mmtx.interop.presets: clip-B/32, clip-B/16, clip-L/14,
siglip-B/16-224, siglip-So400m/14-224; for an init= file also an open_clip
model config .json); init, weights to start from (a Hugging Face
save_pretrained directory or hub name, or with preset an open_clip .pt /
.safetensors file; mmtx.interop.weights), which also set the
model, tokenizer, image normalisation and text length; lit=1, locked-image
tuning (the image tower and its projection frozen, Zhai et al. 2022).
"""
import ml_collections
from ml_collections import config_dict

from mmtx.configs import common

# The image tower and its projection: what lit=1 freezes.
LIT_FREEZE = ("^img/", "^img_head/")


def _model(width: int, loss: str) -> dict:
  """A small DualEncoder for Sort-of-CLEVR's 75x75 images."""
  tower = dict(width=width, depth=2, mlp_dim=2 * width, num_heads=4,
               dtype="float32", activation="gelu", layer_norm_eps=1e-6)
  return dict(
      image=dict(patch_size=15, posemb="learned", pool="gap",
                 cls_posemb=False, patch_bias=True, ln_pre=False, **tower),
      text=dict(vocab_size=-1, max_len=50, causal=True, pool="last",
                mask_padding=True, eos_id=config_dict.placeholder(int),
                **tower),
      embed_dim=width, loss=loss, img_head="linear", txt_head="linear",
      logit_scale_init=1 / 0.07 if loss == "softmax" else 10.0,
      logit_bias_init=-10.0, max_logit_scale=100.0)


def _full(model: dict) -> dict:
  """A preset's or an import's model config with every key the CLI can
  set (DualEncoder's defaults where the source leaves one out)."""
  loss = model["loss"]
  out = _model(model["embed_dim"], loss)
  for key in ("image", "text"):
    out[key].update(model[key])
  out.update({k: v for k, v in model.items() if k not in ("image", "text")})
  return out


def get_config(arg: str = ""):
  args = common.parse_args(arg, "configs/clip.py", steps=6000, width=128,
                           loss="softmax", preset="", init="", lit=0)
  loss = args["loss"]
  if loss not in ("softmax", "sigmoid"):
    raise ValueError(f"configs/clip.py: loss must be 'softmax' or 'sigmoid', "
                     f"got {loss!r}.")
  c = common.base(task="contrastive", total_steps=args["steps"],
                  batch_size=128, log_every=50, eval_every=2000,
                  checkpoint_every=1000, best_metric="t2i_r1")
  # Captions of Sort-of-CLEVR are at most 48 words: 50 tokens keeps them all.
  c.data = common.data("sort_of_clevr", eval_splits=("test",), max_len=50)
  # Zero-shot classification in every eval (mmtx.tasks.contrastive): label,
  # the record field of each image's class id, a dotted path ('label.0': the
  # first class of data ingested with --label_column or of a catalog dataset
  # with Fields(label=...); 'objects.shape.0'; '' = Sort-of-CLEVR's circle
  # count); classes, their names (empty: the ingested data's own, for
  # 'label.0'); templates, the prompts ('{}' = a class name), ensembled.
  c.zero_shot = ml_collections.ConfigDict(dict(
      label="", classes=(), templates=("a photo of a {}.",)))
  model = _model(args["width"], loss)
  if args["preset"] or args["init"]:
    named = {item.partition("=")[0] for item in arg.split(",")}
    given = [k for k in ("loss", "width") if k in named]
    if given:
      raise ValueError(f"configs/clip.py: {given} cannot be combined with "
                       f"preset= or init=, which set the model.")
    model = common.published_model(c, args, _full, captioner=False,
                                   where="configs/clip.py")
  c.model = ml_collections.ConfigDict(model)
  if args["lit"]:
    c.optimizer.freeze = LIT_FREEZE
  c.optimizer.learning_rate = 5e-4
  c.optimizer.weight_decay = 0.1
  c.optimizer.warmup_steps = 200
  return c
