"""Every multimodal fusion strategy behind one interface, and a registry.

A fusion module is a flax.linen Module called as

  fused_tokens, fused_mask = fuse(tokens, masks, *, deterministic=True)

with `tokens` a dict modality -> `[batch, n_m, d_m]` (counts and widths may
differ per modality; each is projected to the common width `dim`) and `masks`
the same keys -> boolean `[batch, n_m]`, True = real token. It returns
`[batch, n_out, dim]` in the compute `dtype` and a boolean `[batch, n_out]`
mask (pooled strategies: n_out = 1, mask all True). Modalities are always
combined in sorted key order. Directional strategies have a `target` field
naming the query modality; None means the first key in sorted order (so set
it: e.g. target='text' to have text query image, as ALBEF does).

`FUSIONS[name]` is the module class; `build_fusion(name or config, **fields)`
builds one. Every class has the common fields of `base.Fusion` (dim,
num_heads, num_layers, mlp_dim, dropout_rate, attention_dropout_rate,
activation, norm, dtype, param_dtype, attention_impl) and lists those it
does not read in `unread` (e.g. 'sum' has no attention layers, so no
num_heads); `fusion_fields(name)` are the fields it reads. A field the
strategy does not read - one of its `unread`, or another strategy's option
such as kv_form for 'concat' - is an error naming it, so a config never
carries a setting that does nothing (`mmtx.configs.common.fusion` keeps
the fields a strategy reads, so a config switches strategy by `name`).
`module.token_offset(key, lengths)` says where a modality's tokens sit in
the fused output.

Cost per layer as token counts grow (N_m tokens of modality m, N = sum_m N_m,
N_t / N_c target / context tokens, B bottleneck tokens, d = dim, d_m input
widths, f = mlp_dim; the projection to `dim`, O(sum_m N_m d_m d), is common
to all but late/gated and left out):

| name | paper | FLOPs per layer |
|---|---|---|
| `concat` | VisualBERT (Li et al. 2019), UNITER (Chen et al. 2020), ViLT (Kim et al. 2021) | O(N^2 d + N d (d + f)) |
| `sum` | feature-level fusion (Baltrusaitis et al. 2019, survey) | O(N d) pooling, no layers |
| `weighted_sum` | same, learned softmax modality weights | O(N d) pooling, no layers |
| `gated` | Gated Multimodal Unit (Arevalo et al. 2017) | O(sum_m N_m d_m + M d sum_m d_m), no layers |
| `flatten` | CNN+MLP baseline of Santoro et al. 2017 (flattened feature map + question -> MLP), feature-level fusion (Baltrusaitis et al. 2019) | O(sum_m N_m d_m f + L f^2 + f d), no attention |
| `late` | decision-level fusion (Baltrusaitis et al. 2019, survey) | O(sum_m N_m d_m + sum_m d_m f + M f d), no layers |
| `cross_attention` | ALBEF (Li et al. 2021), BLIP (Li et al. 2022) | O((N_t^2 + N_t N_c) d + N_t d (d + f) + N_c d^2) |
| `co_attention` | ViLBERT (Lu et al. 2019), LXMERT (Tan & Bansal 2019) | O(sum_m N_m (N - N_m) d + sum_m N_m^2 d + N d (d + f)); two streams: O((2 N_a N_b + N_a^2 + N_b^2) d + ...) |
| `m_modal` | MulT-style cross-modal attention (Tsai et al. 2019), summed over M | union: O(sum_i N_i (N - N_i) d + M N d^2); sum: O(sum_i N_i N_o(i) d + M N d^2), N_o(i) the others' common count |
| `gated_cross_attention` | Flamingo (Alayrac et al. 2022) | O(N_t N_c d + N_t d (d + f) + N_c d^2) |
| `additive` | Bahdanau et al. 2015 scores, across modalities as in Show, Attend and Tell (Xu et al. 2015) | O((N_t^2 + N_t N_c) d + N_t d (d + f) + N_c d^2), with O(N_t N_c d) memory for the tanh |
| `film` | FiLM (Perez et al. 2018) | O(N_t d^2 + N_c d + d^2) |
| `bottleneck` | MBT (Nagrani et al. 2021) | O(sum_m (N_m + B)^2 d + (N + M B) d (d + f)) from `fusion_layer` on; O(sum_m N_m^2 d + ...) before |

So concat and co_attention both pay O(N^2 d) attention per layer (co_attention
with separate weights per stream); the target-queries-context strategies drop
the context's own N_c^2 term; bottleneck replaces the cross terms N_a N_b by
(N_m + B)^2 per modality; the pooled strategies and flatten have no attention
at all (flatten's first layer has sum_m N_m d_m inputs, so it fixes the token
counts; L = num_layers).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from mmtx.fusion.base import DirectionalFusion, Fusion, check_inputs
from mmtx.fusion.film import FiLMFusion
from mmtx.fusion.m_modal import MModalFusion, resolve_m_modal
from mmtx.fusion.pooled import (FlattenFusion, GatedFusion, LateFusion,
                                SumFusion, WeightedSumFusion)
from mmtx.fusion.streams import (AdditiveFusion, BottleneckFusion,
                                 CoAttentionFusion, ConcatFusion,
                                 CrossAttentionFusion,
                                 GatedCrossAttentionFusion)
from mmtx.layers.blocks import (AdditiveAttention, CrossAttentionBlock,
                                GatedCrossAttentionBlock, masked_mean)

FUSIONS = {
    "concat": ConcatFusion,
    "sum": SumFusion,
    "weighted_sum": WeightedSumFusion,
    "gated": GatedFusion,
    "cross_attention": CrossAttentionFusion,
    "co_attention": CoAttentionFusion,
    "m_modal": MModalFusion,
    "gated_cross_attention": GatedCrossAttentionFusion,
    "additive": AdditiveFusion,
    "bottleneck": BottleneckFusion,
    "late": LateFusion,
    "film": FiLMFusion,
    "flatten": FlattenFusion,
}

_DTYPE_FIELDS = ("dtype", "param_dtype")


def fusion_fields(name: str) -> tuple[str, ...]:
  """The config fields strategy `name` reads: its module's dataclass fields
  less the common ones it lists in `unread`."""
  cls = _lookup(name)
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.name not in ("parent", "name") + cls.unread)


def _lookup(name):
  if name not in FUSIONS:
    raise ValueError(f"unknown fusion {name!r}; known fusions: "
                     f"{', '.join(sorted(FUSIONS))}.")
  return FUSIONS[name]


def build_fusion(config: Any, *, where: str = "build_fusion",
                 **overrides) -> Fusion:
  """Builds a fusion module from a name or a config.

  Args:
    config: a key of FUSIONS, or a dict / ml_collections.ConfigDict with a
      `name` field and fields of that strategy (`fusion_fields(name)`); any
      other field is an error naming it.
    where: the config's name in error messages.
    **overrides: fields that take precedence over `config`'s.

  dtype / param_dtype may be strings ('bfloat16').
  """
  if isinstance(config, str):
    name, fields = config, {}
  elif hasattr(config, "to_dict") or isinstance(config, Mapping):
    fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    if "name" not in fields:
      raise ValueError(f"{where}: the config has no field 'name'; set it "
                       f"to one of {', '.join(sorted(FUSIONS))}.")
    name = fields.pop("name")
  else:
    raise ValueError(f"{where}: config must be a fusion name or a "
                     f"dict/ConfigDict with 'name', got "
                     f"{type(config).__name__}.")
  fields.update(overrides)
  own = fusion_fields(name)
  unread = sorted(set(fields) - set(own))
  if unread:
    raise ValueError(f"{where}: field(s) {unread} are not read by fusion "
                     f"{name!r}; its fields are {sorted(own)}.")
  for k in _DTYPE_FIELDS:
    if isinstance(fields.get(k), str):
      try:
        fields[k] = jnp.dtype(fields[k])
      except TypeError as e:
        raise ValueError(f"{where}: field {k}={fields[k]!r} is not a "
                         f"dtype name (e.g. 'float32', 'bfloat16').") from e
  return FUSIONS[name](**fields)


__all__ = [
    "FUSIONS", "build_fusion", "fusion_fields", "Fusion",
    "DirectionalFusion", "ConcatFusion", "SumFusion", "WeightedSumFusion",
    "GatedFusion", "LateFusion", "FlattenFusion", "CrossAttentionFusion",
    "AdditiveFusion", "CoAttentionFusion", "MModalFusion",
    "GatedCrossAttentionFusion", "BottleneckFusion", "FiLMFusion",
    "CrossAttentionBlock", "GatedCrossAttentionBlock", "AdditiveAttention",
    "check_inputs", "masked_mean", "resolve_m_modal",
]
