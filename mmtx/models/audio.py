"""Audio Spectrogram Transformer (AST, Gong et al. 2021): a log-mel
spectrogram's (overlapping) patches -> 2-D positions -> pre-norm encoder.

Returns `(out, extras)` like the image tower: `out` the pooled `[batch,
width]` feature (or the tokens with pool='none'); `extras` 'tokens',
'mask' and 'grid' (frames x mels patches).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtx import layers
from mmtx.layers import audio
from mmtx.layers.transformer import check_choice

Array = jax.Array


class AudioTransformer(nn.Module):
  """`[batch, frames, mels]` log-mel spectrograms -> `(out, extras)`."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: tuple[int, int] = (16, 16)
  strides: tuple[int, int] = (10, 10)     # < patch_size: AST's overlap
  posemb: str = "sincos2d"                # 'sincos2d' | 'learned'
  pool: str = "gap"                       # 'gap' | 'cls' | 'none'
  dropout_rate: float = 0.0
  dtype: Any = "float32"

  @nn.compact
  def __call__(self, spec: Array, *, deterministic: bool = True):
    check_choice("AudioTransformer: pool", self.pool, ("gap", "cls", "none"))
    check_choice("AudioTransformer: posemb", self.posemb,
                 ("sincos2d", "learned"))
    dtype = jnp.dtype(self.dtype)
    x, grid = audio.SpectrogramPatchEmbedding(
        self.width, tuple(self.patch_size), tuple(self.strides), dtype=dtype,
        name="embedding")(spec)
    x = layers.PositionEmbedding(kind=self.posemb, max_len=grid[0] * grid[1],
                                 grid=grid, name="posemb")(x)
    if self.pool == "cls":
      cls = self.param("cls", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (None, None, "embed")),
                       (1, 1, self.width), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1]))
                           .astype(x.dtype), x], axis=1)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = layers.Encoder(num_layers=self.depth, num_heads=self.num_heads,
                       mlp_dim=self.mlp_dim, norm="pre",
                       dropout_rate=self.dropout_rate, dtype=dtype,
                       name="encoder")(x, deterministic=deterministic)
    extras = {"tokens": x, "mask": jnp.ones(x.shape[:2], bool), "grid": grid}
    if self.pool == "cls":
      return x[:, 0], extras
    if self.pool == "gap":
      return x.mean(axis=1), extras
    return x, extras
