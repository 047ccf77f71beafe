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

Array = jax.Array
Dtype = Any

IMPLEMENTATIONS = ("xla", "cudnn", "auto")


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


def _cudnn_attention(q, k, v, mask, bias, pad_multiple):
  """cuDNN flash attention via `jax.nn.dot_product_attention`.

  cuDNN rejects some sequence lengths (training with a mask needs even
  lengths, e.g. ViT-B/16's 197 fails): q/k/v are padded to a multiple of
  `pad_multiple`, padded keys are masked out and padded queries dropped.
  """
  b, t, h, _ = q.shape
  s = k.shape[1]
  tp = -(-t // pad_multiple) * pad_multiple
  sp = -(-s // pad_multiple) * pad_multiple
  full = jnp.ones((b, h, t, s), bool) if mask is None else jnp.broadcast_to(
      mask, (b, h, t, s))
  if tp != t or sp != s:
    q, k, v = _pad_axis(q, 1, tp), _pad_axis(k, 1, sp), _pad_axis(v, 1, sp)
    full = jnp.pad(full, ((0, 0), (0, 0), (0, tp - t), (0, sp - s)))
    if bias is not None:
      bias = jnp.pad(jnp.broadcast_to(bias, (b, h, t, s)),
                     ((0, 0), (0, 0), (0, tp - t), (0, sp - s)))
    # Padded query rows see key 0 so cuDNN never meets an empty row there.
    full = full.at[:, :, t:, 0].set(True)
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=full,
                                     implementation="cudnn")
  out = out[:, :t]
  row_visible = jnp.any(full[:, :, :t], axis=-1)  # [b, h, t]
  return out * jnp.swapaxes(row_visible, 1, 2)[..., None].astype(out.dtype)


def dot_product_attention(query: Array,
                          key: Array,
                          value: Array,
                          mask: Optional[Array] = None,
                          *,
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
      return zeros.
    bias: optional additive logits bias, broadcastable like `mask`.
    implementation: `'xla'` (everywhere), `'cudnn'` (GPU flash attention;
      bf16/fp16, no attention dropout) or `'auto'` (cuDNN where it applies).
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
  if key.shape[0] != b or key.shape[2:] != (h, d):
    raise ValueError(f"dot_product_attention: key shape {key.shape} does not "
                     f"match query shape {query.shape} in batch/heads/head_dim.")
  if value.shape[:3] != key.shape[:3]:
    raise ValueError(f"dot_product_attention: value shape {value.shape} does "
                     f"not match key shape {key.shape} in batch/len/heads.")
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got "
                     f"{implementation!r}.")
  mask = check_mask(mask, b, h, t, key.shape[1])
  dtype = dtype or query.dtype
  use_dropout = (not deterministic) and dropout_rate > 0.0
  if use_dropout and dropout_rng is None:
    raise ValueError("dot_product_attention: dropout_rate > 0 and "
                     "deterministic=False need a dropout_rng.")
  on_gpu = jax.default_backend() == "gpu"
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
  use_cudnn = implementation == "cudnn" or (
      implementation == "auto" and on_gpu and half and not use_dropout and
      not return_weights and d <= 128 and d % 8 == 0)
  if use_cudnn:
    out = _cudnn_attention(query.astype(dtype), key.astype(dtype),
                           value.astype(dtype), mask, bias, cudnn_pad_multiple)
    return (out, None) if return_weights else out
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
  when `sow_weights=True` (xla path).
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
               mask: Optional[Array] = None, *, deterministic: bool = True):
    """inputs_q `[batch, q_len, dq]`, inputs_kv `[batch, kv_len, dkv]` (None =
    self-attention); returns `[batch, q_len, out_features or dq]`."""
    if inputs_q.ndim != 3:
      raise ValueError(f"MultiHeadAttention: inputs_q must be rank 3 [batch, "
                       f"tokens, features], got shape {inputs_q.shape}.")
    if inputs_kv is None:
      inputs_kv = inputs_q
    elif inputs_kv.ndim != 3 or inputs_kv.shape[0] != inputs_q.shape[0]:
      raise ValueError(f"MultiHeadAttention: inputs_kv must be rank 3 [batch, "
                       f"tokens, features] with batch {inputs_q.shape[0]}, got "
                       f"shape {inputs_kv.shape}.")
    features = self.out_features or inputs_q.shape[-1]
    qkv_features = self.qkv_features or inputs_q.shape[-1]
    if qkv_features % self.num_heads:
      raise ValueError(f"MultiHeadAttention: qkv_features={qkv_features} is not "
                       f"divisible by num_heads={self.num_heads}.")
    head_dim = qkv_features // self.num_heads
    self._check_feature_sizes(inputs_q, inputs_kv)

    def proj(name):
      return _dense((self.num_heads, head_dim), -1, ("embed", "heads", "kv"),
                    self.kernel_init, self.use_bias, self.dtype,
                    self.param_dtype, name)

    def rows(x):  # [b, t, d] -> [b*t, d]: faster weight grads on XLA:CPU
      return x.reshape(-1, x.shape[-1])

    batch, q_len = inputs_q.shape[:2]
    kv_len = inputs_kv.shape[1]
    query = proj("query")(rows(inputs_q)).reshape(batch, q_len, self.num_heads,
                                                  head_dim)
    key = proj("key")(rows(inputs_kv)).reshape(batch, kv_len, self.num_heads,
                                               head_dim)
    value = proj("value")(rows(inputs_kv)).reshape(batch, kv_len,
                                                   self.num_heads, head_dim)
    mask = check_mask(mask, batch, self.num_heads, q_len, inputs_kv.shape[1]) \
        if not self.decode else mask

    if self.decode:
      key, value, mask = self._update_cache(key, value, mask)

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    res = dot_product_attention(
        query, key, value, mask, implementation=self.implementation,
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
    return out(x.reshape((-1,) + x.shape[2:])).reshape(batch, q_len, features)

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
