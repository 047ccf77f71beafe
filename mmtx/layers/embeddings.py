"""Token and patch embeddings, and positional encodings.

Sinusoidal encoding: Vaswani et al. 2017, Sec. 3.5; 2-D sin-cos for patch grids:
MAE / MoCo v3 (He et al. 2021, Chen et al. 2021); patch embedding: ViT
(Dosovitskiy et al. 2021).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

Array = jax.Array
Dtype = Any

POSITION_KINDS = ("sinusoidal", "learned", "sincos2d", "none")


def sinusoidal_position_encoding(length: int, dim: int,
                                 max_timescale: float = 10_000.0) -> np.ndarray:
  """`[length, dim]`: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(.)."""
  if dim % 2:
    raise ValueError(f"sinusoidal position encoding needs an even dim, got {dim}.")
  pos = np.arange(length, dtype=np.float64)[:, None]
  rates = max_timescale ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
  pe = np.zeros((length, dim), np.float64)
  pe[:, 0::2] = np.sin(pos * rates)
  pe[:, 1::2] = np.cos(pos * rates)
  return pe.astype(np.float32)


def sincos_2d_position_encoding(height: int, width: int, dim: int,
                                temperature: float = 10_000.0) -> np.ndarray:
  """`[height * width, dim]` fixed 2-D encoding of a patch grid (row-major).

  A quarter of the channels each: sin(y w), cos(y w), sin(x w), cos(x w) with
  w_k = 1 / temperature^(k / (dim/4)).
  """
  if dim % 4:
    raise ValueError(f"2-D sin-cos position encoding needs dim divisible by 4, "
                     f"got {dim}.")
  y, x = np.mgrid[:height, :width].astype(np.float64)
  omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
  y = y.reshape(-1)[:, None] * omega[None]
  x = x.reshape(-1)[:, None] * omega[None]
  return np.concatenate([np.sin(y), np.cos(y), np.sin(x), np.cos(x)],
                        axis=1).astype(np.float32)


class TokenEmbedding(nn.Module):
  """Token ids `[batch, tokens]` -> `[batch, tokens, features]`.

  `scale_by_sqrt_dim` multiplies by sqrt(d_model) as in Vaswani et al.
  `attend(x)` gives tied output logits `[..., vocab_size]`.
  """
  vocab_size: int
  features: int
  scale_by_sqrt_dim: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  embedding_init: Callable = nn.initializers.normal(stddev=0.02)

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
        (self.vocab_size, self.features), self.param_dtype)

  def __call__(self, ids: Array) -> Array:
    if ids.ndim != 2:
      raise ValueError(f"TokenEmbedding: ids must be rank 2 [batch, tokens], got "
                       f"shape {ids.shape}.")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"TokenEmbedding: ids must be integer token ids, got "
                       f"dtype {ids.dtype}.")
    # Ids outside [0, vocab_size) embed as NaN (a negative one would
    # otherwise read a row from the end), so a bad id is never silent.
    ids = jnp.where(ids < 0, self.vocab_size, ids)
    x = jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0,
                 mode="fill", fill_value=jnp.nan)
    if self.scale_by_sqrt_dim:
      x = x * jnp.sqrt(self.features).astype(self.dtype)
    return x

  def attend(self, x: Array) -> Array:
    return jnp.einsum("...d,vd->...v", x, jnp.asarray(self.embedding, self.dtype))


class PatchEmbedding(nn.Module):
  """NHWC images `[batch, H, W, C]` -> patch tokens `[batch, H/p * W/p, features]`.

  A linear map of each non-overlapping p x p patch (a strided convolution).
  """
  patch_size: int
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    if images.ndim != 4:
      raise ValueError(f"PatchEmbedding: images must be NHWC rank 4 [batch, "
                       f"height, width, channels], got shape {images.shape}.")
    _, h, w, c = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"PatchEmbedding: image size {h}x{w} is not divisible by "
                       f"patch_size={p}; resize or pad the images, or pick a "
                       f"patch size that divides both.")
    if not self.is_initializing() and "params" in self.variables:
      want_c = nn.meta.unbox(self.variables["params"]["conv"]["kernel"]).shape[2]
      if c != want_c:
        raise ValueError(f"PatchEmbedding: images have {c} channels, the "
                         f"parameters expect {want_c}.")
    x = nn.Conv(self.features, (p, p), strides=(p, p), padding="VALID",
                use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(),
                    (None, None, "channels", "embed")),
                bias_init=nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), ("embed",)),
                name="conv")(images)
    b, gh, gw, d = x.shape
    return x.reshape(b, gh * gw, d)


class PositionEmbedding(nn.Module):
  """Adds a positional encoding to tokens `[batch, tokens, dim]`.

  kind: 'sinusoidal' (fixed 1-D), 'learned' (1-D, up to `max_len`), 'sincos2d'
  (fixed, for a `grid=(h, w)` of patches, tokens = h*w) or 'none'.
  temperature: sincos2d's T (`sincos_2d_position_encoding`).
  """
  kind: str = "learned"
  max_len: int = 512
  grid: Optional[tuple[int, int]] = None
  temperature: float = 10_000.0
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, positions: Optional[Array] = None) -> Array:
    """positions: optional int `[tokens]` or `[batch, tokens]` indices (1-D
    kinds only), e.g. the cache offset while decoding; default 0..tokens-1."""
    if self.kind not in POSITION_KINDS:
      raise ValueError(f"PositionEmbedding: kind must be one of {POSITION_KINDS}, "
                       f"got {self.kind!r}.")
    if x.ndim != 3:
      raise ValueError(f"PositionEmbedding: input must be rank 3 [batch, tokens, "
                       f"dim], got shape {x.shape}.")
    _, n, d = x.shape
    if self.kind == "none":
      return x
    if self.kind == "sincos2d":
      if positions is not None:
        raise ValueError("PositionEmbedding('sincos2d') takes no positions.")
      if self.grid is None or self.grid[0] * self.grid[1] != n:
        raise ValueError(f"PositionEmbedding('sincos2d'): grid={self.grid} does "
                         f"not cover {n} tokens; pass grid=(h, w) with h*w={n}.")
      if not self.temperature > 1:
        raise ValueError(f"PositionEmbedding('sincos2d'): temperature must be "
                         f"> 1, got {self.temperature}.")
      pe = sincos_2d_position_encoding(self.grid[0], self.grid[1], d,
                                       float(self.temperature))
      return x + jnp.asarray(pe, x.dtype)[None]
    if positions is None and n > self.max_len:
      raise ValueError(f"PositionEmbedding('{self.kind}'): {n} tokens exceed "
                       f"max_len={self.max_len}.")
    if self.kind == "sinusoidal":
      table = jnp.asarray(sinusoidal_position_encoding(self.max_len, d))
    else:
      table = self.param(
          "pos_embedding",
          nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                       (None, "embed")),
          (self.max_len, d), self.param_dtype)
    if positions is None:
      pe = table[None, :n]
    else:
      pe = jnp.take(table, positions, axis=0)
      pe = pe[None] if pe.ndim == 2 else pe
    return x + pe.astype(x.dtype)
