"""What every fusion module shares: the common config fields, input checks
and per-modality projections (the attention blocks they stack are in
mmtx.layers.blocks).

Modality order: wherever modalities are concatenated, stacked or summed they
go in sorted key order (the order `jax.tree_util` flattens a dict in), so the
output never depends on the caller's dict order.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from mmtx.layers.transformer import (ACTIVATIONS, NORMS, BlockFields,
                                     layer_norm)

Array = jax.Array
Dtype = Any


class Fusion(BlockFields):
  """Fields common to every strategy, so a config switches strategy by name:
  the attention-block family's (`mmtx.layers.BlockFields`) plus `dim`, the
  common width, and `num_layers`.

  A strategy lists the common fields it does not read in `unread`;
  `build_fusion` rejects a config that sets one, so a config names only
  fields its strategy reads. `dtype` is the compute dtype;
  parameters are `param_dtype` (float32). Called as `fuse(tokens, masks, *,
  deterministic=True) -> (fused_tokens [batch, n_out, dim], fused_mask
  [batch, n_out])`, tokens `[batch, n_m, d_m]` and boolean masks `[batch,
  n_m]` (True = real token) keyed by modality.
  """
  num_heads: int = 4
  mlp_dim: int = 1024
  dim: int = 256
  num_layers: int = 1
  # True where the strategy takes `independent_targets=True` at call time:
  # each target token then attends to the context (and, in self-attention,
  # to itself) only, so several independent queries - e.g. the questions
  # about one image - can share one sequence and one pass over the context.
  takes_independent_targets: ClassVar[bool] = False
  # The common fields the strategy does not read (it has no layer that
  # uses them); the others are checked when it is built.
  unread: ClassVar[tuple] = ()

  def __post_init__(self):
    self._check_options()
    self._check_fields()
    super().__post_init__()

  def _check_options(self):
    """Checks the strategy's own fields (a subclass with some overrides)."""

  def token_offset(self, key: str, lengths: Mapping[str, int]):
    """Where modality `key`'s tokens start in the fused output, given the
    token count of each modality (`lengths`), or None where the output does
    not keep them one per position (pooled strategies)."""
    del key, lengths
    return None

  def _check_fields(self):
    """Validates the common fields the strategy reads."""
    who = type(self).__name__
    checks = {
        "dim": (self.dim > 0, "a positive int"),
        "num_heads": (self.num_heads > 0 and self.dim % self.num_heads == 0,
                      f"a positive divisor of dim={self.dim}"),
        "num_layers": (self.num_layers >= 0, "an int >= 0"),
        "mlp_dim": (self.mlp_dim > 0, "a positive int"),
        "dropout_rate": (0.0 <= self.dropout_rate < 1.0, "in [0, 1)"),
        "attention_dropout_rate": (0.0 <= self.attention_dropout_rate < 1.0,
                                   "in [0, 1)"),
        "activation": (self.activation in ACTIVATIONS, f"one of {ACTIVATIONS}"),
        "norm": (self.norm in NORMS, f"one of {NORMS}"),
    }
    for name, (ok, want) in checks.items():
      if name not in self.unread and not ok:
        raise ValueError(f"{who}: field {name} must be {want}, got "
                         f"{getattr(self, name)!r}.")


class DirectionalFusion(Fusion):
  """A fusion where one modality, `target`, queries the others (the context).

  `target` names a key of `tokens`; None picks the first key in sorted order
  (e.g. 'image' before 'text'), so set it explicitly, e.g. target='text' for
  text querying image as in ALBEF. The context is the concatenation, in
  sorted key order, of every other modality's projected tokens.
  """
  target: Optional[str] = None

  def token_offset(self, key, lengths):
    """The target's tokens start the output; other modalities are not in it."""
    return 0 if key == self._split(sorted(lengths))[0] else None

  def _split(self, keys: Sequence[str]):
    """-> (target key, context keys)."""
    target = keys[0] if self.target is None else self.target
    if target not in keys:
      raise ValueError(f"{type(self).__name__}: field target={target!r} is not "
                       f"a modality of tokens {list(keys)}; set target to one "
                       f"of them.")
    return target, [k for k in keys if k != target]


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------
def check_inputs(tokens: Mapping[str, Array], masks: Mapping[str, Array],
                 who: str, min_modalities: int = 1):
  """Validates the `(tokens, masks)` pair of a fusion call.

  Returns `(keys, tokens, masks)`: the sorted modality keys, and dicts of
  arrays with masks cast to bool.
  """
  if not isinstance(tokens, Mapping) or not tokens:
    raise ValueError(f"{who}: tokens must be a non-empty dict modality -> "
                     f"[batch, tokens, dim] array, got {type(tokens).__name__}"
                     f" {tokens!r:.80}.")
  if not isinstance(masks, Mapping):
    raise ValueError(f"{who}: masks must be a dict modality -> boolean [batch, "
                     f"tokens] array, got {type(masks).__name__}.")
  bad = [k for k in tokens if not isinstance(k, str)]
  if bad:
    raise ValueError(f"{who}: modality keys must be strings, got {bad}.")
  missing = sorted(set(tokens) - set(masks))
  if missing:
    raise ValueError(f"{who}: masks has no entry for modality {missing} "
                     f"(tokens has {sorted(tokens)}); pass a boolean [batch, "
                     f"tokens] mask for every modality, all True if it has no "
                     f"padding.")
  extra = sorted(set(masks) - set(tokens))
  if extra:
    raise ValueError(f"{who}: masks has modality {extra} that tokens lacks "
                     f"(tokens has {sorted(tokens)}).")
  if len(tokens) < min_modalities:
    raise ValueError(f"{who}: needs at least {min_modalities} modalities, got "
                     f"{len(tokens)}: {sorted(tokens)}.")
  keys = sorted(tokens)
  batch = None
  out_t, out_m = {}, {}
  for k in keys:
    x, m = jnp.asarray(tokens[k]), jnp.asarray(masks[k])
    if x.ndim != 3:
      raise ValueError(f"{who}: tokens[{k!r}] must be rank 3 [batch, tokens, "
                       f"dim], got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{who}: tokens[{k!r}] must be floating point "
                       f"embeddings, got dtype {x.dtype}; embed ids first.")
    if m.shape != x.shape[:2]:
      raise ValueError(f"{who}: masks[{k!r}] must have shape [batch, tokens] = "
                       f"{x.shape[:2]} to match tokens[{k!r}] {x.shape}, got "
                       f"{m.shape}.")
    if m.dtype != jnp.bool_ and not jnp.issubdtype(m.dtype, jnp.integer):
      raise ValueError(f"{who}: masks[{k!r}] must be boolean (True = real "
                       f"token), got dtype {m.dtype}.")
    if batch is None:
      batch, first = x.shape[0], k
    elif x.shape[0] != batch:
      raise ValueError(f"{who}: tokens[{k!r}] has batch {x.shape[0]} but "
                       f"tokens[{first!r}] has batch {batch}.")
    out_t[k], out_m[k] = x, m.astype(bool)
  return keys, out_t, out_m


def presence_weights(logits: Array, present: Array) -> Array:
  """Softmax over the modality axis restricted to the modalities present.

  logits `[batch, M, ...]`, present `[batch, M]` (modality has a real token).
  Returns float32 weights of logits' shape that sum to 1 over the present
  modalities, all zeros in an example where none is present.
  """
  present = present.reshape(present.shape + (1,) * (logits.ndim - 2))
  logits = jnp.where(present, logits.astype(jnp.float32),
                     jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=1) * jnp.any(present, axis=1,
                                                  keepdims=True)


def dense(features: int, names, dtype, param_dtype, name: str,
          kernel_init=nn.initializers.xavier_uniform()) -> nn.Dense:
  """A Dense layer with logically partitioned params (kernel `names`)."""
  return nn.Dense(
      features, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             names[-1:]),
      name=name)


def project(m: Fusion, key: str, x: Array) -> Array:
  """Modality `key`'s tokens `[batch, n, d_m]` -> `[batch, n, dim]` by its own
  linear map `proj_{key}` (the common width every strategy works at)."""
  return dense(m.dim, (None, "embed"), m.dtype, m.param_dtype,
               f"proj_{key}")(x)


def concat_tokens(xs: Sequence[Array], ms: Sequence[Array]):
  """Concatenates token lists and their masks along the token axis."""
  return jnp.concatenate(xs, axis=1), jnp.concatenate(ms, axis=1)


def final_norm(m: Fusion, x: Array, name: str) -> Array:
  """The closing LayerNorm of a pre-norm stack (identity for post-norm)."""
  if m.norm != "pre":
    return x
  return layer_norm(m.dtype, m.param_dtype, name)(x)
