"""Video tokens: ViViT's tubelet embedding (Arnab et al. 2021, Sec. 3.2) and
the inflation of a 2-D patch kernel into a tubelet kernel, so image weights
carry over to video."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def inflate_patch_kernel(kernel_2d, frames: int, method: str = "central"):
  """A patch kernel `[ph, pw, c, d]` -> a tubelet kernel `[frames, ph, pw,
  c, d]`. 'central' (ViViT's central-frame initialisation): the 2-D kernel
  at the middle frame, zeros elsewhere; 'average': the 2-D kernel / frames
  at every frame (I3D's inflation). Either way a video of `frames` equal
  frames maps to the image's patch tokens."""
  k = jnp.asarray(kernel_2d)
  if k.ndim != 4:
    raise ValueError(f"inflate_patch_kernel: kernel_2d must be [ph, pw, c, "
                     f"d], got shape {k.shape}.")
  if method == "average":
    return jnp.broadcast_to(k / frames, (frames, *k.shape))
  if method != "central":
    raise ValueError(f"inflate_patch_kernel: method must be 'central' or "
                     f"'average', got {method!r}.")
  out = jnp.zeros((frames, *k.shape), k.dtype)
  return out.at[frames // 2].set(k)


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

