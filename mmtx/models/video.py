"""ViViT (Arnab et al. 2021): tubelet tokens -> joint space-time attention
(model 1) or the factorised encoder (model 2: a spatial encoder per frame
index, then a temporal encoder over the frames' pooled tokens).

Returns `(out, extras)` like the image tower: `out` the pooled `[batch,
width]` feature (or the tokens with pool='none': all tubelets for 'joint',
one per frame index for 'factorised'); `extras` 'tokens', 'mask', 'grid'
(gt, gh, gw).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtx import layers
from mmtx.layers import video
from mmtx.layers.transformer import check_choice

Array = jax.Array


class VideoTransformer(nn.Module):
  """`[batch, frames, height, width, channels]` -> `(out, extras)`."""
  width: int
  depth: int                     # 'joint': the encoder; 'factorised': spatial
  mlp_dim: int
  num_heads: int
  patch_size: tuple[int, int, int] = (2, 16, 16)
  attention: str = "joint"       # 'joint' | 'factorised'
  temporal_depth: int = 1        # 'factorised' only
  pool: str = "gap"              # 'gap' | 'none'
  dropout_rate: float = 0.0
  dtype: Any = "float32"

  def _encoder(self, depth, name, dtype):
    return layers.Encoder(num_layers=depth, num_heads=self.num_heads,
                          mlp_dim=self.mlp_dim, norm="pre",
                          dropout_rate=self.dropout_rate, dtype=dtype,
                          name=name)

  @nn.compact
  def __call__(self, videos: Array, *, deterministic: bool = True):
    check_choice("VideoTransformer: attention", self.attention,
                 ("joint", "factorised"))
    check_choice("VideoTransformer: pool", self.pool, ("gap", "none"))
    dtype = jnp.dtype(self.dtype)
    x, grid = video.TubeletEmbedding(self.width, tuple(self.patch_size),
                                     dtype=dtype, name="embedding")(videos)
    gt, gh, gw = grid
    b = x.shape[0]
    if self.attention == "joint":
      x = layers.PositionEmbedding(kind="learned", max_len=gt * gh * gw,
                                   name="posemb")(x)
      x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
      x = self._encoder(self.depth, "encoder", dtype)(
          x, deterministic=deterministic)
    else:
      # Spatial: each frame index's gh x gw tokens attend among themselves.
      x = x.reshape(b * gt, gh * gw, self.width)
      x = layers.PositionEmbedding(kind="learned", max_len=gh * gw,
                                   name="posemb_spatial")(x)
      x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
      x = self._encoder(self.depth, "spatial_encoder", dtype)(
          x, deterministic=deterministic)
      x = x.mean(axis=1).reshape(b, gt, self.width)
      x = layers.PositionEmbedding(kind="learned", max_len=gt,
                                   name="posemb_temporal")(x)
      x = self._encoder(self.temporal_depth, "temporal_encoder", dtype)(
          x, deterministic=deterministic)
    extras = {"tokens": x, "mask": jnp.ones(x.shape[:2], bool), "grid": grid}
    return (x.mean(axis=1) if self.pool == "gap" else x), extras
