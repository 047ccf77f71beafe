"""What every fusion module shares: the common config fields, input checks,
masked pooling, per-modality projections and a non-causal cross-attention
block.

Modality order: wherever modalities are concatenated, stacked or summed they
go in sorted key order (the order `jax.tree_util` flattens a dict in), so the
output never depends on the caller's dict order.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from mmtx.layers import MultiHeadAttention, Mlp, padding_mask
from mmtx.layers.attention import attention_weights, check_mask
from mmtx.layers.transformer import ACTIVATIONS, NORMS, layer_norm

Array = jax.Array
Dtype = Any

SCORES = ("dot", "additive")
SUBLAYERS = ("self_attention", "cross_attention", "mlp")


class Fusion(nn.Module):
  """Fields common to every strategy, so a config switches strategy by name.

  A strategy reads the fields that mean something for it (its docstring says
  which) and ignores the rest. `dtype` is the compute dtype; parameters are
  `param_dtype` (float32). Called as `fuse(tokens, masks, *,
  deterministic=True) -> (fused_tokens [batch, n_out, dim], fused_mask
  [batch, n_out])`, tokens `[batch, n_m, d_m]` and boolean masks `[batch,
  n_m]` (True = real token) keyed by modality.
  """
  dim: int = 256
  num_heads: int = 4
  num_layers: int = 1
  mlp_dim: int = 1024
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  activation: str = "gelu"
  norm: str = "pre"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "xla"

  def _check_fields(self, *names: str):
    """Validates the named fields (called at the top of `__call__`)."""
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
    for name in names:
      ok, want = checks[name]
      if not ok:
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
  # True where the strategy takes `independent_target=True` at call time:
  # each target token then attends to the context (and, in self-attention,
  # to itself) only, so several independent queries - e.g. the questions
  # about one image - can share one sequence and one pass over the context.
  independent_targets: ClassVar[bool] = False

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


def masked_mean(x: Array, mask: Array) -> Array:
  """`[batch, n, d]`, `[batch, n]` -> `[batch, d]` float32 mean over real
  tokens; zeros where a row has none. Padding values never enter (not even
  NaN), since they are selected away rather than multiplied by 0."""
  s = jnp.where(mask[..., None], x, 0).astype(jnp.float32).sum(axis=1)
  count = mask.sum(axis=1, keepdims=True).astype(jnp.float32)
  return s / jnp.maximum(count, 1.0)


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


def zero_init_scalar(m: nn.Module, name: str, param_dtype) -> Array:
  """A scalar parameter initialised to 0 (a Flamingo tanh gate)."""
  return m.param(name, nn.with_logical_partitioning(
      nn.initializers.zeros_init(), ()), (), param_dtype)


# ----------------------------------------------------------------------------
# Attention blocks
# ----------------------------------------------------------------------------
class AdditiveAttention(nn.Module):
  """Multi-head additive attention (Bahdanau et al. 2015, Appendix A; as used
  across modalities by Show, Attend and Tell, Xu et al. 2015).

  score_h(q, k) = v_h^T tanh(W_h^Q q + W_h^K k), softmax over keys, then
  Concat_h(sum_k a_hqk W_h^V k) W^O. Params `query`, `key`, `value`, `out`
  as in MultiHeadAttention, plus `score` (the v_h) `[heads, head_dim]`.
  inputs_q `[batch, q, dq]`, inputs_kv `[batch, k, dk]`, mask boolean
  `[batch, k]` (key padding) or broadcastable to `[batch, heads, q, k]`; a
  query with no visible key gets zeros. Memory is O(batch q k dim) for the tanh, unlike dot products.
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


class CrossAttentionBlock(nn.Module):
  """A non-causal layer over target tokens x with a context (another
  modality): the sublayers named in `order`, each with residual dropout and a
  LayerNorm placed by `norm` ('post': LN(x + f(x)), 'pre': x + f(LN(x))).

  Default order (self, cross, mlp) is the ALBEF/BLIP fusion layer and has
  the parameter names of `mmtx.layers.DecoderBlock` without its causal mask;
  (cross, self, mlp) is the LXMERT cross-modality layer. `score='additive'`
  swaps the cross-attention for AdditiveAttention.
  x `[batch, t, dim]`, context `[batch, s, dim_c]`, masks `[batch, t]`,
  `[batch, s]`; returns `[batch, t, dim]`. `independent=True`: each target
  token's self-attention sees only itself, so the t tokens are t separate
  queries of the same context (the same result as t calls with t = 1).
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
  order: tuple = SUBLAYERS
  score: str = "dot"

  @nn.compact
  def __call__(self, x: Array, context: Array, mask: Array,
               context_mask: Array, *, deterministic: bool = True,
               independent: bool = False) -> Array:
    if self.score not in SCORES:
      raise ValueError(f"CrossAttentionBlock: score must be one of {SCORES}, "
                       f"got {self.score!r}.")
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
    if independent:  # each target token's self-attention sees only itself
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


def block_kwargs(m: Fusion) -> dict:
  """The CrossAttentionBlock / EncoderBlock fields a Fusion sets."""
  return dict(num_heads=m.num_heads, mlp_dim=m.mlp_dim, norm=m.norm,
              activation=m.activation, dropout_rate=m.dropout_rate,
              attention_dropout_rate=m.attention_dropout_rate, dtype=m.dtype,
              param_dtype=m.param_dtype, attention_impl=m.attention_impl)


def final_norm(m: Fusion, x: Array, name: str) -> Array:
  """The closing LayerNorm of a pre-norm stack (identity for post-norm)."""
  if m.norm != "pre":
    return x
  return layer_norm(m.dtype, m.param_dtype, name)(x)
