"""The attention `implementation=` switch and structural masks (causal,
sequence lengths) against float64 numpy; the cuDNN plumbing on CPU through
JAX's XLA kernel, which takes the same lengths; remat policies that name the
q/k/v and FFN activations."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtx import layers
from mmtx.layers import attention

TOL32 = dict(rtol=1e-5, atol=1e-5)
# bfloat16 compute on both sides, two kernels: a few units of 2^-8.
TOLBF16 = dict(rtol=3e-2, atol=3e-2)


def _rand(seed, *shape):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _attention64(q, k, v, mask):
  """softmax(q k^T / sqrt(d)) v in float64; `mask` [b, 1|h, t, s] bool;
  a row with no visible key gives zeros."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
  mask = np.broadcast_to(mask, logits.shape)
  logits = np.where(mask, logits, -np.inf)
  peak = np.where(mask.any(-1, keepdims=True),
                  logits.max(-1, keepdims=True), 0.0)
  w = np.where(mask, np.exp(logits - peak), 0.0)
  w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
  return np.einsum("bhts,bshd->bthd", w, v)


def _dense_mask(b, t, s, q_len=None, kv_len=None, causal=False):
  """The same structure written out by hand, [b, 1, t, s]."""
  m = np.ones((b, 1, t, s), bool)
  for i in range(b):
    if q_len is not None:
      m[i, :, q_len[i]:, :] = False
    if kv_len is not None:
      m[i, :, :, kv_len[i]:] = False
  if causal:
    m &= np.tril(np.ones((t, s), bool))[None, None]
  return m


@pytest.mark.parametrize("t,s,causal", [(7, 7, True), (5, 9, False),
                                        (6, 6, False), (4, 10, True)])
def test_xla_lengths_and_causal_equal_dense_mask_and_float64(t, s, causal):
  b, h, d = 3, 2, 8
  q, k, v = _rand(0, b, t, h, d), _rand(1, b, s, h, d), _rand(2, b, s, h, d)
  q_len, kv_len = np.array([t, t - 2, 1]), np.array([s, 3, s - 1])
  mask = _dense_mask(b, t, s, q_len, kv_len, causal)
  got = layers.dot_product_attention(
      q, k, v, causal=causal, query_seq_lengths=jnp.asarray(q_len),
      key_value_seq_lengths=jnp.asarray(kv_len))
  dense = layers.dot_product_attention(q, k, v, mask)
  want = _attention64(q, k, v, mask)
  np.testing.assert_allclose(got, want, **TOL32)
  np.testing.assert_array_equal(got, dense)
  # Padded query rows give zeros, as a fully masked row does.
  np.testing.assert_array_equal(np.asarray(got)[1, t - 2:], 0.0)


def test_unknown_implementation_is_an_error_listing_the_choices():
  q = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match=r"one of \('xla', 'cudnn', 'auto'\)"):
    layers.dot_product_attention(q, q, q, implementation="flash")
  x = jnp.ones((1, 4, 16))
  with pytest.raises(ValueError, match=r"'splash'"):
    layers.MultiHeadAttention(num_heads=2, implementation="splash").init(
        jax.random.key(0), x)


def test_padding_lengths_of_prefix_masks_and_error_otherwise():
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(attention.padding_lengths(mask), [3, 1, 0])
  bad = np.array([[1, 1, 1, 1], [1, 0, 1, 0]], bool)
  with pytest.raises(ValueError, match=r"True then False; rows \[1\]"):
    attention.padding_lengths(bad)
  # A traced mask cannot be checked; its lengths are its counts.
  got = jax.jit(attention.padding_lengths)(mask)
  np.testing.assert_array_equal(got, [3, 1, 0])


def test_cudnn_non_prefix_mask_is_an_error_where_it_enters():
  """An EncoderBlock with implementation='cudnn' turns its [batch, tokens]
  mask into sequence lengths at its call, so a mask with a hole is an error
  there (before any kernel; this CPU has no cuDNN)."""
  x = jnp.ones((2, 4, 16), jnp.bfloat16)
  mask = np.array([[1, 1, 1, 1], [1, 0, 1, 1]], bool)
  block = layers.EncoderBlock(num_heads=2, mlp_dim=32, dtype=jnp.bfloat16,
                              attention_impl="cudnn")
  with pytest.raises(ValueError, match="True then False"):
    block.init(jax.random.key(0), x, mask)


@pytest.fixture
def cudnn_through_xla(monkeypatch):
  """Pretends to be on a GPU and routes the cuDNN call to JAX's XLA kernel
  (same arguments: lengths, is_causal); records each call's arguments."""
  calls = []
  real = jax.nn.dot_product_attention

  def fake(q, k, v, bias=None, mask=None, *, implementation=None, **kw):
    assert implementation == "cudnn"
    calls.append(dict(shape=q.shape, mask=mask, **kw))
    return real(q, k, v, bias, mask, implementation="xla", **kw)
  monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  return calls


def test_cudnn_dense_mask_is_an_error(cudnn_through_xla):
  q = jnp.ones((2, 4, 2, 8), jnp.bfloat16)
  with pytest.raises(ValueError, match="by structure, not a dense"):
    layers.dot_product_attention(q, q, q, layers.causal_mask(4),
                                 implementation="cudnn")
  assert not cudnn_through_xla


@pytest.mark.parametrize("causal", [False, True])
def test_encoder_cudnn_path_gets_lengths_not_a_mask(cudnn_through_xla, causal):
  """A text-tower-like Encoder (padding + causal) with implementation=
  'cudnn': cuDNN is called with sequence lengths padded to a multiple of 8
  and the causal flag, never a dense mask, and gives the XLA path's outputs
  and gradients."""
  b, t, d = 2, 13, 32
  x = jnp.asarray(_rand(0, b, t, d)).astype(jnp.bfloat16)
  mask = np.arange(t)[None, :] < np.array([[t], [5]])
  kw = dict(num_layers=2, num_heads=2, mlp_dim=64, dtype=jnp.bfloat16,
            causal=causal)
  ref = layers.Encoder(attention_impl="xla", **kw)
  params = nn.meta.unbox(ref.init(jax.random.key(1), x, mask))

  def loss(impl):
    enc = layers.Encoder(attention_impl=impl, **kw)
    def f(p):
      out = enc.apply(p, x, mask)
      return (out.astype(jnp.float32) ** 2 * mask[..., None]).sum(), out
    return jax.value_and_grad(f, has_aux=True)(params)
  (_, want), g_want = loss("xla")
  assert not cudnn_through_xla
  (_, got), g_got = loss("cudnn")
  assert cudnn_through_xla
  for call in cudnn_through_xla:
    assert call["shape"][1] == 16 and call["mask"] is None
    assert call["is_causal"] == causal
    np.testing.assert_array_equal(call["query_seq_lengths"], [t, 5])
    np.testing.assert_array_equal(call["key_value_seq_lengths"], [t, 5])
  real = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(got, np.float32)[real],
                             np.asarray(want, np.float32)[real], **TOLBF16)
  for a, w in zip(jax.tree_util.tree_leaves(g_got),
                  jax.tree_util.tree_leaves(g_want)):
    a, w = np.asarray(a, np.float32), np.asarray(w, np.float32)
    np.testing.assert_allclose(a, w, rtol=5e-2,
                               atol=5e-2 * max(np.abs(w).max(), 1e-3))


def _saved_residuals(remat, x, capsys):
  enc = layers.Encoder(num_layers=2, num_heads=2, mlp_dim=32, remat=remat)
  params = nn.meta.unbox(enc.init(jax.random.key(0), x))
  f = lambda p, x: (enc.apply(p, x) ** 2).sum()  # noqa: E731
  capsys.readouterr()
  jax.ad_checkpoint.print_saved_residuals(f, params, x)
  lines = capsys.readouterr().out.splitlines()
  return [n for n in lines if "from the argument" not in n], jax.grad(f)(
      params, x)


def test_remat_policies_name_the_activations_they_keep(capsys):
  """'qkv' keeps the q/k/v projections (by their checkpoint_name) and
  'qkv_mlp' the FFN's first projection too, in each of the 2 layers; 'full'
  keeps none of them. The gradients are the same whatever is kept."""
  x = jnp.asarray(_rand(0, 2, 5, 16))
  notes, grads = {}, {}
  for remat in ("none", "full", "qkv", "qkv_mlp"):
    notes[remat], grads[remat] = _saved_residuals(remat, x, capsys)

  def named(remat, name):
    return sum(f"named '{name}'" in n for n in notes[remat])
  for name in ("query_proj", "key_proj", "value_proj"):
    assert named("full", name) == 0, notes["full"]
    assert named("qkv", name) == 2, notes["qkv"]
    assert named("qkv_mlp", name) == 2, notes["qkv_mlp"]
  assert named("qkv", "mlp_in") == 0 and named("qkv_mlp", "mlp_in") == 2
  assert len(notes["full"]) + 6 == len(notes["qkv"])
  assert len(notes["qkv"]) + 2 == len(notes["qkv_mlp"])
  for remat in ("full", "qkv", "qkv_mlp"):
    for a, b in zip(jax.tree_util.tree_leaves(grads[remat]),
                    jax.tree_util.tree_leaves(grads["none"])):
      np.testing.assert_allclose(a, b, **TOL32)


def test_cudnn_kernel_pads_by_lengths_only_when_needed(cudnn_through_xla):
  """Unmasked attention (the ViT): a length that is not a multiple of 8 is
  padded and expressed as sequence lengths, a multiple of 8 gets neither;
  both equal float64 attention on the unpadded tokens."""
  rs = np.random.RandomState(0)
  for t in (17, 16):
    q, k, v = (rs.randn(2, t, 3, 8) for _ in range(3))
    out = attention._cudnn_attention(
        *(jnp.asarray(x, jnp.float32) for x in (q, k, v)), None, False, None,
        None, 8)
    np.testing.assert_allclose(out, _attention64(q, k, v, np.ones(
        (1, 1, t, t), bool)), atol=2e-5)
  got = [(c["shape"], c["query_seq_lengths"] is not None,
          c["key_value_seq_lengths"] is not None) for c in cudnn_through_xla]
  assert got == [((2, 24, 3, 8), True, True), ((2, 16, 3, 8), False, False)]
