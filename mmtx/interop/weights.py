"""Released weights by name or path -> (config, params) for
`mmtx.models.DualEncoder`, and the data settings that model expects: what
`configs/clip.py:init=...` starts a run from.

    config, params = load('/path/to/save_pretrained_dir')    # CLIP or SigLIP
    config, params = load('openai/clip-vit-base-patch32')    # hub, if online
    config, params = load('/path/open_clip.pt', preset='clip-B/32')

A directory or hub name is read by transformers (its config.json's
model_type, 'clip' or 'siglip', picks the converter); a file is an open_clip
checkpoint of the `preset`'s architecture.
"""
from __future__ import annotations

import functools
import os

from mmtx.interop import hf_clip, hf_siglip, mapping, open_clip

# preset name -> open_clip model name.
OPEN_CLIP_NAMES = {
    "clip-B/32": "ViT-B-32", "clip-B/16": "ViT-B-16", "clip-L/14": "ViT-L-14",
    "siglip-B/16-224": "ViT-B-16-SigLIP",
    "siglip-So400m/14-224": "ViT-SO400M-14-SigLIP",
}
_HF = {"clip": hf_clip, "siglip": hf_siglip}


@functools.lru_cache(maxsize=1)
def load(spec: str, preset: str = ""):
  """(config, params) of the weights `spec` names (see the module
  docstring). The last result is kept, so a config file and the trainer
  that both ask for it convert it once; `load.cache_clear()` frees it."""
  if os.path.isfile(spec):
    if preset not in OPEN_CLIP_NAMES:
      raise ValueError(
          f"init={spec}: an open_clip checkpoint file needs preset= naming "
          f"its architecture, one of {sorted(OPEN_CLIP_NAMES)} (got "
          f"{preset!r}); a Hugging Face model is a save_pretrained "
          f"directory.")
    return open_clip.load(OPEN_CLIP_NAMES[preset], pretrained=spec)
  if preset:
    raise ValueError(f"init={spec}: preset= names the architecture of an "
                     f"open_clip checkpoint file; a Hugging Face directory or "
                     f"hub name carries its own config (drop preset=).")
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    kind = transformers.AutoConfig.from_pretrained(spec).model_type
  except (OSError, ValueError) as e:
    raise ValueError(f"init={spec}: not an open_clip checkpoint file, nor a "
                     f"Hugging Face directory or hub name transformers can "
                     f"read ({type(e).__name__}: {e}).") from None
  if kind not in _HF:
    raise ValueError(f"init={spec}: a transformers {kind!r} model; mmtx "
                     f"imports {sorted(_HF)} (and open_clip files).")
  return _HF[kind].load(spec)


def data_settings(model_config, params=None, spec: str = "") -> dict:
  """config.data fields the model reads its inputs with: the tokenizer it
  was trained with ('clip', or 'siglip:spiece.model' when the directory
  `spec` holds one; '' = set it yourself), the image normalisation, the
  text length and, given its `params`, the image size its position table
  was made for."""
  sigmoid = model_config["loss"] == "sigmoid"
  tokenizer = "clip"
  if sigmoid:
    spm = os.path.join(spec, "spiece.model") if spec else ""
    tokenizer = f"siglip:{spm}" if spm and os.path.isfile(spm) else ""
  out = {"tokenizer": tokenizer,
         "normalize": "minus_one_one" if sigmoid else "clip",
         "max_len": model_config["text"]["max_len"]}
  if params is not None:
    img = model_config["image"]
    out["image_size"] = hf_clip.image_size(
        mapping.flat_params(params), img["patch_size"], "init",
        int(img.get("cls_posemb", False)))
  return out
