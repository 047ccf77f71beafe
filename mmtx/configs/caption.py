"""CoCa captioning: a Captioner on Sort-of-CLEVR captions (a small one by
default), evaluated by BLEU-1..4 / CIDEr-D of decoded captions (all
references) and retrieval.

  python -m mmtx.main --config=configs/caption.py
  python -m mmtx.main --config=configs/caption.py:decode=beam,width=64
  python -m mmtx.main --config=configs/caption.py:preset=coca-B/32,init=FILE

Args: decode=greedy|beam, width (image tower and decoder), steps; preset,
a published architecture (mmtx.interop.presets: coca-B/32, coca-L/14; for an
init= file also an open_clip model config .json); init, an open_clip CoCa
checkpoint (.pt / .safetensors) of that architecture to start from
(mmtx.interop.weights), which also sets the tokenizer (CLIP's BPE), image
normalisation, image size and text length.
"""
import ml_collections

from mmtx.configs import common


def _model(width: int) -> dict:
  """A small Captioner for Sort-of-CLEVR's 75x75 images."""
  return dict(
      image=dict(patch_size=15, width=width, depth=2, mlp_dim=2 * width,
                 num_heads=4, posemb="learned", dtype="float32"),
      text=dict(vocab_size=-1, width=width, depth=1, mlp_dim=2 * width,
                num_heads=4, max_len=50, dropout_rate=0.0, dtype="float32"),
      decoder_depth=2, embed_dim=width, pool="attention", num_queries=0,
      tie_embeddings=True)


def _full(model: dict) -> dict:
  """A preset's or an import's model config with every key the CLI can
  set (the small model's where the source leaves one out)."""
  out = _model(model["embed_dim"])
  for key in ("image", "text"):
    out[key].update(model[key])
  out.update({k: v for k, v in model.items() if k not in ("image", "text")})
  return out


def get_config(arg: str = ""):
  args = common.parse_args(arg, "configs/caption.py", steps=6000,
                           width=128, decode="greedy", preset="", init="")
  c = common.base(task="caption", total_steps=args["steps"],
                  batch_size=64, log_every=50, eval_every=2000,
                  checkpoint_every=1000, best_metric="cider")
  # Captions of Sort-of-CLEVR are at most 48 words: 50 tokens keeps them all.
  c.data = common.data("sort_of_clevr", eval_splits=("test",), max_len=50,
                       eval_batch_size=100)
  model = _model(args["width"])
  if args["preset"] or args["init"]:
    if "width" in {item.partition("=")[0] for item in arg.split(",")}:
      raise ValueError("configs/caption.py: width cannot be combined with "
                       "preset= or init=, which set the model.")
    model = common.published_model(c, args, _full, captioner=True,
                                   where="configs/caption.py")
  c.model = ml_collections.ConfigDict(model)
  # CoCa's Eq. 4 weights (lambda_cap = 2 lambda_con) and label smoothing.
  c.loss = ml_collections.ConfigDict(dict(lambda_con=1.0, lambda_cap=2.0,
                                          label_smoothing=0.1))
  c.decode = ml_collections.ConfigDict(dict(
      method=args["decode"], beam_size=4, alpha=0.6))
  c.optimizer.learning_rate = 5e-4
  c.optimizer.warmup_steps = 200
  return c
