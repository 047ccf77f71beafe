"""Tests for mmtx.fusion: every registered strategy behind one interface.

Tiny dims (dim 16, 2 heads, 1-2 layers, batch 2) and one jit per check so the
file runs in well under two minutes on a CPU.
"""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
import ml_collections
from flax import traverse_util

from mmtx import fusion
from mmtx.configs import common
from mmtx.fusion import FUSIONS, build_fusion

B = 2
DIM = 16
COUNTS = {"audio": 3, "image": 7, "text": 5}
WIDTHS = {"audio": 6, "image": 8, "text": DIM}  # text passes through in
# gated_cross_attention, so its width is `dim`.
MASKS = {
    "audio": [[1, 1, 0], [0, 0, 0]],                 # missing in example 1
    "image": [[1] * 7, [1, 1, 1, 1, 0, 0, 0]],
    "text": [[1, 1, 1, 0, 0], [1] * 5],
}
BASE = dict(dim=DIM, num_heads=2, num_layers=1, mlp_dim=32, target="text")
OVERRIDES = {
    "bottleneck": dict(num_layers=2, fusion_layer=1, num_bottleneck_tokens=2),
    "late": dict(combine="weighted"),
}
TOKEN_LEVEL = {"concat", "co_attention", "bottleneck", "cross_attention",
               "additive", "gated_cross_attention", "film"}
NAMES = sorted(FUSIONS)
# LLVM optimisation off: same float semantics, about half the compile time.
jit = functools.partial(jax.jit,
                        compiler_options={"xla_backend_optimization_level": 0})


def make_inputs(seed=0, counts=COUNTS, widths=WIDTHS, masks=MASKS):
  rng = np.random.default_rng(seed)
  tokens = {k: jnp.asarray(rng.normal(size=(B, counts[k], widths[k])),
                           jnp.float32) for k in counts}
  return tokens, {k: jnp.asarray(masks[k], bool) for k in counts}


def expected_n_out(name, counts=COUNTS):
  n = sum(counts.values())
  return {"concat": n, "co_attention": n, "bottleneck": n + 2,
          "cross_attention": counts["text"], "additive": counts["text"],
          "gated_cross_attention": counts["text"],
          "film": counts["text"]}.get(name, 1)


def build(name, **kw):
  """Strategy `name` with the BASE fields it reads, OVERRIDES and `kw`."""
  base = {k: v for k, v in BASE.items() if k in fusion.fusion_fields(name)}
  return build_fusion(name, **{**base, **OVERRIDES.get(name, {}), **kw})


@functools.lru_cache(maxsize=None)
def init(name):
  """(module, unboxed params) for the standard inputs, built once."""
  module = build(name)
  tokens, masks = make_inputs()
  variables = jit(module.init)(jax.random.PRNGKey(0), tokens, masks)
  return module, nn.unbox(variables)["params"]


def random_params(module, tokens, masks, seed=0, scale=0.3):
  """Params of `module`'s shapes filled with N(0, scale^2): no init compile,
  and no zero biases or gates, so every term of an equation is exercised."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), tokens, masks)
  leaves, tree = jax.tree_util.tree_flatten(nn.unbox(shapes)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(tree, [
      jnp.asarray(scale * rng.normal(size=x.shape), x.dtype) for x in leaves])


@functools.lru_cache(maxsize=None)
def forward_and_grads(name):
  """Outputs and d(sum_real out * cot)/d tokens for the standard inputs.

  gated_cross_attention's zero-init tanh gates are opened to 0.5 first, and
  film's zero-init generator gets random weights: at initialisation no
  gradient reaches their context by design (tested below).
  """
  module, params = init(name)
  if name == "film":  # zero-init generator: open it (tested below)
    flat = traverse_util.flatten_dict(params)
    rng = np.random.default_rng(2)
    params = traverse_util.unflatten_dict(
        {k: (jnp.asarray(0.3 * rng.normal(size=v.shape), v.dtype)
             if "film" in k and k[-1] == "kernel" else v)
         for k, v in flat.items()})
  if name == "gated_cross_attention":
    flat = traverse_util.flatten_dict(params)
    params = traverse_util.unflatten_dict(
        {k: (jnp.full_like(v, 0.5) if k[-1].endswith("_gate") else v)
         for k, v in flat.items()})
  tokens, masks = make_inputs()
  cot = jnp.asarray(np.random.default_rng(1).normal(
      size=(B, expected_n_out(name), DIM)), jnp.float32)

  def loss(tokens):
    out, mask = module.apply({"params": params}, tokens, masks)
    return jnp.sum(jnp.where(mask[..., None], out * cot, 0.0)), (out, mask)

  grads, (out, mask) = jit(jax.grad(loss, has_aux=True))(tokens)
  return params, out, mask, grads


def real_rows(out, mask):
  """Per example, the output rows whose mask is True (in order)."""
  out, mask = np.asarray(out), np.asarray(mask)
  return [out[b][mask[b]] for b in range(out.shape[0])]


# ----------------------------------------------------------------------------
# Every strategy: shapes, finiteness, gradients, padding
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_shapes_finite_and_gradients_reach_every_modality(name):
  _, out, mask, grads = forward_and_grads(name)
  _, masks = make_inputs()
  assert out.shape == (B, expected_n_out(name), DIM)
  assert mask.shape == out.shape[:2] and mask.dtype == jnp.bool_
  assert out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  if name not in TOKEN_LEVEL:
    assert np.asarray(mask).all()
  for k in COUNTS:
    g = np.asarray(grads[k])
    assert np.isfinite(g).all()
    real = np.asarray(masks[k])
    assert np.abs(g[real]).sum() > 1e-6, f"no gradient reaches {k}"
    # Padding tokens influence nothing, so they get exactly zero gradient.
    np.testing.assert_array_equal(g[~real], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_padding_tokens_change_no_output(name):
  module, _ = init(name)
  params, out, mask, _ = forward_and_grads(name)
  tokens, masks = make_inputs()
  rng = np.random.default_rng(2)
  extra = {"audio": 2, "image": 1, "text": 3}
  padded_t = {k: jnp.concatenate([tokens[k], jnp.asarray(
      5 * rng.normal(size=(B, extra[k], WIDTHS[k])), jnp.float32)], axis=1)
              for k in COUNTS}
  padded_m = {k: jnp.concatenate([masks[k], jnp.zeros((B, extra[k]), bool)],
                                 axis=1) for k in COUNTS}
  if name == "flatten":   # its input size fixes the token counts
    with pytest.raises(ValueError, match="needs the token counts it was"):
      module.apply({"params": params}, padded_t, padded_m)
    # Same counts, padded positions (MASKS has some) filled with noise.
    noisy = {k: jnp.where(masks[k][..., None], tokens[k], jnp.asarray(
        5 * rng.normal(size=tokens[k].shape), jnp.float32)) for k in tokens}
    out_n, _ = jit(module.apply)({"params": params}, noisy, masks)
    np.testing.assert_allclose(out_n, out, rtol=1e-5, atol=1e-5)
    return
  out_p, mask_p = jit(module.apply)({"params": params}, padded_t, padded_m)
  assert mask_p.shape[1] == mask.shape[1] + (
      sum(extra.values()) if name in {"concat", "co_attention", "bottleneck"}
      else extra["text"] if name in TOKEN_LEVEL else 0)
  for a, b in zip(real_rows(out, mask), real_rows(out_p, mask_p)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_params_float32_partitioned_and_compute_dtype(name):
  module = build(name, dtype="bfloat16")
  tokens, masks = make_inputs()
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), tokens, masks)
  leaves = jax.tree_util.tree_leaves(
      variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
    assert leaf.value.dtype == jnp.float32
  out, mask = jax.eval_shape(module.apply, variables, tokens, masks)
  assert out.dtype == jnp.bfloat16 and mask.dtype == jnp.bool_
  # Dropout needs only a 'dropout' rng when deterministic=False.
  rates = {k: 0.1 for k in ("dropout_rate", "attention_dropout_rate")
           if k in fusion.fusion_fields(name)}
  out, _ = jax.eval_shape(
      lambda v, t, m: build(name, **rates).apply(
                                v, t, m, deterministic=False,
                                rngs={"dropout": jax.random.PRNGKey(1)}),
      variables, tokens, masks)
  assert out.shape == (B, expected_n_out(name), DIM)


def test_dropout_is_active_when_not_deterministic():
  module = build("concat", dropout_rate=0.5)
  _, params = init("concat")
  tokens, masks = make_inputs()
  run = jit(lambda det, rng: module.apply(
      {"params": params}, tokens, masks, deterministic=det,
      rngs={"dropout": rng})[0], static_argnums=0)
  a, b = run(True, jax.random.PRNGKey(0)), run(False, jax.random.PRNGKey(0))
  assert not np.allclose(a, b)


# ----------------------------------------------------------------------------
# Registry and config
# ----------------------------------------------------------------------------
def test_registry_builds_every_strategy_from_a_config_name():
  for name in FUSIONS:
    assert type(build_fusion(name)) is FUSIONS[name]
    cfg = ml_collections.ConfigDict(dict(name="concat", dim=32))
    cfg.name = name  # one field switches the strategy
    module = build_fusion(cfg)
    assert type(module) is FUSIONS[name] and module.dim == 32
    # The configs' helper keeps the shared settings each strategy reads.
    cfg = common.fusion(name, "text", dim=32, num_heads=2, num_layers=1,
                        mlp_dim=64)
    assert type(build_fusion(cfg)) is FUSIONS[name]
  cfg = ml_collections.ConfigDict(dict(name="m_modal", kv_form="sum"))
  assert build_fusion(cfg).kv_form == "sum"
  assert build_fusion(cfg, kv_form="auto").kv_form == "auto"
  assert build_fusion(dict(name="late", combine="weighted")).combine == \
      "weighted"
  assert build_fusion("concat", dtype="bfloat16").dtype == jnp.bfloat16


def test_a_field_the_strategy_does_not_read_is_named():
  """Another strategy's option, or a common field with no layer to use it
  here, is an error that names it and lists the strategy's own fields."""
  every = {f for n in FUSIONS for f in fusion.fusion_fields(n)}
  for name in FUSIONS:
    own = fusion.fusion_fields(name)
    for field in sorted(every - set(own)):
      with pytest.raises(ValueError, match=(
          rf"\['{field}'\] are not read by fusion '{name}'; its fields are "
          + re.escape(str(sorted(own))))):
        build_fusion(dict(name=name, **{field: None}))
  with pytest.raises(ValueError, match=r"\['dimm'\] are not read by fusion "
                     r"'concat'"):
    build_fusion("concat", dimm=8)
  assert set(fusion.fusion_fields("sum")) == {"dim", "dtype", "param_dtype"}


# A valid value of each common field other than BASE's.
_OTHER = dict(num_heads=4, num_layers=2, mlp_dim=8, dropout_rate=0.5,
              attention_dropout_rate=0.5, activation="relu", norm="post",
              attention_impl="xla")


@pytest.mark.parametrize("name", [n for n in NAMES if FUSIONS[n].unread])
def test_the_fields_a_strategy_declares_unread_change_nothing(name):
  """Same params and outputs (dropout on) when every common field in the
  strategy's `unread` takes another value: the declaration is true."""
  tokens, masks = make_inputs(5)
  kw = {**BASE, **OVERRIDES.get(name, {})}
  if not issubclass(FUSIONS[name], fusion.DirectionalFusion):
    del kw["target"]
  a = FUSIONS[name](**kw)
  b = FUSIONS[name](**{**kw, **{k: _OTHER[k] for k in FUSIONS[name].unread}})
  params = random_params(a, tokens, masks)
  shapes = jax.eval_shape(b.init, jax.random.PRNGKey(0), tokens, masks)
  assert jax.tree.map(jnp.shape, nn.unbox(shapes)["params"]) == \
      jax.tree.map(jnp.shape, params)
  run = jit(lambda: [m.apply({"params": params}, tokens, masks,
                             deterministic=False,
                             rngs={"dropout": jax.random.PRNGKey(1)})[0]
                     for m in (a, b)])
  out_a, out_b = run()
  np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))


def test_registry_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match="unknown fusion 'fusion_x'") as e:
    build_fusion("fusion_x")
  for name in FUSIONS:
    assert name in str(e.value)
  with pytest.raises(ValueError, match="unknown fusion"):
    build_fusion({"name": "nope", "dim": 8})
  with pytest.raises(ValueError, match="has no field 'name'"):
    build_fusion({"dim": 8})
  with pytest.raises(ValueError, match="dtype"):
    build_fusion("concat", dtype="float33")


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------
def _bad_inputs(case):
  tokens, masks = make_inputs()
  if case == "missing_mask":
    del masks["image"]
    return tokens, masks, r"masks has no entry for modality \['image'\]"
  if case == "extra_mask":
    masks["video"] = masks["image"]
    return tokens, masks, r"masks has modality \['video'\]"
  if case == "mask_shape":
    masks["image"] = masks["image"][:, :4]
    return tokens, masks, r"masks\['image'\] must have shape \[batch, tokens\]"
  if case == "mask_rank":
    masks["text"] = masks["text"][..., None]
    return tokens, masks, r"masks\['text'\] must have shape"
  if case == "token_rank":
    tokens["image"] = tokens["image"][0]
    return tokens, masks, r"tokens\['image'\] must be rank 3"
  if case == "batch":
    tokens["audio"] = tokens["audio"][:1]
    masks["audio"] = masks["audio"][:1]
    return tokens, masks, r"tokens\['image'\] has batch 2 but tokens\['audio'\]"
  raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_mask", "extra_mask", "mask_shape",
                                  "mask_rank", "token_rank", "batch"])
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_value_error_naming_the_problem(name, case):
  tokens, masks, match = _bad_inputs(case)
  with pytest.raises(ValueError, match=match):
    build(name).init(jax.random.PRNGKey(0), tokens, masks)


@pytest.mark.parametrize("name,fields,match", [
    ("cross_attention", dict(target="video"), "field target='video'"),
    ("m_modal", dict(kv_form="mean"), "field kv_form must be one of"),
    ("m_modal", dict(kv_form="sum"), "kv_form='sum' sums the other"),
    ("m_modal", dict(pool="none"), "pool='none' sums O_i' token by token"),
    ("late", dict(combine="max"), "field combine must be one of"),
    ("bottleneck", dict(fusion_layer=3), "field fusion_layer must be in"),
    ("concat", dict(num_heads=3), "field num_heads must be a positive divisor"),
    ("concat", dict(norm="mid"), "field norm must be one of"),
    ("gated_cross_attention", dict(dim=8), r"tokens\['text'\] has width 16"),
])
def test_bad_fields_raise_value_error_naming_the_field(name, fields, match):
  tokens, masks = make_inputs()
  with pytest.raises(ValueError, match=match):
    build(name, **fields).init(jax.random.PRNGKey(0), tokens, masks)


def test_directional_strategies_need_two_modalities_and_default_target():
  tokens, masks = make_inputs()
  one = ({"text": tokens["text"]}, {"text": masks["text"]})
  for name in ["cross_attention", "co_attention", "m_modal", "additive",
               "gated_cross_attention"]:
    with pytest.raises(ValueError, match="needs at least 2 modalities"):
      build(name).init(jax.random.PRNGKey(0), *one)
  # target=None queries with the first key in sorted order: 'audio'.
  module = build("cross_attention", target=None)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), tokens, masks)
  out, _ = jax.eval_shape(module.apply, variables, tokens, masks)
  assert out.shape == (B, COUNTS["audio"], DIM)


# ----------------------------------------------------------------------------
# Strategy-specific checks against independent references
# ----------------------------------------------------------------------------
def test_gated_cross_attention_is_identity_at_init():
  module, params = init("gated_cross_attention")
  tokens, masks = make_inputs()

  def fwd(tokens):
    return module.apply({"params": params}, tokens, masks)

  def fwd_and_vjp(tokens):
    out, vjp = jax.vjp(lambda t: fwd(t)[0], tokens)
    return out, fwd(tokens)[1], vjp(jnp.ones_like(out))[0]

  out, mask, grads = jit(fwd_and_vjp)(tokens)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(tokens["text"]))
  np.testing.assert_array_equal(np.asarray(mask), np.asarray(masks["text"]))
  # The zero gates also cut the gradient into the context at initialisation
  # (the main gradient test opens the gates first).
  np.testing.assert_array_equal(np.asarray(grads["image"]), 0.0)
  np.testing.assert_array_equal(np.asarray(grads["audio"]), 0.0)
  np.testing.assert_array_equal(np.asarray(grads["text"]), 1.0)


def _np_softmax_attention(logits, mask):
  """float64 masked softmax; rows with no visible key -> zeros."""
  mx = np.max(np.where(mask, logits, -np.inf), axis=-1, keepdims=True)
  mx = np.where(np.isfinite(mx), mx, 0.0)
  e = np.where(mask, np.exp(logits - mx), 0.0)
  s = e.sum(-1, keepdims=True)
  return np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0)


def _np_mha(p, xq, xkv, q_mask, kv_mask):
  """Multi-head attention (Vaswani et al. Sec. 3.2.2) in float64 numpy."""
  f = lambda name, x: np.einsum("bnd,dhk->bnhk", x, p[name]["kernel"]) + \
      p[name]["bias"]  # noqa: E731
  q, k, v = f("query", xq), f("key", xkv), f("value", xkv)
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
  w = _np_softmax_attention(logits,
                            q_mask[:, None, :, None] & kv_mask[:, None, None])
  o = np.einsum("bhqs,bshk->bqhk", w, v)
  return np.einsum("bqhk,hkd->bqd", o, p["out"]["kernel"]) + p["out"]["bias"]


def _np_masked_mean(x, m):
  return (x * m[..., None]).sum(1) / np.maximum(m.sum(1), 1)[:, None]


def np_m_modal(params, tokens, masks, forms, aligned, num_layers):
  """The M-modal equations in float64: O_i' = O_i + MHA(O_i W^Q, K, V)."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  x = {k: np.asarray(v, np.float64) for k, v in tokens.items()}
  m = {k: np.asarray(v) for k, v in masks.items()}
  keys = sorted(x)
  o = {k: x[k] @ p[f"proj_{k}"]["kernel"] + p[f"proj_{k}"]["bias"]
       for k in keys}
  for layer in range(num_layers):
    new = {}
    for i in keys:
      others = [j for j in keys if j != i]
      if forms[i] == "sum":
        kv = sum(o[j] * m[j][..., None] for j in others)
        kv_mask = np.logical_or.reduce([m[j] for j in others])
      else:
        kv = np.concatenate([o[j] for j in others], axis=1)
        kv_mask = np.concatenate([m[j] for j in others], axis=1)
      new[i] = o[i] + _np_mha(p[f"{i}_layers_{layer}"], o[i], kv, m[i],
                              kv_mask)
    o = new
  if aligned:
    return (sum(o[k] * m[k][..., None] for k in keys),
            np.logical_or.reduce([m[k] for k in keys]))
  return (sum(_np_masked_mean(o[k], m[k]) for k in keys)[:, None],
          np.ones((B, 1), bool))


@pytest.mark.parametrize("counts,kv_form,pool,forms,aligned", [
    ((4, 4, 4), "sum", "none", "sss", True),
    ((4, 4, 4), "union", "mean", "uuu", False),
    ((4, 4, 4), "auto", "auto", "sss", True),
    ((4, 6, 3), "auto", "auto", "uuu", False),
    ((4, 4, 6), "auto", "mean", "uus", False),  # 'c' sees a, b: equal counts
])
def test_m_modal_matches_float64_numpy(counts, kv_form, pool, forms, aligned):
  keys = ("a", "b", "c")
  counts = dict(zip(keys, counts))
  widths = dict(zip(keys, (5, 8, 6)))
  rng = np.random.default_rng(3)
  masks = {k: rng.random((B, n)) < 0.7 for k, n in counts.items()}
  masks["a"][1] = False                       # a missing in example 1
  masks["b"][:, 0] = True
  tokens, masks = make_inputs(4, counts, widths, masks)
  got_forms, got_aligned = fusion.resolve_m_modal(kv_form, pool, counts)
  assert got_forms == {k: {"s": "sum", "u": "union"}[f]
                       for k, f in zip(keys, forms)}
  assert got_aligned == aligned
  module = build_fusion("m_modal", dim=8, num_heads=2, num_layers=2,
                        kv_form=kv_form, pool=pool)
  params = random_params(module, tokens, masks, seed=5)
  out, mask = jit(module.apply)({"params": params}, tokens, masks)
  want, want_mask = np_m_modal(params, tokens, masks, got_forms, aligned, 2)
  np.testing.assert_array_equal(np.asarray(mask), want_mask)
  # float32 against float64: agreement to ~1e-5 on O(1) values.
  np.testing.assert_allclose(np.asarray(out)[want_mask],
                             want[want_mask], rtol=1e-5, atol=1e-5)


def test_m_modal_sum_form_ignores_padding():
  counts = {"a": 4, "b": 4, "c": 4}
  widths = {"a": 5, "b": 8, "c": 6}
  masks = {"a": [[1, 1, 0, 0], [1, 1, 1, 1]], "b": [[1, 1, 1, 0], [1, 0, 0, 0]],
           "c": [[1, 0, 0, 0], [1, 1, 1, 0]]}
  tokens, masks = make_inputs(7, counts, widths, masks)
  module = build_fusion("m_modal", dim=8, num_heads=2, kv_form="sum",
                        pool="none")
  params = {"params": random_params(module, tokens, masks)}
  rng = np.random.default_rng(8)
  padded_t = {k: jnp.concatenate([v, jnp.asarray(
      rng.normal(size=(B, 2, v.shape[-1])), jnp.float32)], 1)
              for k, v in tokens.items()}
  padded_m = {k: jnp.concatenate([v, jnp.zeros((B, 2), bool)], 1)
              for k, v in masks.items()}
  apply = lambda t, m: module.apply(params, t, m)  # noqa: E731
  (out, mask), (out_p, mask_p) = jit(lambda *a: (apply(*a[:2]), apply(*a[2:])))(
      tokens, masks, padded_t, padded_m)
  assert out.shape == (B, 4, 8) and out_p.shape == (B, 6, 8)
  np.testing.assert_array_equal(np.asarray(mask_p)[:, :4], np.asarray(mask))
  assert not np.asarray(mask_p)[:, 4:].any()
  for a, b in zip(real_rows(out, mask), real_rows(out_p, mask_p)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _swap_ab(tree):
  """Renames every parameter of modality 'a' to 'b' and back."""
  def rename(key):
    for x, y in (("a", "b"), ("b", "a")):
      if key == f"proj_{x}":
        return f"proj_{y}"
      if key.startswith(f"{x}_"):
        return f"{y}_" + key[2:]
    return key
  return {rename(k): v for k, v in tree.items()}


def test_co_attention_is_symmetric_under_swapping_modalities():
  counts, widths = {"a": 5, "b": 7}, {"a": 8, "b": 8}
  masks = {"a": [[1, 1, 1, 0, 0], [1] * 5],
           "b": [[1] * 7, [1, 1, 0, 0, 0, 0, 0]]}
  tokens, masks = make_inputs(9, counts, widths, masks)
  module = build_fusion("co_attention", dim=8, num_heads=2, num_layers=2,
                        mlp_dim=16)
  params = random_params(module, tokens, masks)
  swapped_t = {"a": tokens["b"], "b": tokens["a"]}
  swapped_m = {"a": masks["b"], "b": masks["a"]}
  apply = lambda p, t, m: module.apply({"params": p}, t, m)  # noqa: E731
  (out, mask), (out_s, mask_s) = jit(
      lambda: (apply(params, tokens, masks),
               apply(_swap_ab(params), swapped_t, swapped_m)))()
  n_a = counts["a"]
  want = jnp.concatenate([out[:, n_a:], out[:, :n_a]], axis=1)
  want_mask = jnp.concatenate([mask[:, n_a:], mask[:, :n_a]], axis=1)
  np.testing.assert_array_equal(np.asarray(mask_s), np.asarray(want_mask))
  np.testing.assert_allclose(np.asarray(out_s), np.asarray(want), rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("fusion_layer,audio_sees,bottleneck_sees", [
    (2, False, False),  # no fused layer: modalities encoded apart
    (1, False, True),   # image enters z in layer 1; audio reads z in layer 2
    (0, True, True),
])
def test_bottleneck_exchanges_only_through_latents_from_fusion_layer_on(
    fusion_layer, audio_sees, bottleneck_sees):
  tokens, masks = make_inputs()
  other = dict(tokens, image=tokens["image"] + 1.0)
  module = build("bottleneck", fusion_layer=fusion_layer)
  params = {"params": random_params(module, tokens, masks)}
  apply = lambda t: module.apply(params, t, masks)[0]  # noqa: E731
  a, b = (np.asarray(x) for x in jit(lambda: (apply(tokens), apply(other)))())
  n = sum(COUNTS.values())
  changed = lambda x, y: not np.allclose(x, y, atol=1e-6)  # noqa: E731
  assert changed(a[:, :COUNTS["audio"]], b[:, :COUNTS["audio"]]) == audio_sees
  assert changed(a[:, n:], b[:, n:]) == bottleneck_sees


def _np_gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


@pytest.mark.parametrize("name,fields", [
    ("sum", {}), ("weighted_sum", {}), ("gated", {}),
    ("late", dict(combine="mean")), ("late", dict(combine="weighted")),
    ("flatten", {}), ("flatten", dict(num_layers=2, activation="relu")),
    ("flatten", dict(num_layers=0)),
])
def test_pooled_strategies_match_float64_numpy(name, fields):
  tokens, masks = make_inputs(10)
  module = build(name, **fields)
  params = random_params(module, tokens, masks)
  out, _ = jit(module.apply)({"params": params}, tokens, masks)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  keys = sorted(tokens)
  x = {k: np.asarray(tokens[k], np.float64) for k in keys}
  m = {k: np.asarray(masks[k]) for k in keys}
  present = np.stack([m[k].any(1) for k in keys], 1)           # [b, M]
  dense = lambda q, v: v @ q["kernel"] + q["bias"]  # noqa: E731
  if name in ("sum", "weighted_sum"):
    pooled = np.stack([_np_masked_mean(dense(p[f"proj_{k}"], x[k]), m[k])
                       for k in keys], 1)
  elif name == "gated":
    xs = [_np_masked_mean(x[k], m[k]) for k in keys]
    h = np.stack([np.tanh(dense(p[f"proj_{k}"], v)) for k, v in zip(keys, xs)],
                 1)
    z = dense(p["gate"], np.concatenate(xs, -1)).reshape(h.shape)
    z = np.exp(z - z.max(1, keepdims=True)) * present[..., None]
    z = z / z.sum(1, keepdims=True)
    want = (z * h).sum(1)
  elif name == "flatten":   # padding zeroed, flattened, sorted keys, MLP
    h = np.concatenate([(x[k] * m[k][..., None]).reshape(B, -1)
                        for k in keys], -1)
    act = (lambda a: np.maximum(a, 0)) if fields.get("activation") == \
        "relu" else _np_gelu
    for i in range(fields.get("num_layers", BASE["num_layers"])):
      h = act(dense(p[f"hidden_{i}"], h))
    want = dense(p["out"], h)
  else:
    pooled = np.stack([
        dense(p[f"head_{k}"]["wo"], _np_gelu(dense(
            p[f"head_{k}"]["wi"], _np_masked_mean(x[k], m[k]))))
        for k in keys], 1)
  if name == "sum":
    want = pooled.sum(1)
  elif name in ("weighted_sum", "late"):
    logits = np.stack([p[f"weight_{k}"] for k in keys]) if (
        name == "weighted_sum" or fields["combine"] == "weighted") else \
        np.zeros(len(keys))
    w = np.exp(logits)[None] * present
    w = w / w.sum(1, keepdims=True)
    want = np.einsum("bm,bmd->bd", w, pooled)
  np.testing.assert_allclose(np.asarray(out)[:, 0], want, rtol=1e-5,
                             atol=1e-5)


def test_additive_attention_matches_float64_numpy():
  rng = np.random.default_rng(11)
  q = jnp.asarray(rng.normal(size=(B, 3, 8)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(B, 4, 6)), jnp.float32)
  kv_mask = np.array([[1, 1, 0, 1], [0, 0, 0, 0]], bool)  # row 1: no key
  attn = fusion.AdditiveAttention(num_heads=2)
  params = random_params(attn, q, kv)
  out = jit(attn.apply)({"params": params}, q, kv, kv_mask)  # key padding
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)

  def f(name, x):
    y = np.einsum("bnd,dhk->bnhk", np.asarray(x, np.float64), p[name]["kernel"])
    return y + p[name].get("bias", 0.0)

  wq, wk, v = f("query", q), f("key", kv), f("value", kv)
  logits = np.einsum("bqshk,hk->bhqs",
                     np.tanh(wq[:, :, None] + wk[:, None]), p["score"])
  w = _np_softmax_attention(logits, kv_mask[:, None, None, :])
  want = np.einsum("bqhk,hkd->bqd", np.einsum("bhqs,bshk->bqhk", w, v),
                   p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(out)).all()


def test_film_matches_float64_numpy():
  """FiLM blocks (Perez et al. 2018) against a float64 re-derivation:
  target text modulated by the masked means of the projected audio + image."""
  tokens, masks = make_inputs(12)
  module = build("film", num_layers=2, norm="post")  # no closing LayerNorm
  params = random_params(module, tokens, masks)
  out, out_mask = jit(module.apply)({"params": params}, tokens, masks)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  x = {k: np.asarray(v, np.float64) for k, v in tokens.items()}
  m = {k: np.asarray(v) for k, v in masks.items()}
  dense = lambda q, v: v @ q["kernel"] + q["bias"]  # noqa: E731
  cond = sum(_np_masked_mean(dense(p[f"proj_{k}"], x[k]), m[k])
             for k in ("audio", "image"))
  h = dense(p["proj_text"], x["text"])
  for layer in range(2):
    q = p[f"layers_{layer}"]
    a = np.maximum(dense(q["conv1"], h), 0)
    a = dense(q["conv2"], a)
    a = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True)
                                                   + 1e-6)
    gb = dense(q["film"], cond)
    a = np.maximum((1 + gb[:, None, :DIM]) * a + gb[:, None, DIM:], 0)
    h = h + a
  np.testing.assert_array_equal(np.asarray(out_mask), m["text"])
  for b in range(B):  # padded text rows are not compared
    np.testing.assert_allclose(np.asarray(out)[b][m["text"][b]],
                               h[b][m["text"][b]], rtol=1e-4, atol=1e-4)


def test_film_generator_starts_at_zero_so_context_has_no_effect_at_init():
  module, params = init("film")
  tokens, masks = make_inputs(13)
  other = dict(tokens, image=tokens["image"] * -3.0 + 1.0)
  a, _ = jit(module.apply)({"params": params}, tokens, masks)
  b, _ = jit(module.apply)({"params": params}, other, masks)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  assert not np.allclose(np.asarray(params["layers_0"]["conv1"]["kernel"]), 0)
