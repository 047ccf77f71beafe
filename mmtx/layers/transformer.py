"""Transformer blocks and stacks (Vaswani et al. 2017, Sec. 3.1 and 3.3).

Post-norm (the paper): Z = LN(X + MHA(X)), O = LN(Z + FFN(Z)).
Pre-norm (GPT-2 / ViT): Z = X + MHA(LN(X)), O = Z + FFN(LN(Z)), final LN.
Token masks are `[batch, tokens]` booleans, True = real token.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from jax.ad_checkpoint import checkpoint_name

from mmtx import sharding
from mmtx.layers.attention import MultiHeadAttention, mask_kwargs

Array = jax.Array
Dtype = Any

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "quick_gelu", "swiglu")
NORMS = ("post", "pre")
# Activations tagged with `checkpoint_name`, for the policies that name them:
# the q/k/v projections (`[batch, tokens, heads, head_dim]`, in
# MultiHeadAttention) and the FFN's first projection (before the activation).
QKV_NAMES = ("query_proj", "key_proj", "value_proj")
MLP_NAMES = ("mlp_in",)
REMAT_POLICIES = {
    "none": None,  # no remat
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep q/k/v (recompute attention and the FFN), or q/k/v and the FFN's
    # first projection (recompute attention, the activation and the rest).
    "qkv": jax.checkpoint_policies.save_only_these_names(*QKV_NAMES),
    "qkv_mlp": jax.checkpoint_policies.save_only_these_names(
        *QKV_NAMES, *MLP_NAMES),
}


def check_choice(what: str, value, choices):
  """A ValueError naming `what` unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f"{what} must be one of {tuple(choices)}, got "
                     f"{value!r}.")


def elementwise_activation(name: str):
  """The one-input activations of `Mlp` by name: relu, gelu (exact, erf),
  gelu_tanh (the tanh approximation, SigLIP), quick_gelu (x * sigmoid(1.702
  x), CLIP). swiglu is not one: it gates one projection by another, so it
  lives in `Mlp` itself."""
  if name == "relu":
    return nn.relu
  if name == "quick_gelu":
    return lambda h: h * nn.sigmoid(1.702 * h)
  if name == "gelu":
    return lambda h: nn.gelu(h, approximate=False)
  if name == "gelu_tanh":
    return lambda h: nn.gelu(h, approximate=True)
  raise ValueError(f"activation {name!r} is not an elementwise one; expected "
                   f"relu, gelu, gelu_tanh or quick_gelu.")


@functools.lru_cache(maxsize=None)
def _field_names(cls) -> frozenset:
  return frozenset(f.name for f in dataclasses.fields(cls)) - {"parent",
                                                               "name"}


def shared_fields(module: nn.Module, cls, **overrides) -> dict:
  """The fields `module` shares with the module class `cls` (same name, so
  the same meaning: num_heads, mlp_dim, norm, activation, dropout rates,
  dtypes, attention_impl, ...) as keyword arguments of `cls`, `overrides`
  on top. How a module hands its settings to the blocks it builds, so
  each field is declared once per module and never copied by hand."""
  out = {n: getattr(module, n)
         for n in _field_names(cls) & _field_names(type(module))}
  out.update(overrides)
  return out


def _kernel(names):
  return nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def layer_norm(dtype, param_dtype, name, eps=1e-6):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      scale_init=nn.with_logical_partitioning(
                          nn.initializers.ones_init(), ("embed",)),
                      bias_init=_zeros(("embed",)), name=name)


class Mlp(nn.Module):
  """Position-wise FFN. relu: max(0, x W1 + b1) W2 + b2 (Vaswani et al. Eq. 2);
  gelu: GELU(x W1 + b1) W2 + b2; quick_gelu: x * sigmoid(1.702 x) (CLIP);
  swiglu: (Swish(x W) * (x V)) W2 (Shazeer 2020).
  """
  hidden_dim: int
  activation: str = "relu"
  dropout_rate: float = 0.0
  out_dim: Optional[int] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    check_choice("Mlp: activation", self.activation, ACTIVATIONS)
    out_dim = self.out_dim or x.shape[-1]
    hidden_names = sharding.MLP_HIDDEN if x.ndim == 3 else (
        ("act_batch",) + (None,) * (x.ndim - 2) + ("act_mlp",)
        if x.ndim >= 2 else None)

    def dense_in(name):
      h = nn.Dense(self.hidden_dim, dtype=self.dtype,
                   param_dtype=self.param_dtype,
                   kernel_init=_kernel(("embed", "mlp")),
                   bias_init=_zeros(("mlp",)), name=name)(x)
      if hidden_names is not None:
        h = sharding.constrain(h, hidden_names)
      return checkpoint_name(h, "mlp_in")
    if self.activation == "swiglu":
      h = nn.swish(dense_in("wi_0")) * dense_in("wi_1")
    else:
      h = elementwise_activation(self.activation)(dense_in("wi"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return nn.Dense(out_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=_kernel(("mlp", "embed")),
                    bias_init=_zeros(("embed",)), name="wo")(h)


def _check_token_mask(mask, x):
  """None | `[batch, tokens]` | rank-4 attention mask, checked."""
  if mask is None or mask.ndim == 4:
    return mask
  if mask.shape != x.shape[:2]:
    raise ValueError(f"token mask must have shape [batch, tokens] = "
                     f"{x.shape[:2]}, got {mask.shape}.")
  return mask.astype(bool)


def _self_attention_masks(mask, implementation, causal):
  """MultiHeadAttention mask arguments for self-attention under a token
  mask `[batch, tokens]` (padded queries and keys both masked) or a rank-4
  mask, plus causality."""
  if mask is None or mask.ndim == 2:
    return mask_kwargs(implementation, mask, mask, causal=causal)
  return dict(mask=mask, causal=causal)


def _check_tokens(x, who):
  if x.ndim != 3:
    raise ValueError(f"{who}: inputs must be rank 3 [batch, tokens, dim], got "
                     f"shape {x.shape}.")


class BlockFields(nn.Module):
  """The fields of the attention-block family, declared once: EncoderBlock,
  DecoderBlock, Encoder, Decoder, mmtx.layers.CrossAttentionBlock and every
  fusion strategy have them (a block hands them on with `shared_fields`).

  num_heads, mlp_dim (FFN hidden width), norm ('pre': x + f(LN(x)), 'post':
  LN(x + f(x))), activation (see `Mlp`), dropout_rate (residual and FFN),
  attention_dropout_rate, dtype (compute), param_dtype, attention_impl
  (MultiHeadAttention's `implementation`).
  """
  num_heads: int
  mlp_dim: int
  norm: str = "pre"
  activation: str = "gelu"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "xla"


class _LayerFields(BlockFields):
  """BlockFields plus the LayerNorm epsilon and whether attention weights
  are sown (to 'intermediates'), as the encoder and decoder have."""
  layer_norm_eps: float = 1e-6
  sow_weights: bool = False


class EncoderBlock(_LayerFields):
  """One Transformer encoder layer: self-attention + FFN, each with residual
  dropout and LayerNorm placed by `norm` ('post' = the paper, 'pre');
  `causal` makes token i attend to tokens j <= i (a GPT/CLIP text tower)."""
  norm: str = "post"
  activation: str = "relu"
  causal: bool = False

  def __call__(self, x: Array, mask: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    """x `[batch, tokens, dim]`; mask `[batch, tokens]` (padding) or a rank-4
    attention mask. Returns `[batch, tokens, dim]`."""
    check_choice("EncoderBlock: norm", self.norm, NORMS)
    _check_tokens(x, "EncoderBlock")
    return self.layer(x, _check_token_mask(mask, x),
                      deterministic=deterministic)

  @nn.compact
  def layer(self, x: Array, mask: Optional[Array] = None, *,
            deterministic: bool = True) -> Array:
    """The layer on inputs already checked (`__call__`'s, a stack's or a
    fusion strategy's checks): mask None, boolean `[batch, tokens]` or rank
    4."""
    x = sharding.constrain(x, sharding.TOKENS)  # no-op outside use_rules
    masks = _self_attention_masks(mask, self.attention_impl, self.causal)
    attn = MultiHeadAttention(
        num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        implementation=self.attention_impl, sow_weights=self.sow_weights,
        name="attention")
    mlp = Mlp(self.mlp_dim, self.activation, self.dropout_rate, dtype=self.dtype,
              param_dtype=self.param_dtype, name="mlp")
    drop = nn.Dropout(self.dropout_rate)
    ln1 = layer_norm(self.dtype, self.param_dtype, "ln_attention",
                      self.layer_norm_eps)
    ln2 = layer_norm(self.dtype, self.param_dtype, "ln_mlp",
                      self.layer_norm_eps)
    if self.norm == "post":
      z = ln1(x + drop(attn(x, deterministic=deterministic, **masks),
                       deterministic=deterministic))
      return sharding.constrain(
          ln2(z + drop(mlp(z, deterministic=deterministic),
                       deterministic=deterministic)), sharding.TOKENS)
    h = ln1(x)
    z = x + drop(attn(h, deterministic=deterministic, **masks),
                 deterministic=deterministic)
    return sharding.constrain(
        z + drop(mlp(ln2(z), deterministic=deterministic),
                 deterministic=deterministic), sharding.TOKENS)


class DecoderBlock(_LayerFields):
  """Decoder layer (Vaswani et al. Sec. 3.1): masked self-attention,
  cross-attention to `context` (another modality), FFN; residual + LN each.

  `decode=True` keeps a self-attention KV cache (see MultiHeadAttention).
  """
  norm: str = "post"
  activation: str = "relu"
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, context: Optional[Array] = None,
               mask: Optional[Array] = None,
               context_mask: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    """x `[batch, t, dim]`; context `[batch, s, dim_c]` or None (then no
    cross-attention: a decoder-only LM); mask `[batch, t]` target padding
    (causality is added here; `[batch, cache_len]` key padding when
    decoding); context_mask `[batch, s]`. The inputs are checked by the
    caller (`Decoder` checks x and norm, `mmtx.models.Captioner` the texts,
    context and masks)."""
    x = sharding.constrain(x, sharding.TOKENS)
    if self.decode:
      # The cache builds the causal mask; target padding applies to keys.
      self_masks = dict(mask=mask)
    else:
      self_masks = _self_attention_masks(mask, self.attention_impl, True)
    drop = nn.Dropout(self.dropout_rate)
    mha = lambda name, sow=False: MultiHeadAttention(  # noqa: E731
        num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        implementation=self.attention_impl, sow_weights=sow,
        decode=self.decode and name == "self_attention", name=name)
    sublayers = [lambda h: mha("self_attention")(
        h, deterministic=deterministic, **self_masks)]
    if context is not None:
      cross_masks = {}
      if context_mask is not None:
        q_mask = None if self.decode else mask
        cross_masks = mask_kwargs(self.attention_impl, q_mask, context_mask)
      sublayers.append(lambda h: mha("cross_attention", self.sow_weights)(
          h, context, deterministic=deterministic, **cross_masks))
    mlp = Mlp(self.mlp_dim, self.activation, self.dropout_rate, dtype=self.dtype,
              param_dtype=self.param_dtype, name="mlp")
    sublayers.append(lambda h: mlp(h, deterministic=deterministic))
    names = ["ln_self_attention", "ln_cross_attention", "ln_mlp"]
    if context is None:
      names = [names[0], names[2]]
    for fn, ln_name in zip(sublayers, names):
      ln = layer_norm(self.dtype, self.param_dtype, ln_name,
                       self.layer_norm_eps)
      if self.norm == "post":
        x = ln(x + drop(fn(x), deterministic=deterministic))
      else:
        x = x + drop(fn(ln(x)), deterministic=deterministic)
    return sharding.constrain(x, sharding.TOKENS)


# ----------------------------------------------------------------------------
# Stacks: a plain loop of named layers, or nn.scan over one stacked layer.
# ----------------------------------------------------------------------------
class _ScannedEncoderBlock(EncoderBlock):
  deterministic: bool = True

  def __call__(self, x, mask):  # pytype: disable=signature-mismatch
    return self.layer(x, mask, deterministic=self.deterministic), None


class _ScannedDecoderBlock(DecoderBlock):
  deterministic: bool = True

  def __call__(self, x, context, mask, context_mask):  # pytype: disable=signature-mismatch
    return super().__call__(x, context, mask, context_mask,
                            deterministic=self.deterministic), None


def _stack(block_cls, scan: bool, remat: str, num_layers: int, num_args: int,
           variable_axes):
  check_choice("remat policy", remat, sorted(REMAT_POLICIES))
  if remat != "none":
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[remat],
                         prevent_cse=not scan)
  if scan:
    block_cls = nn.scan(block_cls, variable_axes=variable_axes,
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast,) * num_args, length=num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
  return block_cls


class Encoder(_LayerFields):
  """A stack of `num_layers` EncoderBlocks (+ a final LN when norm='pre').

  `scan=True` stores the layers' params stacked under `layers` (leading axis =
  layer) and runs them with `nn.scan`; otherwise as `layers_0 ... layers_{L-1}`.
  `remat` names a policy of `REMAT_POLICIES` for `nn.remat` ('none': off).
  """
  num_layers: int = dataclasses.field(kw_only=True)
  scan: bool = False
  remat: str = "none"
  causal: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    check_choice("Encoder: norm", self.norm, NORMS)
    _check_tokens(x, "Encoder")
    attn_mask = _check_token_mask(mask, x)
    kw = shared_fields(self, _ScannedEncoderBlock,
                       deterministic=deterministic)
    block = _stack(_ScannedEncoderBlock, self.scan, self.remat, self.num_layers,
                   1, {"params": 0, "intermediates": 0})
    if self.scan:
      x, _ = block(name="layers", **kw)(x, attn_mask)
    else:
      for i in range(self.num_layers):
        x, _ = block(name=f"layers_{i}", **kw)(x, attn_mask)
    if self.norm == "pre":
      x = layer_norm(self.dtype, self.param_dtype, "ln_final",
                      self.layer_norm_eps)(x)
    return x


class Decoder(_LayerFields):
  """A stack of `num_layers` DecoderBlocks (+ final LN when norm='pre'), with
  the same `scan` / `remat` options as Encoder and a KV cache when `decode`.
  It checks x's rank and norm; context and the masks are its caller's to
  check (`mmtx.models.Captioner` checks them where they enter)."""
  num_layers: int = dataclasses.field(kw_only=True)
  scan: bool = False
  remat: str = "none"
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, context: Optional[Array] = None,
               mask: Optional[Array] = None,
               context_mask: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    check_choice("Decoder: norm", self.norm, NORMS)
    _check_tokens(x, "Decoder")
    kw = shared_fields(self, _ScannedDecoderBlock,
                       deterministic=deterministic)
    block = _stack(_ScannedDecoderBlock, self.scan, self.remat,
                   self.num_layers, 3,
                   {"params": 0, "cache": 0, "intermediates": 0})
    if self.scan:
      x, _ = block(name="layers", **kw)(x, context, mask, context_mask)
    else:
      for i in range(self.num_layers):
        x, _ = block(name=f"layers_{i}", **kw)(x, context, mask, context_mask)
    if self.norm == "pre":
      x = layer_norm(self.dtype, self.param_dtype, "ln_final",
                      self.layer_norm_eps)(x)
    return x
