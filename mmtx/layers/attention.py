"""Scaled dot-product and multi-head attention (Vaswani et al. 2017, Sec. 3.2).

Shapes: queries `[batch, q_len, heads, head_dim]`, keys/values
`[batch, kv_len, heads, head_dim]`; masks are boolean, True = attend, and
broadcast to `[batch, heads, q_len, kv_len]`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from mmtx import sharding

Array = jax.Array
Dtype = Any

# 'xla': einsum + masked softmax, everywhere. 'cudnn': cuDNN flash attention
# (GPU, bf16/fp16, no attention dropout) with structural masks only: causal
# and sequence lengths. 'auto': cuDNN where it applies without a dense mask.
IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def check_implementation(implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of "
                     f"{IMPLEMENTATIONS}, got {implementation!r}.")
  return implementation


# ----------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------
def padding_mask(q_mask: Array, kv_mask: Optional[Array] = None) -> Array:
  """`[batch, q]` and `[batch, kv]` token masks -> `[batch, 1, q, kv]`."""
  kv_mask = q_mask if kv_mask is None else kv_mask
  return jnp.logical_and(q_mask[:, None, :, None], kv_mask[:, None, None, :])


def causal_mask(length: int, kv_length: Optional[int] = None) -> Array:
  """`[1, 1, length, kv_length]`: query i sees keys j <= i (aligned at 0)."""
  kv_length = length if kv_length is None else kv_length
  return jnp.tril(jnp.ones((length, kv_length), dtype=bool))[None, None]


def combine_masks(*masks: Optional[Array]) -> Optional[Array]:
  """Logical AND of the masks that are not None (broadcasting)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  return functools.reduce(jnp.logical_and, [m.astype(bool) for m in masks])


def lengths_mask(length: int, kv_length: int,
                 query_seq_lengths: Optional[Array] = None,
                 key_value_seq_lengths: Optional[Array] = None):
  """`[batch, 1, length, kv_length]` mask of the first `query_seq_lengths`
  queries and `key_value_seq_lengths` keys (`[batch]` each; None = all)."""
  q = kv = None
  if query_seq_lengths is not None:
    q = (jnp.arange(length)[None, :] <
         jnp.asarray(query_seq_lengths)[:, None])[:, None, :, None]
  if key_value_seq_lengths is not None:
    kv = (jnp.arange(kv_length)[None, :] <
          jnp.asarray(key_value_seq_lengths)[:, None])[:, None, None, :]
  return combine_masks(q, kv)


def padding_lengths(token_mask, name: str = "mask") -> Array:
  """`[batch, tokens]` prefix mask (True then False per row) -> `[batch]`
  int32 lengths. A mask known here (not traced) that is not a prefix is a
  ValueError; under `jit` the mask's rows must be prefixes (token ids padded
  at the end, as every mmtx tokenizer pads)."""
  if token_mask.ndim != 2:
    raise ValueError(f"{name}: a padding mask converted to sequence lengths "
                     f"is [batch, tokens], got shape {token_mask.shape}.")
  if not isinstance(token_mask, jax.core.Tracer):
    m = np.asarray(token_mask).astype(bool)
    n = m.sum(axis=1)
    prefix = np.arange(m.shape[1])[None, :] < n[:, None]
    bad = np.flatnonzero((m != prefix).any(axis=1))
    if bad.size:
      raise ValueError(
          f"{name}: implementation='cudnn' takes padding as sequence lengths, "
          f"so each row of the [batch, tokens] mask must be True then False; "
          f"rows {bad[:5].tolist()} are not (row {bad[0]}: "
          f"{m[bad[0]].astype(int).tolist()}). Pad at the end, or use "
          f"implementation='xla'.")
  return jnp.sum(token_mask.astype(jnp.int32), axis=1)


def mask_kwargs(implementation: str, q_mask: Optional[Array] = None,
                kv_mask: Optional[Array] = None, *, causal: bool = False):
  """MultiHeadAttention keyword arguments for `[batch, q]` / `[batch, kv]`
  token masks (True = real token; None = all real): sequence lengths for
  'cudnn' (prefix masks), else the dense mask of `padding_mask`. A padded
  query row attends to nothing (its output is zero) either way."""
  if implementation == "cudnn":
    return dict(
        causal=causal,
        query_seq_lengths=None if q_mask is None else padding_lengths(
            q_mask, "query mask"),
        key_value_seq_lengths=None if kv_mask is None else padding_lengths(
            kv_mask, "key/value mask"))
  if q_mask is None and kv_mask is None:
    mask = None
  elif q_mask is None:
    mask = kv_mask.astype(bool)[:, None, None, :]
  elif kv_mask is None:
    mask = q_mask.astype(bool)[:, None, :, None]
  else:
    mask = padding_mask(q_mask.astype(bool), kv_mask.astype(bool))
  return dict(mask=mask, causal=causal)


def check_mask(mask, batch: int, heads: int, q_len: int, kv_len: int):
  """Accepts `[batch, kv]` (key padding) or a rank-4 mask; returns rank 4."""
  if mask is None:
    return None
  shape = tuple(mask.shape)
  if len(shape) == 2:
    if shape not in ((batch, kv_len), (1, kv_len)):
      raise ValueError(
          f"mask: a rank-2 mask is a key padding mask of shape [batch, kv_len]"
          f" = {(batch, kv_len)}, got {shape}.")
    return mask[:, None, None, :].astype(bool)
  if len(shape) != 4:
    raise ValueError(
        f"mask: expected rank 2 [batch, kv_len] or rank 4 [batch, heads|1, "
        f"q_len, kv_len] = {(batch, heads, q_len, kv_len)}, got shape {shape}.")
  for got, want, name in zip(shape, (batch, heads, q_len, kv_len),
                             ("batch", "heads", "q_len", "kv_len")):
    if got not in (1, want):
      raise ValueError(
          f"mask: dimension {name} is {got}, expected 1 or {want}; full "
          f"expected shape [batch, heads, q_len, kv_len] = "
          f"{(batch, heads, q_len, kv_len)}, got {shape}.")
  return mask.astype(bool)


def _check_lengths(lengths, batch, name):
  if lengths is not None and tuple(jnp.shape(lengths)) != (batch,):
    raise ValueError(f"dot_product_attention: {name} must have shape [batch]"
                     f" = ({batch},), got {tuple(jnp.shape(lengths))}.")


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------
def _xla_attention(q, k, v, mask, bias, dropout_rng, dropout_rate,
                   deterministic, dtype, return_weights):
  depth = q.shape[-1]
  q = q / jnp.sqrt(depth).astype(q.dtype)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  weights = attention_weights(logits, mask, dropout_rng, dropout_rate,
                              deterministic)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(dtype), v.astype(dtype))
  return out, (weights if return_weights else None)


def attention_weights(logits, mask, dropout_rng, dropout_rate: float,
                      deterministic: bool):
  """Masked softmax over keys of `[batch, heads, q_len, kv_len]` logits (in
  float32), with attention dropout; whatever scored the logits (dot product,
  additive). A query row with no visible key gets zeros, not NaN and not a
  uniform average over masked keys."""
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if mask is not None:
    weights = weights * jnp.any(mask, axis=-1, keepdims=True)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = weights * keep / (1.0 - dropout_rate)
  return weights


def _pad_axis(x, axis, target):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, target - x.shape[axis])
  return jnp.pad(x, pad)


def _cudnn_attention(q, k, v, bias, causal, q_lengths, kv_lengths,
                     pad_multiple):
  """cuDNN flash attention via `jax.nn.dot_product_attention`, masked only
  by structure: `causal` and `[batch]` sequence lengths (cuDNN's PADDING /
  CAUSAL mask types; no `[b, h, t, s]` mask is built).

  cuDNN rejects some sequence lengths (training with a mask needs even
  lengths, e.g. ViT-B/16's 197 fails): q/k/v are padded to a multiple of
  `pad_multiple`, expressed as sequence lengths; padded queries are dropped.
  Query rows past their length, or with no key (length 0), return zeros.
  """
  b, t = q.shape[:2]
  s = k.shape[1]
  tp = -(-t // pad_multiple) * pad_multiple
  sp = -(-s // pad_multiple) * pad_multiple
  if (tp, sp) != (t, s) or q_lengths is not None or kv_lengths is not None:
    full = lambda n: jnp.full((b,), n, jnp.int32)  # noqa: E731
    q_lengths = full(t) if q_lengths is None else q_lengths.astype(jnp.int32)
    kv_lengths = full(s) if kv_lengths is None else kv_lengths.astype(
        jnp.int32)
    q, k, v = _pad_axis(q, 1, tp), _pad_axis(k, 1, sp), _pad_axis(v, 1, sp)
    if bias is not None:
      bias = jnp.pad(jnp.broadcast_to(bias, (b,) + bias.shape[1:2] + (t, s)),
                     ((0, 0), (0, 0), (0, tp - t), (0, sp - s)))
  out = jax.nn.dot_product_attention(
      q, k, v, bias=bias, is_causal=causal, query_seq_lengths=q_lengths,
      key_value_seq_lengths=kv_lengths, implementation="cudnn")[:, :t]
  if q_lengths is None:
    return out
  live = jnp.arange(t)[None, :] < q_lengths[:, None]        # [b, t]
  live = jnp.logical_and(live, (kv_lengths > 0)[:, None])
  return out * live[:, :, None, None].astype(out.dtype)


def dot_product_attention(query: Array,
                          key: Array,
                          value: Array,
                          mask: Optional[Array] = None,
                          *,
                          causal: bool = False,
                          query_seq_lengths: Optional[Array] = None,
                          key_value_seq_lengths: Optional[Array] = None,
                          bias: Optional[Array] = None,
                          implementation: str = "xla",
                          dropout_rng: Optional[Array] = None,
                          dropout_rate: float = 0.0,
                          deterministic: bool = True,
                          dtype: Optional[Dtype] = None,
                          cudnn_pad_multiple: int = 8,
                          return_weights: bool = False):
  """softmax(Q K^T / sqrt(d) + bias) V, with boolean masking.

  Args:
    query: `[batch, q_len, heads, head_dim]`.
    key, value: `[batch, kv_len, heads, head_dim]`.
    mask: boolean, True = attend; `[batch, kv_len]` (key padding) or
      broadcastable `[batch, heads|1, q_len, kv_len]`. Rows with no visible key
      return zeros. 'cudnn' takes only the `[batch, kv_len]` form, as lengths.
    causal: query i sees keys j <= i (aligned at 0).
    query_seq_lengths, key_value_seq_lengths: `[batch]` int: only the first
      that many queries / keys are real (padded queries return zeros).
    bias: optional additive logits bias, broadcastable like `mask`.
    implementation: one of IMPLEMENTATIONS ('xla', 'cudnn', 'auto').
    return_weights: also return the `[batch, heads, q_len, kv_len]` attention
      probabilities (xla path only; None otherwise).

  Returns:
    `(out, weights)` if `return_weights` else `out`, out `[batch, q_len, heads,
    head_dim]` in `dtype` (default: query's dtype).
  """
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise ValueError(
        "dot_product_attention: query, key and value must be rank 4 [batch, "
        f"len, heads, head_dim]; got {query.shape}, {key.shape}, {value.shape}.")
  b, t, h, d = query.shape
  s = key.shape[1]
  if key.shape[0] != b or key.shape[2:] != (h, d):
    raise ValueError(f"dot_product_attention: key shape {key.shape} does not "
                     f"match query shape {query.shape} in batch/heads/head_dim.")
  if value.shape[:3] != key.shape[:3]:
    raise ValueError(f"dot_product_attention: value shape {value.shape} does "
                     f"not match key shape {key.shape} in batch/len/heads.")
  check_implementation(implementation)
  _check_lengths(query_seq_lengths, b, "query_seq_lengths")
  _check_lengths(key_value_seq_lengths, b, "key_value_seq_lengths")
  dtype = dtype or query.dtype
  use_dropout = (not deterministic) and dropout_rate > 0.0
  if use_dropout and dropout_rng is None:
    raise ValueError("dot_product_attention: dropout_rate > 0 and "
                     "deterministic=False need a dropout_rng.")
  # Only the kernel choice asks for the backend: with 'xla', tracing (e.g.
  # a config working out parameter shapes) leaves JAX's backends unstarted.
  on_gpu = implementation != "xla" and jax.default_backend() == "gpu"
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if implementation == "cudnn":
    if not on_gpu:
      raise ValueError("implementation='cudnn' needs a GPU backend; the "
                       f"default backend is {jax.default_backend()!r}. Use "
                       "'xla' or 'auto'.")
    if not half:
      raise ValueError("implementation='cudnn' needs bfloat16/float16 compute "
                       f"(dtype={jnp.dtype(dtype).name}); use 'xla' or 'auto'.")
    if use_dropout:
      raise ValueError("implementation='cudnn' has no attention dropout; set "
                       "attention dropout to 0 or use 'xla'.")
    if mask is not None and mask.ndim != 2:
      raise ValueError(
          f"implementation='cudnn' takes masks by structure, not a dense "
          f"{tuple(mask.shape)} mask: causal=True and sequence lengths "
          f"(query_seq_lengths / key_value_seq_lengths; mask_kwargs builds "
          f"them from [batch, tokens] padding masks). Use 'xla' for other "
          f"masks.")
  use_cudnn = implementation == "cudnn" or (
      implementation == "auto" and on_gpu and half and not use_dropout and
      not return_weights and d <= 128 and d % 8 == 0 and mask is None)
  if use_cudnn:
    if mask is not None:
      if tuple(mask.shape) != (b, s):
        check_mask(mask, b, h, t, s)   # the shape error, if any
        raise ValueError(f"mask: a key padding mask for cudnn is [batch, "
                         f"kv_len] = {(b, s)}, got {tuple(mask.shape)}.")
      kv_len = padding_lengths(mask, "mask")
      key_value_seq_lengths = kv_len if key_value_seq_lengths is None else \
          jnp.minimum(kv_len, key_value_seq_lengths)
    out = _cudnn_attention(query.astype(dtype), key.astype(dtype),
                           value.astype(dtype), bias, causal,
                           query_seq_lengths, key_value_seq_lengths,
                           cudnn_pad_multiple)
    return (out, None) if return_weights else out
  mask = combine_masks(
      check_mask(mask, b, h, t, s), causal_mask(t, s) if causal else None,
      lengths_mask(t, s, query_seq_lengths, key_value_seq_lengths))
  out, weights = _xla_attention(query, key, value, mask, bias, dropout_rng,
                                dropout_rate, deterministic, dtype,
                                return_weights)
  return (out, weights) if return_weights else out


# ----------------------------------------------------------------------------
# Multi-head attention
# ----------------------------------------------------------------------------
def _dense(features, axis, names, kernel_init, use_bias, dtype, param_dtype,
           name):
  bias_names = names[-len(features):] if isinstance(features, tuple) else (
      names[-1],)
  return nn.DenseGeneral(
      features=features, axis=axis, use_bias=use_bias, dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             bias_names),
      name=name)


class MultiHeadAttention(nn.Module):
  """Multi-head attention (Vaswani et al. 2017, Eq. in Sec. 3.2.2).

  MultiHead(Q, K, V) = Concat(head_1..h) W^O, head_i = Attention(Q W_i^Q,
  K W_i^K, V W_i^V). The parameter tree (`query`, `key`, `value`, `out`) has the
  names and shapes of `flax.linen.MultiHeadDotProductAttention`.

  With `decode=True` (self-attention only) the keys and values are kept in a
  `cache` collection of length `max_len` fixed by `init`; each call appends its
  `[batch, L, dim]` chunk and attends causally over everything cached so far.
  The attention probabilities are sown as `intermediates/attention_weights`
  when `sow_weights=True` (xla path). The q/k/v projections `[batch, tokens,
  heads, head_dim]` carry the logical names `sharding.HEADS` and the
  `checkpoint_name`s 'query_proj', 'key_proj', 'value_proj' (for remat
  policies). `implementation` is one of IMPLEMENTATIONS.
  """
  num_heads: int
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  use_bias: bool = True
  decode: bool = False
  implementation: str = "xla"
  sow_weights: bool = False

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None,
               mask: Optional[Array] = None, *, deterministic: bool = True,
               causal: bool = False,
               query_seq_lengths: Optional[Array] = None,
               key_value_seq_lengths: Optional[Array] = None):
    """inputs_q `[batch, q_len, dq]`, inputs_kv `[batch, kv_len, dkv]` (None =
    self-attention); returns `[batch, q_len, out_features or dq]`. `mask`,
    `causal` and the `[batch]` sequence lengths are those of
    `dot_product_attention` (`mask_kwargs` builds them from token masks)."""
    if inputs_q.ndim != 3:
      raise ValueError(f"MultiHeadAttention: inputs_q must be rank 3 [batch, "
                       f"tokens, features], got shape {inputs_q.shape}.")
    if inputs_kv is None:
      inputs_kv = inputs_q
    elif inputs_kv.ndim != 3 or inputs_kv.shape[0] != inputs_q.shape[0]:
      raise ValueError(f"MultiHeadAttention: inputs_kv must be rank 3 [batch, "
                       f"tokens, features] with batch {inputs_q.shape[0]}, got "
                       f"shape {inputs_kv.shape}.")
    check_implementation(self.implementation)
    features = self.out_features or inputs_q.shape[-1]
    qkv_features = self.qkv_features or inputs_q.shape[-1]
    if qkv_features % self.num_heads:
      raise ValueError(f"MultiHeadAttention: qkv_features={qkv_features} is not "
                       f"divisible by num_heads={self.num_heads}.")
    head_dim = qkv_features // self.num_heads
    self._check_feature_sizes(inputs_q, inputs_kv)

    def project(name, x):
      dense = _dense((self.num_heads, head_dim), -1, ("embed", "heads", "kv"),
                     self.kernel_init, self.use_bias, self.dtype,
                     self.param_dtype, name)
      y = dense(x)    # [batch, length, heads, head_dim]
      return checkpoint_name(sharding.constrain(y, sharding.HEADS),
                             f"{name}_proj")
    query = project("query", inputs_q)
    key = project("key", inputs_kv)
    value = project("value", inputs_kv)
    implementation = self.implementation
    if self.decode:
      if causal or query_seq_lengths is not None or (
          key_value_seq_lengths is not None):
        raise ValueError("MultiHeadAttention(decode=True): the cache is "
                         "causal by itself; pass a [batch, kv] padding mask, "
                         "not causal or sequence lengths.")
      key, value, mask = self._update_cache(key, value, mask)
      implementation = "xla"   # the cache's mask is dense

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    res = dot_product_attention(
        query, key, value, mask, causal=causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        implementation=implementation,
        dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
        deterministic=deterministic, dtype=self.dtype,
        return_weights=self.sow_weights)
    if self.sow_weights:
      x, weights = res
      if weights is not None:
        self.sow("intermediates", "attention_weights", weights)
    else:
      x = res
    out = nn.DenseGeneral(
        features=features, axis=(-2, -1), use_bias=self.use_bias,
        dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(self.kernel_init,
                                                 ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                               ("embed",)),
        name="out")
    return out(x)

  def _check_feature_sizes(self, inputs_q, inputs_kv):
    if self.is_initializing() or "params" not in self.variables:
      return
    params = self.variables["params"]
    for name, x in (("query", inputs_q), ("key", inputs_kv)):
      if name in params:
        want = nn.meta.unbox(params[name]["kernel"]).shape[0]
        if x.shape[-1] != want:
          arg = "inputs_q" if name == "query" else "inputs_kv"
          raise ValueError(
              f"MultiHeadAttention: {arg} has feature size {x.shape[-1]} but "
              f"the '{name}' kernel expects {want} (shape [batch, tokens, "
              f"{want}]).")

  def _update_cache(self, key, value, mask):
    """Appends this chunk's keys/values; returns the cache and causal mask."""
    is_init = not self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape,
                               key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros,
                                 value.shape, value.dtype)
    cache_index = self.variable("cache", "cache_index",
                                lambda: jnp.array(0, jnp.int32))
    if is_init:
      # init() fixes the cache length; attend normally (causally) this time.
      b, length, heads, _ = key.shape
      return key, value, combine_masks(
          causal_mask(length), check_mask(mask, b, heads, length, length))
    batch, max_len, heads, head_dim = cached_key.value.shape
    chunk = key.shape[1]
    if key.shape[0] != batch:
      raise ValueError(f"MultiHeadAttention(decode=True): batch {key.shape[0]} "
                       f"differs from the cache's batch {batch}.")
    idx = cache_index.value
    key = jax.lax.dynamic_update_slice(cached_key.value,
                                       key.astype(cached_key.value.dtype),
                                       (0, idx, 0, 0))
    value = jax.lax.dynamic_update_slice(cached_value.value,
                                         value.astype(cached_value.value.dtype),
                                         (0, idx, 0, 0))
    cached_key.value, cached_value.value = key, value
    cache_index.value = idx + chunk
    q_pos = idx + jnp.arange(chunk)
    visible = jnp.arange(max_len)[None, :] <= q_pos[:, None]  # [chunk, max]
    full = visible[None, None]
    if mask is not None:
      full = combine_masks(full, check_mask(mask, batch, heads, chunk,
                                             max_len))
    return key, value, full
