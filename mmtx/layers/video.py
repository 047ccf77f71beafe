"""Video tokens: ViViT's tubelet embedding (Arnab et al. 2021, Sec. 3.2)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class TubeletEmbedding(nn.Module):
  """Videos `[batch, T, H, W, C]` -> `([batch, gt * gh * gw, features],
  (gt, gh, gw))`: a linear map of each non-overlapping pt x ph x pw
  tubelet (a strided 3-D convolution)."""
  features: int
  patch_size: tuple[int, int, int] = (2, 16, 16)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, videos: Array):
    if videos.ndim != 5:
      raise ValueError(f"TubeletEmbedding: videos must be [batch, frames, "
                       f"height, width, channels], got shape {videos.shape}.")
    sizes = videos.shape[1:4]
    if any(s % p for s, p in zip(sizes, self.patch_size)):
      raise ValueError(f"TubeletEmbedding: frames x height x width "
                       f"{'x'.join(map(str, sizes))} is not divisible by the "
                       f"tubelet {'x'.join(map(str, self.patch_size))}; "
                       f"sample, crop or pad the clip to a multiple.")
    x = nn.Conv(self.features, tuple(self.patch_size),
                strides=tuple(self.patch_size), padding="VALID",
                dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(),
                    (None, None, None, "channels", "embed")),
                bias_init=nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), ("embed",)),
                name="conv")(videos.astype(self.dtype))
    b, gt, gh, gw, d = x.shape
    return x.reshape(b, gt * gh * gw, d), (gt, gh, gw)

