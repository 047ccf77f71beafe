"""Token-level fusion by attention between streams: single stream (concat),
attention bottlenecks, target-queries-context (cross-attention, additive,
Flamingo gated) and dual stream (co-attention).

Output positions whose returned mask is False hold unspecified values; mask
them downstream.
"""
from __future__ import annotations

from typing import Any, ClassVar

import jax.numpy as jnp
import flax.linen as nn

from mmtx.fusion.base import (DirectionalFusion, Fusion, check_inputs,
                              concat_tokens, final_norm, project)
from mmtx.layers import Encoder, EncoderBlock
from mmtx.layers.blocks import CrossAttentionBlock, GatedCrossAttentionBlock
from mmtx.layers.transformer import check_choice, shared_fields

Dtype = Any


class ConcatFusion(Fusion):
  """Single-stream fusion (VisualBERT, Li et al. 2019; UNITER, Chen et al.
  2020; ViLT, Kim et al. 2021): project each modality to `dim`, add a learned
  modality-type embedding (`type_{key}`), concatenate in sorted key order and
  run one joint mmtx.layers.Encoder (`encoder`) over all tokens.

  Positions are the towers' job (none are added here). Reads every common
  field. Returns `[batch, sum_m n_m, dim]` and the concatenated masks.
  """

  def token_offset(self, key, lengths):
    """Every modality's tokens, in sorted key order."""
    return sum(lengths[k] for k in sorted(lengths) if k < key)

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    keys, tokens, masks = check_inputs(tokens, masks, "ConcatFusion")
    xs = []
    for k in keys:
      type_emb = self.param(f"type_{k}", nn.with_logical_partitioning(
          nn.initializers.normal(stddev=0.02), ("embed",)), (self.dim,),
                            self.param_dtype)
      xs.append(project(self, k, tokens[k]) + jnp.asarray(type_emb,
                                                           self.dtype))
    x, mask = concat_tokens(xs, [masks[k] for k in keys])
    x = Encoder(name="encoder", **shared_fields(self, Encoder))(
        x, mask, deterministic=deterministic)
    return x, mask


class BottleneckFusion(Fusion):
  """Attention bottlenecks (MBT, Nagrani et al. 2021).

  Each modality has its own EncoderBlock per layer (`{key}_layers_{l}`).
  Layers before `fusion_layer` encode each modality alone; from
  `fusion_layer` on, modality m's layer runs over [x_m; z] where z are
  `num_bottleneck_tokens` shared latent tokens (learned init `bottleneck`),
  and after each such layer z is the average over modalities of their
  updated copies. All cross-modal exchange passes through z.
  `fusion_layer = num_layers` means no fusion at all.

  Reads every common field plus fusion_layer, num_bottleneck_tokens. Returns
  `[batch, sum_m n_m + B, dim]`: modalities' tokens in sorted key order, then
  the B bottleneck tokens (mask True).
  """
  fusion_layer: int = 0
  num_bottleneck_tokens: int = 4

  def _check_options(self):
    if not 0 <= self.fusion_layer <= self.num_layers:
      raise ValueError(f"BottleneckFusion: field fusion_layer must be in [0, "
                       f"num_layers={self.num_layers}], got "
                       f"{self.fusion_layer}.")
    if self.num_bottleneck_tokens < 1:
      raise ValueError(f"BottleneckFusion: field num_bottleneck_tokens must be"
                       f" >= 1, got {self.num_bottleneck_tokens}.")

  def token_offset(self, key, lengths):
    """Every modality's tokens, in sorted key order."""
    return sum(lengths[k] for k in sorted(lengths) if k < key)

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    keys, tokens, masks = check_inputs(tokens, masks, "BottleneckFusion")
    batch = tokens[keys[0]].shape[0]
    xs = {k: project(self, k, tokens[k]) for k in keys}
    z = self.param("bottleneck", nn.with_logical_partitioning(
        nn.initializers.normal(stddev=0.02), (None, "embed")),
                   (self.num_bottleneck_tokens, self.dim), self.param_dtype)
    z = jnp.broadcast_to(jnp.asarray(z, self.dtype)[None],
                         (batch,) + z.shape)
    z_mask = jnp.ones(z.shape[:2], bool)
    kw = shared_fields(self, EncoderBlock)
    for layer in range(self.num_layers):
      fused = layer >= self.fusion_layer
      zs = []
      for k in keys:  # inputs checked above: the blocks' unchecked layer
        block = EncoderBlock(name=f"{k}_layers_{layer}", **kw)
        if not fused:
          xs[k] = block.layer(xs[k], masks[k], deterministic=deterministic)
          continue
        x, mask = concat_tokens([xs[k], z], [masks[k], z_mask])
        y = block.layer(x, mask, deterministic=deterministic)
        n = xs[k].shape[1]
        xs[k] = y[:, :n]
        zs.append(y[:, n:])
      if fused:
        z = sum(zs) / len(zs)
    out = [final_norm(self, xs[k], f"{k}_ln_final") for k in keys]
    out.append(final_norm(self, z, "bottleneck_ln_final"))
    return concat_tokens(out, [masks[k] for k in keys] + [z_mask])


def _context(m: Fusion, keys, tokens, masks):
  """Projected tokens of `keys`, concatenated (sorted order), and mask."""
  return concat_tokens([project(m, k, tokens[k]) for k in keys],
                       [masks[k] for k in keys])


class CrossAttentionFusion(DirectionalFusion):
  """Target queries context, stacked (ALBEF, Li et al. 2021; BLIP, Li et al.
  2022): `num_layers` non-causal CrossAttentionBlocks (`layers_{l}`: self-
  attention, cross-attention to the context, FFN) over the projected target.

  Reads every common field plus target. Returns the target's tokens `[batch,
  n_target, dim]` and the target's mask. `independent_targets=True`: the
  target's tokens do not attend to each other (see DirectionalFusion).
  """
  score: ClassVar[str] = "dot"
  takes_independent_targets: ClassVar[bool] = True

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True,
               independent_targets: bool = False):
    who = type(self).__name__
    keys, tokens, masks = check_inputs(tokens, masks, who, min_modalities=2)
    target, context_keys = self._split(keys)
    x = project(self, target, tokens[target])
    context, context_mask = _context(self, context_keys, tokens, masks)
    for layer in range(self.num_layers):
      x = CrossAttentionBlock(score=self.score, name=f"layers_{layer}",
                              **shared_fields(self, CrossAttentionBlock))(
                                  x, context, masks[target], context_mask,
                                  deterministic=deterministic,
                                  independent_targets=independent_targets)
    return final_norm(self, x, "ln_final"), masks[target]


class AdditiveFusion(CrossAttentionFusion):
  """CrossAttentionFusion whose cross-attention scores are additive
  (Bahdanau et al. 2015): v^T tanh(W_q q + W_k k) per head instead of
  q.k / sqrt(d) (see mmtx.layers.AdditiveAttention). Same fields and outputs;
  attention_impl applies to the (dot-product) self-attention only."""
  score: ClassVar[str] = "additive"


class GatedCrossAttentionFusion(DirectionalFusion):
  """Flamingo-style fusion (Alayrac et al. 2022): `num_layers`
  GatedCrossAttentionBlocks (`layers_{l}`) over the target stream, which is
  NOT projected (its width must equal `dim`) so that at initialisation the
  output is exactly the target input (cast to `dtype`). The context
  modalities are projected to `dim`. Flamingo interleaves these layers with a
  frozen LM's own layers; those belong to the LM, not here. Always pre-norm
  (norm must be 'pre'), no final LayerNorm.

  Reads every common field plus target. Returns the target's tokens
  `[batch, n_target, dim]` and the target's mask. Target tokens never
  attend to each other here, so `independent_targets` changes nothing.
  """
  takes_independent_targets: ClassVar[bool] = True

  def _check_options(self):
    check_choice("GatedCrossAttentionFusion: field norm", self.norm, ("pre",))

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True,
               independent_targets: bool = False):
    del independent_targets  # no self-attention: always independent
    who = "GatedCrossAttentionFusion"
    keys, tokens, masks = check_inputs(tokens, masks, who, min_modalities=2)
    target, context_keys = self._split(keys)
    x = tokens[target].astype(self.dtype)
    if x.shape[-1] != self.dim:
      raise ValueError(f"{who}: tokens[{target!r}] has width {x.shape[-1]} but "
                       f"field dim={self.dim}; the target passes through "
                       f"unprojected (identity at initialisation), so set dim "
                       f"to the target width.")
    context, context_mask = _context(self, context_keys, tokens, masks)
    kw = shared_fields(self, GatedCrossAttentionBlock)
    for layer in range(self.num_layers):
      x = GatedCrossAttentionBlock(name=f"layers_{layer}", **kw)(
          x, context, masks[target], context_mask, deterministic=deterministic)
    return x, masks[target]


class CoAttentionFusion(Fusion):
  """Dual-stream co-attention (ViLBERT, Lu et al. 2019; LXMERT, Tan & Bansal
  2019): every layer, each modality's stream attends to the others' tokens
  of the previous layer (both directions at once), with its own weights
  (`{key}_layers_{l}`: a CrossAttentionBlock in LXMERT's order cross-
  attention, self-attention, FFN). With M > 2 modalities a stream's context
  is the concatenation of all other streams.

  Reads every common field. Returns all streams' tokens concatenated in
  sorted key order `[batch, sum_m n_m, dim]` with the concatenated masks.
  """

  def token_offset(self, key, lengths):
    """Every modality's tokens, in sorted key order."""
    return sum(lengths[k] for k in sorted(lengths) if k < key)

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    keys, tokens, masks = check_inputs(tokens, masks, "CoAttentionFusion",
                                       min_modalities=2)
    xs = {k: project(self, k, tokens[k]) for k in keys}
    order = ("cross_attention", "self_attention", "mlp")
    for layer in range(self.num_layers):
      new = {}
      for k in keys:
        others = [j for j in keys if j != k]
        context, context_mask = concat_tokens([xs[j] for j in others],
                                              [masks[j] for j in others])
        new[k] = CrossAttentionBlock(order=order, name=f"{k}_layers_{layer}",
                                     **shared_fields(self,
                                                     CrossAttentionBlock))(
                                         xs[k], context, masks[k],
                                         context_mask,
                                         deterministic=deterministic)
      xs = new
    return concat_tokens([final_norm(self, xs[k], f"{k}_ln_final")
                          for k in keys], [masks[k] for k in keys])
