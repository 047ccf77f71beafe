"""DualEncoder configs at the published sizes of the checkpoints people start
from, laid out as the source stores them, so `from_transformers` /
`from_open_clip` weights load into them one for one.

    model_config, image_size = preset('clip-B/32')

Names: clip-B/32, clip-B/16, clip-L/14 (OpenAI CLIP / open_clip 'ViT-B-32',
'ViT-B-16', 'ViT-L-14'), siglip-B/16-224 (google/siglip-base-patch16-224,
open_clip 'ViT-B-16-SigLIP'), siglip-So400m/14-224 (open_clip
'ViT-SO400M-14-SigLIP'); `captioner_preset`: coca-B/32, coca-L/14 (open_clip
'coca_ViT-B-32', 'coca_ViT-L-14') for `mmtx.models.Captioner`. The parameter
counts equal the sources' exactly (tests/test_interop_presets.py).
"""
from __future__ import annotations

import ml_collections


def _clip(vision: tuple, patch: int, text: tuple, embed_dim: int) -> dict:
  (vw, vd, vm, vh), (tw, td, tm, th) = vision, text
  tower = {"activation": "quick_gelu", "layer_norm_eps": 1e-5}
  return {
      "loss": "softmax", "embed_dim": embed_dim,
      "image": {"patch_size": patch, "width": vw, "depth": vd, "mlp_dim": vm,
                "num_heads": vh, "posemb": "learned", "pool": "cls",
                "cls_posemb": True, "patch_bias": False, "ln_pre": True,
                **tower},
      "text": {"vocab_size": 49408, "width": tw, "depth": td, "mlp_dim": tm,
               "num_heads": th, "max_len": 77, "causal": True,
               "mask_padding": False, "pool": "argmax", **tower},
  }


def _siglip(dims: tuple, patch: int, max_len: int) -> dict:
  width, depth, mlp_dim, heads = dims
  tower = {"width": width, "depth": depth, "mlp_dim": mlp_dim,
           "num_heads": heads, "activation": "gelu_tanh",
           "layer_norm_eps": 1e-6}
  return {
      "loss": "sigmoid", "embed_dim": width, "img_head": "none",
      "txt_head": "linear_bias", "logit_scale_init": 10.0,
      "logit_bias_init": -10.0,
      "image": {"patch_size": patch, "posemb": "learned", "pool": "map",
                "patch_bias": True, "ln_pre": False, **tower},
      "text": {"vocab_size": 32000, "max_len": max_len, "causal": False,
               "mask_padding": False, "pool": "last", **tower},
  }


def _coca(vision: tuple, patch: int, text: tuple, embed_dim: int) -> dict:
  """open_clip's CoCa layout (see `open_clip_coca`), 256 pool queries."""
  (vw, vd, vm, vh), (tw, td, tm, th) = vision, text
  tower = {"activation": "gelu", "layer_norm_eps": 1e-5}
  return {
      "image": {"patch_size": patch, "width": vw, "depth": vd, "mlp_dim": vm,
                "num_heads": vh, "posemb": "learned", "cls_posemb": True,
                "patch_bias": False, "ln_pre": True, **tower},
      "text": {"vocab_size": 49408, "width": tw, "depth": td, "mlp_dim": tm,
               "num_heads": th, "max_len": 76, "cls_position": True,
               "cls_mask": "shifted", **tower},
      "decoder_depth": td, "embed_dim": embed_dim, "pool": "shared",
      "num_queries": 255, "class_token": True, "pool_dim": embed_dim,
      "pool_heads": 8, "pool_query_norm": True, "tie_embeddings": False,
      "head_bias": False, "decoder_layer": "split",
  }


_B, _L, _M = (768, 12, 3072, 12), (1024, 24, 4096, 16), (512, 12, 2048, 8)
_SO400M = (1152, 27, 4304, 16)

# name -> (DualEncoder config, image size)
PRESETS = {
    "clip-B/32": (_clip(_B, 32, _M, 512), 224),
    "clip-B/16": (_clip(_B, 16, _M, 512), 224),
    "clip-L/14": (_clip(_L, 14, _B, 768), 224),
    "siglip-B/16-224": (_siglip(_B, 16, 64), 224),
    "siglip-So400m/14-224": (_siglip(_SO400M, 14, 16), 224),
}


# name -> (Captioner config, image size)
CAPTIONER_PRESETS = {
    "coca-B/32": (_coca(_B, 32, _M, 512), 224),
    "coca-L/14": (_coca(_L, 14, _B, 768), 224),
}


def captioner_preset(name: str) -> tuple[ml_collections.ConfigDict, int]:
  """(Captioner config, image size) of a published CoCa."""
  if name not in CAPTIONER_PRESETS:
    raise ValueError(f"captioner preset {name!r} is not one of "
                     f"{sorted(CAPTIONER_PRESETS)}.")
  config, image_size = CAPTIONER_PRESETS[name]
  return ml_collections.ConfigDict(config), image_size


def preset(name: str) -> tuple[ml_collections.ConfigDict, int]:
  """(DualEncoder config, image size) of a published model."""
  if name not in PRESETS:
    raise ValueError(f"preset {name!r} is not one of {sorted(PRESETS)}.")
  config, image_size = PRESETS[name]
  return ml_collections.ConfigDict(config), image_size
