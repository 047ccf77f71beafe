"""CLIP (Radford et al. 2021) / SigLIP (Zhai et al. 2023) two-tower model."""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmtx.models.towers import TextTransformer, ViT

Array = jax.Array


def _as_dict(cfg) -> dict[str, Any]:
  if isinstance(cfg, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return cfg.to_dict()
  return dict(cfg)


def check_images(images, who):
  """NHWC float images; uint8 pixels are an error, not silently 0..255."""
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"{who}: images must be NHWC float32 [batch, height, "
                     f"width, channels] in [-1, 1], got shape {images.shape} "
                     f"dtype {images.dtype}. uint8 pixels p become "
                     f"p / 127.5 - 1, as mmtx.data gives them "
                     f"(mmtx.data.views.normalize_image).")


def check_token_ids(texts, vocab_size, who):
  """Token ids must be in [0, vocab_size): a larger one embeds as NaN and a
  negative one as another token's row. Checked here when the values are
  known (a call outside jit); under jit TokenEmbedding makes both NaN, which
  the trainer stops on."""
  if vocab_size is None or isinstance(texts, jax.core.Tracer):
    return
  ids = np.asarray(texts)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    bad = int(((ids < 0) | (ids >= vocab_size)).sum())
    raise ValueError(f"{who}: token ids must be in [0, vocab_size="
                     f"{vocab_size}) (0 = padding), got {bad} outside it "
                     f"(min {ids.min()}, max {ids.max()}). Encode the texts "
                     f"with the tokenizer the model was built for.")


def check_images_texts(images, texts, who, vocab_size=None):
  check_images(images, who)
  if texts.ndim != 2 or not jnp.issubdtype(texts.dtype, jnp.integer):
    raise ValueError(f"{who}: texts must be int32 token ids [batch, len] with "
                     f"0 as padding, got shape {texts.shape}, dtype "
                     f"{texts.dtype}.")
  if images.shape[0] != texts.shape[0]:
    raise ValueError(f"{who}: images batch {images.shape[0]} != texts batch "
                     f"{texts.shape[0]}.")
  check_token_ids(texts, vocab_size, who)


HEADS = ("linear", "linear_bias", "none")


def _head(cfg, name, x):
  """The projection `config[name]` names: `[batch, width] -> [batch,
  embed_dim]`."""
  kind = cfg.get(name, "linear")
  if kind not in HEADS:
    raise ValueError(f"DualEncoder: config.{name} must be one of {HEADS}, got "
                     f"{kind!r}.")
  if kind == "none":
    if x.shape[-1] != cfg["embed_dim"]:
      raise ValueError(f"DualEncoder: config.{name}='none' needs the tower's "
                       f"width ({x.shape[-1]}) to equal embed_dim "
                       f"({cfg['embed_dim']}).")
    return x
  return nn.Dense(cfg["embed_dim"], use_bias=kind == "linear_bias", name=name,
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
  max_logit_scale, img_head / txt_head: the projection to embed_dim,
  'linear' (default, no bias: CLIP), 'linear_bias' (SigLIP's text head) or
  'none' (the tower's width is embed_dim: SigLIP's image tower).
  """
  config: Mapping[str, Any]

  @nn.compact
  def __call__(self, images: Array, texts: Array, *,
               deterministic: bool = True):
    cfg = _as_dict(self.config)
    loss = cfg.get("loss", "softmax")
    if loss not in ("softmax", "sigmoid"):
      raise ValueError(f"DualEncoder: config.loss must be 'softmax' or "
                       f"'sigmoid', got {loss!r}.")
    check_images_texts(images, texts, "DualEncoder",
                       _as_dict(cfg["text"]).get("vocab_size"))
    img_out, img_extras = ViT(**_as_dict(cfg["image"]), name="img")(
        images, deterministic=deterministic)
    txt_out, txt_extras = TextTransformer(**_as_dict(cfg["text"]), name="txt")(
        texts, deterministic=deterministic)
    img_emb = _head(cfg, "img_head", img_out).astype(jnp.float32)
    txt_emb = _head(cfg, "txt_head", txt_out).astype(jnp.float32)
    img_emb = img_emb / jnp.linalg.norm(img_emb, axis=-1, keepdims=True).clip(1e-12)
    txt_emb = txt_emb / jnp.linalg.norm(txt_emb, axis=-1, keepdims=True).clip(1e-12)
    scale_init = cfg.get("logit_scale_init",
                         1 / 0.07 if loss == "softmax" else 10.0)
    log_scale = self.param("logit_scale", nn.initializers.constant(
        math.log(scale_init)), (), jnp.float32)
    max_scale = cfg.get("max_logit_scale", 100.0)
    logit_scale = jnp.exp(jnp.minimum(log_scale, math.log(max_scale)))
    if loss == "sigmoid":
      logit_bias = self.param("logit_bias", nn.initializers.constant(
          cfg.get("logit_bias_init", -10.0)), (), jnp.float32)
    else:
      logit_bias = jnp.zeros((), jnp.float32)
    extras = {"logit_scale": logit_scale, "logit_bias": logit_bias,
              "img": img_extras, "txt": txt_extras}
    return img_emb, txt_emb, extras
