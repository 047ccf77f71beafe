"""Attention blocks between two token sets, and masked pooling: additive
(Bahdanau) attention, the non-causal cross-attention layer of ALBEF / BLIP /
LXMERT, Flamingo's gated cross-attention layer.

Token masks are boolean `[batch, tokens]`, True = real token.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from mmtx.layers.attention import (MultiHeadAttention, attention_weights,
                                   check_mask, padding_mask)
from mmtx.layers.transformer import (BlockFields, Mlp, check_choice,
                                     layer_norm)

Array = jax.Array
Dtype = Any

SCORES = ("dot", "additive")
SUBLAYERS = ("self_attention", "cross_attention", "mlp")


def masked_mean(x: Array, mask: Array) -> Array:
  """`[batch, n, d]`, `[batch, n]` -> `[batch, d]` float32 mean over real
  tokens; zeros where a row has none. Padding values never enter (not even
  NaN), since they are selected away rather than multiplied by 0."""
  s = jnp.where(mask[..., None], x, 0).astype(jnp.float32).sum(axis=1)
  count = mask.sum(axis=1, keepdims=True).astype(jnp.float32)
  return s / jnp.maximum(count, 1.0)


def zero_init_scalar(m: nn.Module, name: str, param_dtype) -> Array:
  """A scalar parameter initialised to 0 (a Flamingo tanh gate)."""
  return m.param(name, nn.with_logical_partitioning(
      nn.initializers.zeros_init(), ()), (), param_dtype)



class AdditiveAttention(nn.Module):
  """Multi-head additive attention (Bahdanau et al. 2015, Appendix A; as used
  across modalities by Show, Attend and Tell, Xu et al. 2015).

  score_h(q, k) = v_h^T tanh(W_h^Q q + W_h^K k), softmax over keys, then
  Concat_h(sum_k a_hqk W_h^V k) W^O. Params `query`, `key`, `value`, `out`
  as in MultiHeadAttention, plus `score` (the v_h) `[heads, head_dim]`.
  inputs_q `[batch, q, dq]`, inputs_kv `[batch, k, dk]`, mask boolean
  `[batch, k]` (key padding) or broadcastable to `[batch, heads, q, k]`; a
  query with no visible key gets zeros. Memory is O(batch q k dim) for the
  tanh, unlike dot products.
  """
  num_heads: int
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array,
               mask: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    if inputs_q.ndim != 3 or inputs_kv.ndim != 3:
      raise ValueError(f"AdditiveAttention: inputs_q and inputs_kv must be "
                       f"rank 3 [batch, tokens, features], got shapes "
                       f"{inputs_q.shape} and {inputs_kv.shape}.")
    mask = check_mask(mask, inputs_q.shape[0], self.num_heads,
                      inputs_q.shape[1], inputs_kv.shape[1])
    features = self.out_features or inputs_q.shape[-1]
    qkv = self.qkv_features or inputs_q.shape[-1]
    if qkv % self.num_heads:
      raise ValueError(f"AdditiveAttention: qkv_features={qkv} is not "
                       f"divisible by num_heads={self.num_heads}.")
    head_dim = qkv // self.num_heads
    init = nn.initializers.xavier_uniform()

    def proj(name, use_bias=True):
      return nn.DenseGeneral(
          (self.num_heads, head_dim), use_bias=use_bias, dtype=self.dtype,
          param_dtype=self.param_dtype,
          kernel_init=nn.with_logical_partitioning(init,
                                                   ("embed", "heads", "kv")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                 ("heads", "kv")),
          name=name)

    q = proj("query")(inputs_q)                  # [b, q, h, hd]
    k = proj("key", use_bias=False)(inputs_kv)   # one bias: in W^Q q
    v = proj("value")(inputs_kv)
    score = self.param("score", nn.with_logical_partitioning(
        nn.initializers.normal(stddev=head_dim ** -0.5), ("heads", "kv")),
                       (self.num_heads, head_dim), self.param_dtype)
    hidden = jnp.tanh(q[:, :, None] + k[:, None])  # [b, q, k, h, hd]
    logits = jnp.einsum("bqkhd,hd->bhqk", hidden,
                        jnp.asarray(score, self.dtype),
                        preferred_element_type=jnp.float32)
    dropout = not deterministic and self.dropout_rate > 0.0
    weights = attention_weights(
        logits, mask, self.make_rng("dropout") if dropout else None,
        self.dropout_rate, deterministic)
    x = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
    return nn.DenseGeneral(
        features, axis=(-2, -1), dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(init,
                                                 ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                               ("embed",)),
        name="out")(x)


class CrossAttentionBlock(BlockFields):
  """A non-causal layer over target tokens x with a context (another
  modality): the sublayers named in `order`, each with residual dropout and a
  LayerNorm placed by `norm` ('post': LN(x + f(x)), 'pre': x + f(LN(x))).

  Default order (self, cross, mlp) is the ALBEF/BLIP fusion layer and has
  the parameter names of `mmtx.layers.DecoderBlock` without its causal mask;
  (cross, self, mlp) is the LXMERT cross-modality layer. `score='additive'`
  swaps the cross-attention for AdditiveAttention.
  x `[batch, t, dim]`, context `[batch, s, dim_c]`, masks `[batch, t]`,
  `[batch, s]`; returns `[batch, t, dim]`. `independent_targets=True`: each
  target token's self-attention sees only itself, so the t tokens are t separate
  queries of the same context (the same result as t calls with t = 1).
  """
  order: tuple = SUBLAYERS
  score: str = "dot"

  @nn.compact
  def __call__(self, x: Array, context: Array, mask: Array,
               context_mask: Array, *, deterministic: bool = True,
               independent_targets: bool = False) -> Array:
    check_choice("CrossAttentionBlock: score", self.score, SCORES)
    if sorted(self.order) != sorted(SUBLAYERS):
      raise ValueError(f"CrossAttentionBlock: order must be a permutation of "
                       f"{SUBLAYERS}, got {self.order!r}.")
    attn_kw = dict(num_heads=self.num_heads,
                   dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
                   param_dtype=self.param_dtype)
    mha = lambda name: MultiHeadAttention(  # noqa: E731
        kernel_init=nn.initializers.xavier_uniform(),
        implementation=self.attention_impl, name=name, **attn_kw)
    self_mask = padding_mask(mask)
    if independent_targets:  # each target token's self-attention: itself
      self_mask = self_mask & jnp.eye(x.shape[1], dtype=bool)[None, None]
    cross_mask = padding_mask(mask, context_mask)
    if self.score == "dot":
      cross = mha("cross_attention")
    else:
      cross = AdditiveAttention(name="cross_attention", **attn_kw)
    fns = {
        "self_attention": lambda h: mha("self_attention")(
            h, mask=self_mask, deterministic=deterministic),
        "cross_attention": lambda h: cross(
            h, context, mask=cross_mask, deterministic=deterministic),
        "mlp": lambda h: Mlp(self.mlp_dim, self.activation, self.dropout_rate,
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             name="mlp")(h, deterministic=deterministic),
    }
    drop = nn.Dropout(self.dropout_rate)
    for name in self.order:
      ln = layer_norm(self.dtype, self.param_dtype, f"ln_{name}")
      if self.norm == "post":
        x = ln(x + drop(fns[name](x), deterministic=deterministic))
      else:
        x = x + drop(fns[name](ln(x)), deterministic=deterministic)
    return x


class GatedCrossAttentionBlock(BlockFields):
  """Flamingo's GATED XATTN-DENSE layer (Alayrac et al. 2022):

  y = x + tanh(a_attn) * CrossAttn(LN(x), context)
  y = y + tanh(a_mlp) * FFN(LN(y))

  with scalar gates `attn_gate`, `mlp_gate` initialised to 0, so the layer is
  the identity at initialisation. x `[batch, t, dim]`, context `[batch, s,
  dim]`, masks `[batch, t]`, `[batch, s]`. Always pre-norm: `norm` is not
  read (GatedCrossAttentionFusion, which stacks it, requires norm='pre').
  """

  @nn.compact
  def __call__(self, x, context, mask, context_mask, *,
               deterministic: bool = True):
    drop = nn.Dropout(self.dropout_rate)
    gate = lambda name: jnp.tanh(  # noqa: E731
        zero_init_scalar(self, name, self.param_dtype)).astype(self.dtype)
    h = layer_norm(self.dtype, self.param_dtype, "ln_cross_attention")(x)
    h = MultiHeadAttention(
        num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        implementation=self.attention_impl, name="cross_attention")(
            h, context, mask=padding_mask(mask, context_mask),
            deterministic=deterministic)
    x = x + gate("attn_gate") * drop(h, deterministic=deterministic)
    h = layer_norm(self.dtype, self.param_dtype, "ln_mlp")(x)
    h = Mlp(self.mlp_dim, self.activation, self.dropout_rate, dtype=self.dtype,
            param_dtype=self.param_dtype, name="mlp")(
                h, deterministic=deterministic)
    return x + gate("mlp_gate") * drop(h, deterministic=deterministic)
