"""open_clip's CoCa text stacks (coca_model.py / transformer.py): each
layer is one or two pre-norm residual blocks, attention then its own MLP.
`mmtx.models.Captioner(decoder_layer='split')` uses them; `layers.Decoder`
is the fused alternative (self-attention, cross-attention, one MLP).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtx import layers
from mmtx.layers.transformer import layer_norm, shared_fields

Array = jax.Array


class SplitBlock(nn.Module):
  """Pre-norm attention then MLP, each residual: x `[batch, t, d]` +
  MHA(LN(x), kv), then + MLP(LN(.)) (open_clip's ResidualAttentionBlock).
  Self-attention (`cross=False`): kv = LN(x), causal, `mask` `[batch, t]`
  (`[batch, cache_len]` when decoding) keeps keys only, as open_clip's
  additive masks do. Cross-attention: kv = LN_c(context `[batch, s, d_c]`),
  `mask` `[batch, s]` keeps context keys."""
  num_heads: int
  mlp_dim: int
  activation: str = "gelu"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  layer_norm_eps: float = 1e-6
  cross: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, context: Optional[Array] = None,
               mask: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    ln = lambda name: layer_norm(self.dtype, jnp.float32, name,  # noqa: E731
                                 self.layer_norm_eps)
    drop = lambda h: nn.Dropout(self.dropout_rate)(  # noqa: E731
        h, deterministic=deterministic)
    attention = layers.MultiHeadAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        decode=self.decode and not self.cross,
        name="cross_attention" if self.cross else "self_attention")
    keys = None if mask is None else mask.astype(bool)  # [batch, kv]
    if self.cross:
      h = attention(ln("ln_query")(x), ln("ln_context")(context), mask=keys,
                    deterministic=deterministic)
    else:
      if not self.decode:  # the cache adds causality itself
        keys = layers.combine_masks(
            layers.causal_mask(x.shape[1]),
            None if keys is None else keys[:, None, None, :])
      h = attention(ln("ln_self_attention")(x), mask=keys,
                    deterministic=deterministic)
    x = x + drop(h)
    mlp = layers.Mlp(self.mlp_dim, self.activation, self.dropout_rate,
                     dtype=self.dtype, name="mlp")
    return x + drop(mlp(ln("ln_mlp")(x), deterministic=deterministic))


class SplitDecoder(nn.Module):
  """`num_layers` causal self-attention `SplitBlock`s (`self_i`), each
  followed by a cross-attention one (`cross_i`) when a context is given,
  then a LayerNorm (`ln_final`) if `final_norm`: open_clip's CoCa text tower
  (no context, no final norm) and multimodal decoder. Called as
  `layers.Decoder`; `decode=True` caches self-attention keys and values."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  activation: str = "gelu"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  layer_norm_eps: float = 1e-6
  final_norm: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, context: Optional[Array] = None,
               mask: Optional[Array] = None,
               context_mask: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    for i in range(self.num_layers):
      x = SplitBlock(name=f"self_{i}", **shared_fields(self, SplitBlock))(
          x, None, mask, deterministic=deterministic)
      if context is not None:
        x = SplitBlock(cross=True, name=f"cross_{i}",
                       **shared_fields(self, SplitBlock, decode=False))(
            x, context, context_mask, deterministic=deterministic)
    if self.final_norm:
      x = layer_norm(self.dtype, jnp.float32, "ln_final",
                     self.layer_norm_eps)(x)
    return x
