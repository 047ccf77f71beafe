"""Image (ViT, Dosovitskiy et al. 2021) and text (Transformer) towers.

Both return `(out, extras)`: `out` is the pooled `[batch, width]` feature (or
the tokens `[batch, tokens, width]` with pool='none'), and `extras` holds
'tokens' `[batch, tokens, width]` and 'mask' `[batch, tokens]` for fusion and
probing.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtx import layers
from mmtx.layers.transformer import check_choice, shared_fields

Array = jax.Array

# name -> (width, depth, mlp_dim, heads). "mu"/"nano" are for tests and CPUs.
SIZES = {
    "mu": (32, 1, 64, 2),
    "nano": (64, 2, 128, 4),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}


def decode_variant(variant: str) -> dict[str, Any]:
  """'B/16' -> dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
  patch_size=16); 'B' (text towers) has no patch size."""
  m = re.fullmatch(r"(\w+?)(?:/(\d+))?", variant or "")
  if not m or m.group(1) not in SIZES:
    raise ValueError(f"variant {variant!r} is not one of "
                     f"{sorted(SIZES)} optionally followed by /patch_size "
                     f"(e.g. 'B/16').")
  width, depth, mlp_dim, heads = SIZES[m.group(1)]
  out = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads)
  if m.group(2):
    out["patch_size"] = int(m.group(2))
  return out


def _resolve(module, names):
  """Explicit fields win over the variant's defaults."""
  base = decode_variant(module.variant) if module.variant else {}
  out = {}
  for n in names:
    v = getattr(module, n)
    out[n] = base.get(n) if v is None else v
    if out[n] is None:
      raise ValueError(f"{type(module).__name__}: '{n}' is unset; give a "
                       f"variant (e.g. 'S/16') or set {n}.")
  return out


def _encoder(tower, c, dtype) -> layers.Encoder:
  """The tower's pre-norm encoder: its own fields (activation, dropout,
  scan, remat, ...) plus the sizes `c` resolved from the variant."""
  return layers.Encoder(**shared_fields(
      tower, layers.Encoder, num_layers=c["depth"], num_heads=c["num_heads"],
      mlp_dim=c["mlp_dim"], norm="pre", dtype=dtype), name="encoder")


def _dtype(name):
  return jnp.dtype(name) if isinstance(name, str) else name


class MAPHead(nn.Module):
  """Multihead attention pooling (Lee et al. 2019; SigLIP's image head):
  a learned probe attends to tokens `[batch, n, d]`, then y + MLP(LN(y)) ->
  `[batch, d]`."""
  num_heads: int
  mlp_dim: int
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    probe = self.param("probe", nn.with_logical_partitioning(
        nn.initializers.xavier_uniform(), (None, None, "embed")),
                       (1, 1, x.shape[-1]), jnp.float32)
    q = jnp.broadcast_to(probe, (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
    y = layers.MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype,
                                  kernel_init=nn.initializers.xavier_uniform(),
                                  name="attention")(q, x)
    h = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                     name="ln")(y)
    y = y + layers.Mlp(self.mlp_dim, self.activation, dtype=self.dtype,
                       name="mlp")(h)
    return y[:, 0]


class _TowerFields(nn.Module):
  """The fields both towers have: sizes (explicit, or from `variant`, see
  `decode_variant`; explicit ones win) and their encoder's settings."""
  variant: Optional[str] = None
  width: Optional[int] = None
  depth: Optional[int] = None
  mlp_dim: Optional[int] = None
  num_heads: Optional[int] = None
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  dtype: Any = "float32"
  scan: bool = False
  remat: str = "none"
  attention_impl: str = "xla"


class ViT(_TowerFields):
  """Vision Transformer: patches -> (+cls) + positions -> pre-norm encoder."""
  patch_size: Optional[int] = None
  posemb: str = "learned"  # 'learned' | 'sincos2d'
  # sincos2d only: frequencies 1 / T^(k / (width/4)). The usual T = 10^4 is
  # made for long sequences; on a 10x10 grid most of its frequencies are
  # nearly constant, and a small T (30 in configs/default.py) spreads them
  # over the grid.
  posemb_temperature: float = 10_000.0
  pool: str = "gap"  # 'cls' | 'gap' | 'map' (MAPHead) | 'none'
  # The class token gets a learned position too (CLIP): the position table
  # has 1 + patches rows, row 0 for the class token. Needs pool='cls'.
  cls_posemb: bool = False
  patch_bias: bool = True
  # Convolutional stem (hybrid ViT, Dosovitskiy et al. Sec. 3.1; Xiao et al.
  # 2021): 3x3 stride-2 conv + ReLU per entry, before the patch embedding,
  # which then patches the feature map. () = plain ViT.
  stem_channels: tuple = ()
  ln_pre: bool = False  # CLIP's LayerNorm before the encoder

  @nn.compact
  def __call__(self, images: Array, *, deterministic: bool = True):
    c = _resolve(self, ["patch_size", "width", "depth", "mlp_dim",
                        "num_heads"])
    check_choice("ViT: pool", self.pool, ("cls", "gap", "map", "none"))
    # The images are checked where they enter (models.config.check_images).
    dtype = _dtype(self.dtype)
    p = c["patch_size"]
    x = images.astype(dtype)
    for i, ch in enumerate(self.stem_channels):
      x = nn.relu(nn.Conv(ch, (3, 3), strides=(2, 2), padding="SAME",
                          dtype=dtype, name=f"stem_{i}",
                          kernel_init=nn.with_logical_partitioning(
                              nn.initializers.lecun_normal(),
                              (None, None, None, "mlp")))(x))
    grid = (x.shape[1] // p, x.shape[2] // p)
    x = layers.PatchEmbedding(p, c["width"], use_bias=self.patch_bias,
                              dtype=dtype, name="embedding")(x)
    if self.cls_posemb and (self.pool, self.posemb) != ("cls", "learned"):
      raise ValueError(f"ViT: cls_posemb=True needs pool='cls' and "
                       f"posemb='learned', got {self.pool!r} and "
                       f"{self.posemb!r}.")
    posemb = layers.PositionEmbedding(
        kind=self.posemb, max_len=grid[0] * grid[1] + int(self.cls_posemb),
        grid=grid, temperature=self.posemb_temperature, name="posemb")
    if not self.cls_posemb:
      x = posemb(x)
    if self.pool == "cls":
      cls = self.param("cls", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (None, None, "embed")),
                       (1, 1, c["width"]), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1]))
                           .astype(x.dtype), x], axis=1)
    if self.cls_posemb:
      x = posemb(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    if self.ln_pre:
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=dtype,
                       name="ln_pre")(x)
    x = _encoder(self, c, dtype)(x, deterministic=deterministic)
    mask = jnp.ones(x.shape[:2], bool)
    extras = {"tokens": x, "mask": mask, "grid": grid}
    if self.pool == "cls":
      return x[:, 0], extras
    if self.pool == "gap":
      return x.mean(axis=1), extras
    if self.pool == "map":
      return MAPHead(c["num_heads"], c["mlp_dim"], self.activation,
                     self.layer_norm_eps, dtype, name="map_head")(x), extras
    return x, extras


class TextTransformer(_TowerFields):
  """Token ids `[batch, len]` (0 = padding) -> Transformer encoder.

  causal=True gives a GPT/CLIP-style text tower; pool: 'last' (last real
  token), 'argmax' (the token with the highest id: CLIP's EOT), 'eos' (the
  first token equal to `eos_id`), 'first', 'mean' (over real tokens) or
  'none'. mask_padding=False makes id 0 an ordinary token (CLIP's '!'):
  nothing is masked and every position is real, as in CLIP and SigLIP.
  """
  vocab_size: int = dataclasses.field(kw_only=True)
  max_len: int = 77
  causal: bool = False
  pool: str = "last"
  mask_padding: bool = True
  eos_id: Optional[int] = None  # pool='eos' only

  @nn.compact
  def __call__(self, texts: Array, *, deterministic: bool = True):
    c = _resolve(self, ["width", "depth", "mlp_dim", "num_heads"])
    check_choice("TextTransformer: pool", self.pool,
                 ("last", "argmax", "eos", "first", "mean", "none"))
    if (self.pool == "eos") != (self.eos_id is not None):
      raise ValueError(f"TextTransformer: eos_id={self.eos_id} goes with "
                       f"pool='eos' and only with it (pool={self.pool!r}).")
    # Rank and dtype: TokenEmbedding checks them.
    if texts.ndim == 2 and texts.shape[1] > self.max_len:
      raise ValueError(f"TextTransformer: {texts.shape[1]} tokens exceed "
                       f"max_len={self.max_len}; truncate in the tokenizer.")
    dtype = _dtype(self.dtype)
    mask = texts != 0 if self.mask_padding else jnp.ones(texts.shape, bool)
    x = layers.TokenEmbedding(self.vocab_size, c["width"], dtype=dtype,
                              name="embedding")(texts)
    x = layers.PositionEmbedding(kind="learned", max_len=self.max_len,
                                 name="posemb")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    # The text tower's `causal` reaches the Encoder through shared_fields.
    x = _encoder(self, c, dtype)(x, mask if self.mask_padding else None,
                                 deterministic=deterministic)
    extras = {"tokens": x, "mask": mask}
    if self.pool == "none":
      return x, extras
    if self.pool == "first":
      return x[:, 0], extras
    if self.pool == "mean":  # selects, so padding values never enter
      return layers.masked_mean(x, mask).astype(x.dtype), extras
    if self.pool == "argmax":
      last = jnp.argmax(texts, axis=1)
    elif self.pool == "eos":
      last = jnp.argmax(texts == self.eos_id, axis=1)
    else:
      last = jnp.maximum(mask.sum(axis=1) - 1, 0)
    return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0], extras
