"""The Transformer layers against float64 numpy and flax's own attention."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from mmtx import layers

B, T, S, D, H, F = 2, 6, 5, 16, 4, 32
# float32 compute against float64 reference: a few ulps through ~3 matmuls.
TOL32 = dict(rtol=1e-5, atol=1e-5)
# bfloat16 compute (8-bit mantissa) against float64.
TOLBF16 = dict(rtol=5e-2, atol=5e-2)


def _rand(seed, *shape):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _init(module, *args, **kw):
  v = module.init(jax.random.key(0), *args, **kw)
  return nn.meta.unbox(v)


def _perturb(params, seed=0):
  """Nonzero biases / non-unit LN scales so the reference sees every term."""
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda a: np.asarray(a) + 0.1 * rs.randn(*a.shape).astype(np.float32),
      params)


# ---------------------------------------------------------------- attention
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_mha_equals_flax_and_float64(cross, with_mask):
  xq = _rand(0, B, T, D)
  xkv = _rand(1, B, S, 8) if cross else xq
  kv_len = xkv.shape[1]
  mask = None
  if with_mask:
    kv_valid = np.ones((B, kv_len), bool)
    kv_valid[0, -2:] = False
    q_valid = np.ones((B, T), bool)
    q_valid[1, -1] = False
    mask = q_valid[:, None, :, None] & kv_valid[:, None, None, :]
  ours = layers.MultiHeadAttention(num_heads=H)
  params = _perturb(_init(ours, xq, xkv if cross else None)["params"])
  got = ours.apply({"params": params}, xq, xkv if cross else None, mask=mask)
  theirs = nn.MultiHeadDotProductAttention(num_heads=H)
  want_flax = theirs.apply({"params": params}, xq, xkv, mask=mask)
  want64 = ref.mha(ref.f64(params), xq.astype(np.float64),
                   np.asarray(xkv, np.float64), mask)
  real = np.ones((B, T), bool) if mask is None else mask.any(-1)[:, 0]
  # flax averages fully masked rows uniformly; ours gives zeros there.
  np.testing.assert_allclose(np.asarray(got)[real],
                             np.asarray(want_flax)[real], **TOL32)
  np.testing.assert_allclose(got, want64, **TOL32)


def test_mha_params_come_from_flax_tree():
  xq = _rand(0, B, T, D)
  theirs = nn.MultiHeadDotProductAttention(num_heads=H)
  params = theirs.init(jax.random.key(3), xq, xq)["params"]
  ours = layers.MultiHeadAttention(num_heads=H)
  ours_shapes = jax.tree_util.tree_map(np.shape, _init(ours, xq)["params"])
  assert ours_shapes == jax.tree_util.tree_map(np.shape, params)
  np.testing.assert_allclose(ours.apply({"params": params}, xq),
                             theirs.apply({"params": params}, xq, xq), **TOL32)


def test_mha_bfloat16_compute_float32_params():
  xq = _rand(0, B, T, D)
  ours = layers.MultiHeadAttention(num_heads=H, dtype=jnp.bfloat16)
  params = _init(ours, xq)["params"]
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
  got = ours.apply({"params": params}, xq)
  assert got.dtype == jnp.bfloat16
  want = ref.mha(ref.f64(params), xq.astype(np.float64), xq.astype(np.float64))
  np.testing.assert_allclose(np.asarray(got, np.float32), want, **TOLBF16)


def test_fully_masked_query_row_is_finite_zero():
  q = jnp.asarray(_rand(0, B, T, H, 4))
  mask = np.ones((B, 1, T, T), bool)
  mask[0, :, 2, :] = False
  out = layers.dot_product_attention(q, q, q, mask)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_array_equal(np.asarray(out)[0, 2], 0.0)
  # And gradients through a fully masked row stay finite too.
  g = jax.grad(lambda x: layers.dot_product_attention(x, x, x, mask).sum())(q)
  assert np.isfinite(np.asarray(g)).all()


def test_dot_product_attention_key_padding_rank2_mask():
  q = jnp.asarray(_rand(0, B, T, H, 4))
  kv = jnp.asarray(_rand(1, B, S, H, 4))
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  got = layers.dot_product_attention(q, kv, kv, valid)
  want = layers.dot_product_attention(q, kv, kv, valid[:, None, None, :])
  np.testing.assert_array_equal(got, want)
  # Dropping the padded keys altogether gives the same result.
  short = layers.dot_product_attention(q[:1], kv[:1, :3], kv[:1, :3])
  np.testing.assert_allclose(got[:1], short, **TOL32)


def test_cudnn_padding_logic_matches_unpadded():
  """The cuDNN path pads to a multiple (as sequence lengths) and drops the
  padding: check the padding/length arithmetic on CPU by running it through
  JAX's XLA kernel, which honours the same lengths and causal flag."""
  from mmtx.layers import attention
  q = jnp.asarray(_rand(0, B, 7, H, 8))
  kv = jnp.asarray(_rand(1, B, 9, H, 8))
  q_len, kv_len = jnp.array([7, 4]), jnp.array([9, 6])
  mask = np.ones((B, 1, 7, 9), bool)
  mask[1, :, :, 6:] = False
  mask[1, :, 4:, :] = False
  orig = jax.nn.dot_product_attention

  def xla_instead(*a, implementation=None, **kw):
    return orig(*a, implementation="xla", **kw)

  try:
    jax.nn.dot_product_attention = xla_instead
    got = attention._cudnn_attention(q, kv, kv, None, False, q_len, kv_len, 8)
    causal = attention._cudnn_attention(q, kv, kv, None, True, None, None, 8)
  finally:
    jax.nn.dot_product_attention = orig
  want = layers.dot_product_attention(q, kv, kv, mask)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, **TOL32)
  want = layers.dot_product_attention(q, kv, kv, layers.causal_mask(7, 9))
  np.testing.assert_allclose(causal, want, **TOL32)


def test_cudnn_requested_on_cpu_is_a_clear_error():
  q = jnp.ones((1, 4, 2, 8), jnp.bfloat16)
  if jax.default_backend() == "gpu":
    pytest.skip("runs the real kernel on GPU")
  with pytest.raises(ValueError, match="needs a GPU"):
    layers.dot_product_attention(q, q, q, implementation="cudnn")


def test_attention_dropout_only_when_not_deterministic():
  x = _rand(0, B, T, D)
  m = layers.MultiHeadAttention(num_heads=H, dropout_rate=0.5)
  p = _init(m, x)
  a = m.apply(p, x)
  b = m.apply(p, x, deterministic=True)
  np.testing.assert_array_equal(a, b)
  c = m.apply(p, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a, c)


# ---------------------------------------------------------------- embeddings
def test_sinusoidal_encoding_hand_values():
  pe = layers.sinusoidal_position_encoding(50, 8)
  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
  assert pe[0, 0] == 0.0 and pe[0, 1] == 1.0
  np.testing.assert_allclose(pe[3, 2], math.sin(3 / 10000 ** (2 / 8)), atol=1e-7)
  np.testing.assert_allclose(pe[7, 5], math.cos(7 / 10000 ** (4 / 8)), atol=1e-7)
  np.testing.assert_allclose(pe[49, 7], math.cos(49 / 10000 ** (6 / 8)),
                             atol=1e-7)


def test_sincos2d_hand_values():
  pe = layers.sincos_2d_position_encoding(3, 4, 8)  # omega = [1, 1e-2]
  assert pe.shape == (12, 8)
  y, x = 2, 1  # token index 2*4+1 = 9
  want = [math.sin(y), math.sin(y / 100), math.cos(y), math.cos(y / 100),
          math.sin(x), math.sin(x / 100), math.cos(x), math.cos(x / 100)]
  np.testing.assert_allclose(pe[9], want, atol=1e-6)
  # PositionEmbedding(temperature=T) adds the T table: T = 100 on 8 channels
  # gives omega = [1, 1/10] (hand values), and T <= 1 is rejected.
  m = layers.PositionEmbedding(kind="sincos2d", grid=(3, 4), temperature=100.0)
  got = np.asarray(m.apply({}, np.zeros((1, 12, 8), np.float32)))[0, 9]
  want = [math.sin(y), math.sin(y / 10), math.cos(y), math.cos(y / 10),
          math.sin(x), math.sin(x / 10), math.cos(x), math.cos(x / 10)]
  np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="temperature must be > 1"):
    layers.PositionEmbedding(kind="sincos2d", grid=(3, 4), temperature=1.0
                             ).apply({}, np.zeros((1, 12, 8), np.float32))


def test_patch_embedding_against_numpy():
  imgs = _rand(0, 2, 12, 8, 3)
  m = layers.PatchEmbedding(patch_size=4, features=5)
  p = _perturb(_init(m, imgs)["params"])
  got = m.apply({"params": p}, imgs)
  k, b = ref.f64(p)["conv"]["kernel"], ref.f64(p)["conv"]["bias"]
  patches = imgs.astype(np.float64).reshape(2, 3, 4, 2, 4, 3).transpose(
      0, 1, 3, 2, 4, 5).reshape(2, 6, 4 * 4 * 3)
  want = patches @ k.reshape(-1, 5) + b
  np.testing.assert_allclose(got, want, **TOL32)


def test_token_embedding_and_positions():
  ids = np.array([[1, 2, 0], [3, 3, 4]], np.int32)
  m = layers.TokenEmbedding(vocab_size=6, features=4, scale_by_sqrt_dim=True)
  p = _init(m, ids)["params"]
  got = m.apply({"params": p}, ids)
  np.testing.assert_allclose(got, np.asarray(p["embedding"])[ids] * 2.0,
                             **TOL32)
  pos = layers.PositionEmbedding(kind="sinusoidal", max_len=16)
  x = np.zeros((1, 3, 4), np.float32)
  full = pos.apply({}, np.zeros((1, 8, 4), np.float32))
  shifted = pos.apply({}, x, positions=np.arange(5, 8))
  np.testing.assert_allclose(shifted, full[:, 5:8], **TOL32)


# ---------------------------------------------------------------- blocks
@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_mlp_against_numpy(activation):
  x = _rand(0, B, T, D)
  m = layers.Mlp(hidden_dim=F, activation=activation)
  p = _perturb(_init(m, x)["params"])
  np.testing.assert_allclose(m.apply({"params": p}, x),
                             ref.ffn(ref.f64(p), x.astype(np.float64),
                                     activation), **TOL32)


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_block_against_numpy(norm, activation):
  x = _rand(0, B, T, D)
  valid = np.ones((B, T), bool)
  valid[1, -2:] = False
  m = layers.EncoderBlock(num_heads=H, mlp_dim=F, norm=norm,
                          activation=activation)
  p = _perturb(_init(m, x, valid)["params"])
  got = m.apply({"params": p}, x, valid)
  mask = valid[:, None, :, None] & valid[:, None, None, :]
  want = ref.encoder_block(ref.f64(p), x.astype(np.float64), mask, norm,
                           activation)
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], **TOL32)


def test_encoder_block_bfloat16():
  x = _rand(0, B, T, D)
  m = layers.EncoderBlock(num_heads=H, mlp_dim=F, norm="post",
                          dtype=jnp.bfloat16)
  p = _init(m, x)["params"]
  got = m.apply({"params": p}, x)
  want = ref.encoder_block(ref.f64(p), x.astype(np.float64), None, "post",
                           "relu")
  np.testing.assert_allclose(np.asarray(got, np.float32), want, **TOLBF16)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_decoder_block_against_numpy(norm):
  x, ctx = _rand(0, B, T, D), _rand(1, B, S, 8)
  tgt_valid = np.ones((B, T), bool)
  tgt_valid[0, -1] = False
  ctx_valid = np.ones((B, S), bool)
  ctx_valid[1, -2:] = False
  m = layers.DecoderBlock(num_heads=H, mlp_dim=F, norm=norm, activation="gelu")
  p = _perturb(_init(m, x, ctx, tgt_valid, ctx_valid)["params"])
  got = m.apply({"params": p}, x, ctx, tgt_valid, ctx_valid)
  causal = np.tril(np.ones((T, T), bool))
  self_mask = causal[None, None] & tgt_valid[:, None, :, None] & tgt_valid[
      :, None, None, :]
  cross_mask = tgt_valid[:, None, :, None] & ctx_valid[:, None, None, :]
  want = ref.decoder_block(ref.f64(p), x.astype(np.float64),
                           ctx.astype(np.float64), self_mask, cross_mask, norm,
                           "gelu")
  np.testing.assert_allclose(np.asarray(got)[tgt_valid], want[tgt_valid],
                             **TOL32)


# ---------------------------------------------------------------- invariances
@pytest.mark.parametrize("scan", [False, True])
def test_encoder_padding_invariance(scan):
  x = _rand(0, B, T, D)
  m = layers.Encoder(num_layers=2, num_heads=H, mlp_dim=F, scan=scan)
  p = _init(m, x)
  base = m.apply(p, x, np.ones((B, T), bool))
  padded = np.concatenate([x, 100 * _rand(5, B, 3, D)], axis=1)
  mask = np.concatenate([np.ones((B, T), bool), np.zeros((B, 3), bool)], 1)
  out = m.apply(p, padded, mask)
  np.testing.assert_allclose(np.asarray(out)[:, :T], base, **TOL32)


def test_decoder_causality():
  x, ctx = _rand(0, B, T, D), _rand(1, B, S, D)
  m = layers.Decoder(num_layers=2, num_heads=H, mlp_dim=F)
  p = _init(m, x, ctx)
  base = np.asarray(m.apply(p, x, ctx))
  for t in range(T):
    x2 = x.copy()
    x2[:, t] += 3.0 * _rand(9, B, D)  # not a constant: LN would remove it
    out = np.asarray(m.apply(p, x2, ctx))
    np.testing.assert_allclose(out[:, :t], base[:, :t], **TOL32)
    assert not np.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("chunks", [(1,) * T, (3, 1, 2)])
def test_kv_cache_decoding_equals_full_causal_pass(scan, chunks):
  x, ctx = _rand(0, B, T, D), _rand(1, B, S, D)
  ctx_valid = np.ones((B, S), bool)
  ctx_valid[0, -1] = False
  kw = dict(num_layers=2, num_heads=H, mlp_dim=F, scan=scan)
  full_m = layers.Decoder(**kw)
  params = _init(full_m, x, ctx, None, ctx_valid)["params"]
  full = np.asarray(full_m.apply({"params": params}, x, ctx, None, ctx_valid))
  dec = layers.Decoder(decode=True, **kw)
  cache = dec.init(jax.random.key(0), x, ctx, None, ctx_valid)["cache"]
  outs, start = [], 0
  for n in chunks:
    y, mut = dec.apply({"params": params, "cache": cache},
                       x[:, start:start + n], ctx, None, ctx_valid,
                       mutable=["cache"])
    cache = mut["cache"]
    outs.append(np.asarray(y))
    start += n
  np.testing.assert_allclose(np.concatenate(outs, 1), full, **TOL32)


def _stack_loop_params(loop_params, num_layers):
  layers_ = [loop_params[f"layers_{i}"] for i in range(num_layers)]
  stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *layers_)
  out = {"layers": stacked}
  out.update({k: v for k, v in loop_params.items()
              if not k.startswith("layers_")})
  return out


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_equals_loop(remat):
  x = _rand(0, B, T, D)
  valid = np.ones((B, T), bool)
  valid[0, -2:] = False
  kw = dict(num_layers=3, num_heads=H, mlp_dim=F, norm="pre")
  loop = layers.Encoder(**kw)
  loop_p = _perturb(_init(loop, x)["params"])
  want = loop.apply({"params": loop_p}, x, valid)
  scanned = layers.Encoder(scan=True, remat=remat, **kw)
  scan_p = _stack_loop_params(loop_p, 3)
  shapes = jax.tree_util.tree_map(np.shape, _init(scanned, x)["params"])
  assert jax.tree_util.tree_map(np.shape, scan_p) == shapes
  got = scanned.apply({"params": scan_p}, x, valid)
  np.testing.assert_allclose(got, want, **TOL32)
  # Gradients agree too (remat must not change them).
  gl = jax.grad(lambda p: loop.apply({"params": p}, x, valid).sum())(loop_p)
  gs = jax.grad(lambda p: scanned.apply({"params": p}, x, valid).sum())(scan_p)
  np.testing.assert_allclose(gs["layers"]["mlp"]["wi"]["kernel"][1],
                             gl["layers_1"]["mlp"]["wi"]["kernel"], rtol=1e-4,
                             atol=1e-5)


def test_dropout_deterministic_eval_and_stochastic_train():
  x = _rand(0, B, T, D)
  m = layers.Encoder(num_layers=2, num_heads=H, mlp_dim=F, dropout_rate=0.3,
                     attention_dropout_rate=0.3)
  p = _init(m, x)
  e1, e2 = m.apply(p, x), m.apply(p, x)
  np.testing.assert_array_equal(e1, e2)
  t1 = m.apply(p, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  t2 = m.apply(p, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(t1, t2) and not np.allclose(t1, e1)


def test_logical_axis_names_on_every_param():
  x = _rand(0, B, T, D)
  v = layers.Encoder(num_layers=2, num_heads=H, mlp_dim=F, scan=True).init(
      jax.random.key(0), x)
  leaves = jax.tree_util.tree_leaves(
      v["params"], is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(a, nn.LogicallyPartitioned) for a in leaves)
  assert all(a.names[0] == "layers" for a in jax.tree_util.tree_leaves(
      v["params"]["layers"],
      is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned)))


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_errors_before_xla():
  x = _rand(0, B, T, D)
  mha = layers.MultiHeadAttention(num_heads=H)
  p = _init(mha, x)
  with pytest.raises(ValueError, match="rank 3"):
    mha.apply(p, x[0])
  with pytest.raises(ValueError, match="feature size 8"):
    mha.apply(p, _rand(0, B, T, 8))
  with pytest.raises(ValueError, match="mask"):
    mha.apply(p, x, mask=np.ones((B, 1, T, T + 1), bool))
  with pytest.raises(ValueError, match="mask"):
    mha.apply(p, x, mask=np.ones((B, T, T), bool))
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    layers.MultiHeadAttention(num_heads=3).init(jax.random.key(0), x)
  pe = layers.PatchEmbedding(patch_size=5, features=4)
  with pytest.raises(ValueError, match="not divisible by patch_size=5"):
    pe.init(jax.random.key(0), np.zeros((1, 12, 10, 3), np.float32))
  with pytest.raises(ValueError, match="NHWC"):
    pe.init(jax.random.key(0), np.zeros((12, 10, 3), np.float32))
  enc = layers.Encoder(num_layers=1, num_heads=H, mlp_dim=F)
  pe_ = _init(enc, x)
  with pytest.raises(ValueError, match=r"token mask must have shape"):
    enc.apply(pe_, x, np.ones((B, T + 1), bool))
  with pytest.raises(ValueError, match="norm must be one of"):
    layers.EncoderBlock(num_heads=H, mlp_dim=F, norm="sandwich").init(
        jax.random.key(0), x)
  with pytest.raises(ValueError, match="remat policy"):
    layers.Encoder(num_layers=1, num_heads=H, mlp_dim=F, remat="x").init(
        jax.random.key(0), x)
  with pytest.raises(ValueError, match="integer token ids"):
    layers.TokenEmbedding(5, 4).init(jax.random.key(0), np.zeros((1, 2)))
