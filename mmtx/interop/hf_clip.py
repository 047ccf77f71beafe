"""Hugging Face `CLIPModel` (PyTorch) -> `mmtx.models.DualEncoder`.

    config, params = from_transformers(hf_model)
    img_emb, txt_emb, extras = DualEncoder(config).apply({'params': params},
                                                         images, texts)

Images are NHWC (HF takes NCHW `pixel_values`); texts use 0 as padding, so
token id 0 of the HF vocabulary must not appear in real text (in released
CLIP vocabularies it is '!'; shift or re-tokenise if you need it). HF adds the
position embedding to the class token too: here the class token is stored
with its position folded in (cls + pos[0]), which is the same function.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np


def _np(t) -> np.ndarray:
  return t.detach().cpu().float().numpy()


def _attention(attn, heads: int) -> dict[str, Any]:
  d = attn.q_proj.weight.shape[1]
  hd = attn.q_proj.weight.shape[0] // heads

  def proj(lin):
    return {"kernel": _np(lin.weight).T.reshape(d, heads, hd),
            "bias": _np(lin.bias).reshape(heads, hd)}
  return {"query": proj(attn.q_proj), "key": proj(attn.k_proj),
          "value": proj(attn.v_proj),
          "out": {"kernel": _np(attn.out_proj.weight).T.reshape(heads, hd, -1),
                  "bias": _np(attn.out_proj.bias)}}


def _ln(ln):
  return {"scale": _np(ln.weight), "bias": _np(ln.bias)}


def _encoder(enc, final_ln, heads: int) -> dict[str, Any]:
  out = {}
  for i, layer in enumerate(enc.layers):
    out[f"layers_{i}"] = {
        "attention": _attention(layer.self_attn, heads),
        "ln_attention": _ln(layer.layer_norm1),
        "ln_mlp": _ln(layer.layer_norm2),
        "mlp": {"wi": {"kernel": _np(layer.mlp.fc1.weight).T,
                       "bias": _np(layer.mlp.fc1.bias)},
                "wo": {"kernel": _np(layer.mlp.fc2.weight).T,
                       "bias": _np(layer.mlp.fc2.bias)}},
    }
  out["ln_final"] = _ln(final_ln)
  return out


def _activation(name: str) -> str:
  table = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
  if name not in table:
    raise ValueError(f"hf_clip: hidden_act {name!r} is not supported; known: "
                     f"{sorted(table)}.")
  return table[name]


def from_transformers(hf_model) -> tuple[ml_collections.ConfigDict, dict]:
  """Converts a `transformers.CLIPModel` into (config, params) for
  `mmtx.models.DualEncoder` (softmax loss, the HF logit_scale)."""
  vc, tc = hf_model.config.vision_config, hf_model.config.text_config
  if vc.image_size % vc.patch_size:
    raise ValueError(f"hf_clip: image_size {vc.image_size} is not divisible by "
                     f"patch_size {vc.patch_size}.")
  if getattr(tc, "eos_token_id", 2) != 2:
    pool = "last"  # HF pools the first EOS token; with 0-padding = last real
  else:
    pool = "argmax"  # legacy CLIP: EOT has the highest id
  config = ml_collections.ConfigDict({
      "loss": "softmax",
      "embed_dim": hf_model.config.projection_dim,
      "logit_scale_init": float(np.exp(_np(hf_model.logit_scale))),
      "max_logit_scale": 100.0,
      "image": {
          "patch_size": vc.patch_size, "width": vc.hidden_size,
          "depth": vc.num_hidden_layers, "mlp_dim": vc.intermediate_size,
          "num_heads": vc.num_attention_heads, "posemb": "learned",
          "pool": "cls", "patch_bias": False, "ln_pre": True,
          "activation": _activation(vc.hidden_act),
          "layer_norm_eps": vc.layer_norm_eps,
      },
      "text": {
          "vocab_size": tc.vocab_size, "width": tc.hidden_size,
          "depth": tc.num_hidden_layers, "mlp_dim": tc.intermediate_size,
          "num_heads": tc.num_attention_heads,
          "max_len": tc.max_position_embeddings, "causal": True,
          "pool": pool, "activation": _activation(tc.hidden_act),
          "layer_norm_eps": tc.layer_norm_eps,
      },
  })
  vm, tm = hf_model.vision_model, hf_model.text_model
  pos = _np(vm.embeddings.position_embedding.weight)
  img = {
      "embedding": {"conv": {"kernel": _np(
          vm.embeddings.patch_embedding.weight).transpose(2, 3, 1, 0)}},
      "posemb": {"pos_embedding": pos[1:]},
      "cls": (_np(vm.embeddings.class_embedding) + pos[0])[None, None],
      "ln_pre": _ln(vm.pre_layrnorm),
      "encoder": _encoder(vm.encoder, vm.post_layernorm,
                          vc.num_attention_heads),
  }
  txt = {
      "embedding": {"embedding": _np(tm.embeddings.token_embedding.weight)},
      "posemb": {"pos_embedding": _np(tm.embeddings.position_embedding.weight)},
      "encoder": _encoder(tm.encoder, tm.final_layer_norm,
                          tc.num_attention_heads),
  }
  params = {
      "img": img, "txt": txt,
      "img_head": {"kernel": _np(hf_model.visual_projection.weight).T},
      "txt_head": {"kernel": _np(hf_model.text_projection.weight).T},
      "logit_scale": np.asarray(_np(hf_model.logit_scale), np.float32),
  }
  return config, params
