"""CLIP (Radford et al. 2021) / SigLIP (Zhai et al. 2023) two-tower model."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtx.models.config import (DualEncoderConfig, check_images_texts,
                                l2_normalize, logit_scale, parse)
from mmtx.models.towers import TextTransformer, ViT

Array = jax.Array


def _head(kind, embed_dim, name, x):
  """The projection `kind` names: `[batch, width] -> [batch, embed_dim]`."""
  if kind == "none":
    if x.shape[-1] != embed_dim:
      raise ValueError(f"DualEncoder: config.{name}='none' needs the tower's "
                       f"width ({x.shape[-1]}) to equal embed_dim "
                       f"({embed_dim}).")
    return x
  return nn.Dense(embed_dim, use_bias=kind == "linear_bias", name=name,
                  kernel_init=nn.with_logical_partitioning(
                      nn.initializers.lecun_normal(), ("embed", "mlp")),
                  bias_init=nn.with_logical_partitioning(
                      nn.initializers.zeros_init(), ("mlp",)))(x)


class DualEncoder(nn.Module):
  """`apply(..., images, texts) -> (img_emb, txt_emb, extras)`.

  Embeddings `[batch, embed_dim]` are L2-normalised. extras['logit_scale'] is
  the (exponentiated) multiplier, init 1/0.07 (CLIP) or 10 (SigLIP), clamped to
  at most `max_logit_scale`; extras['logit_bias'] is SigLIP's bias (init -10;
  0 for the softmax loss). Config keys: image (ViT fields), text
  (TextTransformer fields incl. vocab_size), embed_dim, loss
  ('softmax'|'sigmoid'), and optional logit_scale_init, logit_bias_init,
  max_logit_scale, img_head / txt_head: the projection to embed_dim
  (see `mmtx.models.config.DualEncoderConfig`).
  """
  config: Mapping[str, Any]

  @nn.compact
  def __call__(self, images: Array, texts: Array, *,
               deterministic: bool = True):
    cfg = parse(DualEncoderConfig, self.config)
    check_images_texts(images, texts, "DualEncoder",
                       cfg.text.get("vocab_size"))
    img_out, img_extras = ViT(**cfg.image, name="img")(
        images, deterministic=deterministic)
    txt_out, txt_extras = TextTransformer(**cfg.text, name="txt")(
        texts, deterministic=deterministic)
    img_emb = l2_normalize(_head(cfg.img_head, cfg.embed_dim, "img_head",
                                 img_out))
    txt_emb = l2_normalize(_head(cfg.txt_head, cfg.embed_dim, "txt_head",
                                 txt_out))
    scale = logit_scale(self, cfg.scale_init, cfg.max_logit_scale)
    if cfg.loss == "sigmoid":
      logit_bias = self.param("logit_bias", nn.initializers.constant(
          cfg.logit_bias_init), (), jnp.float32)
    else:
      logit_bias = jnp.zeros((), jnp.float32)
    extras = {"logit_scale": scale, "logit_bias": logit_bias,
              "img": img_extras, "txt": txt_extras}
    return img_emb, txt_emb, extras
