"""M-modality cross-modal attention: every modality queries the others.

For each modality i (O_i its tokens projected to `dim`), in every layer:

  Q = O_i W_i^Q,   O_i' = O_i + MultiHead_i(Q, K, V)

with K, V from the other modalities j != i in one of two forms:

  'sum'   : K = (sum_{j!=i} O_j) W_i^K, V = (sum_{j!=i} O_j) W_i^V, the sum
            taken token by token (needs the others' token counts to agree).
            A token position is a real key if it is real in any O_j; padded
            O_j contribute 0 to the sum there.
  'union' : K, V from the concatenation of the O_j's tokens (any counts).

and fused = sum_i O_i' (with M = 2 the two forms coincide). Pairwise
cross-modal attention of this kind is MulT's (Tsai et al. 2019), here
summed over the modalities.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import flax.linen as nn

from mmtx.fusion.base import Fusion, check_inputs, concat_tokens, project
from mmtx.layers import MultiHeadAttention, masked_mean, padding_mask
from mmtx.layers.transformer import check_choice

KV_FORMS = ("auto", "sum", "union")
POOLS = ("auto", "mean", "none")


def resolve_m_modal(kv_form: str, pool: str, lengths: dict):
  """Which form MModalFusion uses, from the fields and the static token counts.

  Args:
    kv_form: 'sum', 'union', or 'auto' = 'sum' for modality i when the other
      modalities' token counts agree, 'union' otherwise (decided per i).
    pool: 'none' = token-aligned output (needs equal token counts), 'mean' =
      masked-mean pool each O_i' before summing, 'auto' = 'none' when every
      modality has the same token count, 'mean' otherwise.
    lengths: modality -> token count.

  Returns:
    `(forms, token_aligned)`: modality -> 'sum' | 'union', and a bool.
  """
  check_choice("MModalFusion: field kv_form", kv_form, KV_FORMS)
  check_choice("MModalFusion: field pool", pool, POOLS)
  forms = {}
  for i in lengths:
    others = {k: n for k, n in lengths.items() if k != i}
    agree = len(set(others.values())) == 1
    if kv_form == "sum" and not agree:
      raise ValueError(f"MModalFusion: kv_form='sum' sums the other "
                       f"modalities token by token, but for {i!r} their token "
                       f"counts differ: {others}. Use kv_form='union' or "
                       f"'auto', or pad them to one length.")
    forms[i] = "sum" if (kv_form == "sum" or
                         (kv_form == "auto" and agree)) else "union"
  aligned = len(set(lengths.values())) == 1
  if pool == "none" and not aligned:
    raise ValueError(f"MModalFusion: pool='none' sums O_i' token by token, but "
                     f"the token counts differ: {lengths}. Use pool='mean' or "
                     f"'auto'.")
  return forms, (pool == "none" or (pool == "auto" and aligned))


class MModalFusion(Fusion):
  """M-modality cross-modal attention (module docstring) over `num_layers`
  layers, each modality with its own MultiHeadAttention per layer
  (`{key}_layers_{l}`, whose `query`/`key`/`value`/`out` are W^Q, W^K, W^V,
  W^O), residual dropout on its output; no LayerNorm or FFN.

  Output: token-aligned (pool resolves to 'none') `[batch, n, dim]` =
  sum_i O_i' over the modalities real at each position, mask = OR of the
  masks; pooled (pool resolves to 'mean') `[batch, 1, dim]` = sum_i
  masked_mean(O_i'), mask True. `resolve_m_modal` says which forms a config
  selects. The defaults ('union', 'mean') are the forms that hold for any
  token counts; with 'auto' the form follows the padded lengths, so padding
  a batch to other lengths can switch the equations.

  Reads dim, num_heads, num_layers, dropout_rate, attention_dropout_rate,
  dtype, param_dtype, attention_impl, kv_form, pool.
  """
  kv_form: str = "union"
  pool: str = "mean"
  unread = ("mlp_dim", "activation", "norm")

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    keys, tokens, masks = check_inputs(tokens, masks, "MModalFusion",
                                       min_modalities=2)
    forms, aligned = resolve_m_modal(
        self.kv_form, self.pool, {k: tokens[k].shape[1] for k in keys})
    xs = {k: project(self, k, tokens[k]) for k in keys}
    drop = nn.Dropout(self.dropout_rate)
    for layer in range(self.num_layers):
      new = {}
      for i in keys:
        others = [j for j in keys if j != i]
        if forms[i] == "sum":
          kv = sum(jnp.where(masks[j][..., None], xs[j], 0) for j in others)
          kv_mask = functools.reduce(jnp.logical_or,
                                     [masks[j] for j in others])
        else:
          kv, kv_mask = concat_tokens([xs[j] for j in others],
                                      [masks[j] for j in others])
        attn = MultiHeadAttention(
            num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            implementation=self.attention_impl, name=f"{i}_layers_{layer}")
        h = attn(xs[i], kv, mask=padding_mask(masks[i], kv_mask),
                 deterministic=deterministic)
        new[i] = xs[i] + drop(h, deterministic=deterministic)
      xs = new
    if aligned:
      fused = sum(jnp.where(masks[k][..., None], xs[k], 0) for k in keys)
      mask = functools.reduce(jnp.logical_or, [masks[k] for k in keys])
      return fused.astype(self.dtype), mask
    fused = sum(masked_mean(xs[k], masks[k]) for k in keys)
    return (fused[:, None].astype(self.dtype),
            jnp.ones((fused.shape[0], 1), bool))
