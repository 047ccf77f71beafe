"""Fusion into one vector: sum, learned weighted sum, gated (GMU) and
decision-level (late) of pooled modality vectors, and an MLP over the
flattened token sequences. Each returns one token: `[batch, 1, dim]`, mask
all True.

Every modality is first pooled by a masked mean over its real tokens. A
modality with no real token in an example (it is missing there) contributes
nothing: weights are renormalised over the modalities present.
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from mmtx.fusion.base import (Fusion, check_inputs, dense, presence_weights,
                              project)
from mmtx.layers import Mlp, masked_mean
from mmtx.layers.transformer import (ACTIVATIONS, check_choice,
                                     elementwise_activation)

COMBINES = ("mean", "weighted")
# The common fields of a strategy with no layers but its projections.
_NO_LAYERS = ("num_heads", "num_layers", "mlp_dim", "dropout_rate",
              "attention_dropout_rate", "activation", "norm", "attention_impl")


def _pooled_output(fused, dtype):
  """`[batch, dim]` -> (`[batch, 1, dim]` in dtype, all-True `[batch, 1]`)."""
  return (fused[:, None].astype(dtype),
          jnp.ones((fused.shape[0], 1), dtype=bool))


def _present(keys, masks):
  """`[batch, M]`: modality m has at least one real token."""
  return jnp.stack([jnp.any(masks[k], axis=1) for k in keys], axis=1)


def _modality_logits(m: nn.Module, keys, batch):
  """One learned logit per modality (`weight_{key}`, init 0 = equal
  weights), broadcast to `[batch, M]`."""
  logits = jnp.stack([m.param(f"weight_{k}", nn.with_logical_partitioning(
      nn.initializers.zeros_init(), ()), (), m.param_dtype) for k in keys])
  return jnp.broadcast_to(logits, (batch, len(keys)))


class SumFusion(Fusion):
  """Feature-level fusion by addition: f = sum_m mean_t(x_{m,t} W_m + b_m).

  Reads dim, dtype, param_dtype. Returns `[batch, 1, dim]`.
  """
  unread = _NO_LAYERS

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    del deterministic  # no dropout
    keys, tokens, masks = check_inputs(tokens, masks, "SumFusion")
    fused = sum(masked_mean(project(self, k, tokens[k]), masks[k])
                for k in keys)
    return _pooled_output(fused, self.dtype)


class WeightedSumFusion(Fusion):
  """Feature-level fusion with learned modality weights: f = sum_m w_m p_m,
  w = softmax(a) over the modalities present, p_m as in SumFusion and one
  learned logit a_m per modality (`weight_{key}`, init 0 = plain mean).

  Reads dim, dtype, param_dtype. Returns `[batch, 1, dim]`.
  """
  unread = _NO_LAYERS

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    del deterministic  # no dropout
    keys, tokens, masks = check_inputs(tokens, masks, "WeightedSumFusion")
    pooled = jnp.stack([masked_mean(project(self, k, tokens[k]), masks[k])
                        for k in keys], axis=1)           # [b, M, dim]
    w = presence_weights(_modality_logits(self, keys, pooled.shape[0]),
                         _present(keys, masks))           # [b, M]
    return _pooled_output(jnp.einsum("bm,bmd->bd", w, pooled), self.dtype)


class GatedFusion(Fusion):
  """Gated Multimodal Unit (Arevalo et al. 2017), for M modalities.

  x_m = masked mean of modality m's raw tokens; h_m = tanh(W_m x_m + b_m)
  (`proj_{key}`); per-feature gates z = softmax_m(W_z [x_1; ...; x_M] + b_z)
  (`gate`, `[sum d_m, M * dim]`) over the modalities present; f = sum_m z_m *
  h_m. For M = 2 the softmax of two logits is sigmoid(l_1 - l_2), i.e. the
  paper's z and 1 - z. Reads dim, dtype, param_dtype. Returns `[batch, 1,
  dim]`.
  """
  unread = _NO_LAYERS

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    del deterministic  # no dropout
    keys, tokens, masks = check_inputs(tokens, masks, "GatedFusion")
    xs = [masked_mean(tokens[k], masks[k]).astype(self.dtype) for k in keys]
    h = jnp.stack([jnp.tanh(project(self, k, x)) for k, x in zip(keys, xs)],
                  axis=1)                                  # [b, M, dim]
    logits = dense(len(keys) * self.dim, (None, "embed"), self.dtype,
                   self.param_dtype, "gate")(jnp.concatenate(xs, axis=-1))
    z = presence_weights(logits.reshape(h.shape), _present(keys, masks))
    return _pooled_output(jnp.sum(z * h.astype(jnp.float32), axis=1),
                          self.dtype)


class LateFusion(Fusion):
  """Decision-level (late) fusion (Baltrusaitis et al. 2019, Sec. 6.1):
  each modality has its own head y_m = MLP_m(masked mean of its raw tokens)
  (`head_{key}`, an mmtx.layers.Mlp to `dim`), and the heads' outputs are
  averaged (`combine='mean'`) or mixed by learned softmax weights
  (`combine='weighted'`, one logit `weight_{key}` each), over the modalities
  present. Reads dim, mlp_dim, activation, dropout_rate, combine, dtype,
  param_dtype. Returns `[batch, 1, dim]`.
  """
  combine: str = "mean"
  unread = ("num_heads", "num_layers", "attention_dropout_rate", "norm",
            "attention_impl")

  def _check_options(self):
    check_choice("LateFusion: field combine", self.combine, COMBINES)

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    keys, tokens, masks = check_inputs(tokens, masks, "LateFusion")
    ys = jnp.stack([
        Mlp(self.mlp_dim, self.activation, self.dropout_rate, out_dim=self.dim,
            dtype=self.dtype, param_dtype=self.param_dtype,
            name=f"head_{k}")(masked_mean(tokens[k], masks[k]).astype(
                self.dtype), deterministic=deterministic)
        for k in keys], axis=1)                            # [b, M, dim]
    if self.combine == "weighted":
      logits = _modality_logits(self, keys, ys.shape[0])
    else:
      logits = jnp.zeros(ys.shape[:2], jnp.float32)
    w = presence_weights(logits, _present(keys, masks))
    return _pooled_output(jnp.einsum("bm,bmd->bd", w, ys.astype(jnp.float32)),
                          self.dtype)


# swiglu gates one projection by another: not a single hidden layer.
_FLATTEN_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "swiglu")


class FlattenFusion(Fusion):
  """Feature-level fusion of whole token sequences: every modality's tokens
  (padding zeroed) are flattened and concatenated in sorted key order,
  v = [vec(x_1); ...; vec(x_M)], and an MLP maps v to `dim`: `num_layers`
  hidden layers of `mlp_dim` (`hidden_{i}`, activation, dropout), then
  `out`. Unlike the pooled strategies it keeps which token sits where: with
  a CNN feature map and a question vector this is the CNN+MLP baseline of
  the Relation Network paper (Santoro et al. 2017). The token counts fix
  the first layer's input size, so they must be the same at every call.
  Reads dim, mlp_dim, num_layers, activation (relu, gelu, quick_gelu),
  dropout_rate, dtype, param_dtype. Returns `[batch, 1, dim]`.
  """
  unread = ("num_heads", "attention_dropout_rate", "norm", "attention_impl")

  def _check_options(self):
    check_choice("FlattenFusion: field activation", self.activation,
                 _FLATTEN_ACTIVATIONS)

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    keys, tokens, masks = check_inputs(tokens, masks, "FlattenFusion")
    h = jnp.concatenate([
        (tokens[k] * masks[k][..., None]).reshape(tokens[k].shape[0], -1)
        for k in keys], axis=-1).astype(self.dtype)
    first = "hidden_0" if self.num_layers else "out"
    if not self.is_initializing() and "params" in self.variables:
      want = nn.meta.unbox(self.variables["params"][first]["kernel"]).shape[0]
      if h.shape[-1] != want:
        counts = {k: tuple(tokens[k].shape[1:]) for k in keys}
        raise ValueError(
            f"FlattenFusion: the flattened tokens have {h.shape[-1]} "
            f"features ([tokens, width] per modality: {counts}), the "
            f"parameters expect {want}: flatten needs the token counts it "
            f"was initialised with (pad every sequence to the same length).")
    act = elementwise_activation(self.activation)
    for i in range(self.num_layers):
      h = dense(self.mlp_dim, (None, "mlp"), self.dtype, self.param_dtype,
                f"hidden_{i}")(h)
      h = nn.Dropout(self.dropout_rate)(
          act(h),
          deterministic=deterministic)
    out = dense(self.dim, ("mlp" if self.num_layers else None, "embed"),
                self.dtype, self.param_dtype, "out")(h)
    return _pooled_output(out, self.dtype)
