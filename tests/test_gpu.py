"""The accelerator paths, checked where they run: `implementation='cudnn'`
against 'xla' in bf16 (values and gradients; padding masks and sequence
lengths, causal by structure, lengths cuDNN rejects unpadded), cuDNN's
custom call in the compiled program, a causal padded Encoder, and a bf16
DualEncoder. Skipped without a GPU; experiments/benchmarks/gpu_session.sh
runs them on one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtx import layers

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason="needs a GPU")

# bf16 has an 8-bit mantissa: outputs and gradients of two kernels that sum
# in different orders agree to a few units of 2^-8 relative to their scale.
TOL = 2e-2


def _qkv(b, t, s, h, d, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(kk, (b, n, h, d), jnp.float32).astype(jnp.bfloat16)
          for kk, n in zip(k, (t, s, s))]


def _rel_err(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)


@pytest.mark.parametrize("t,s,mask_kind", [
    (197, 197, "none"),        # ViT-B/16 with a class token: odd length
    (77, 77, "causal"),        # CLIP's text tower
    (77, 77, "causal+lengths"),  # ... with right padding
    (64, 100, "padding"),      # cross-attention with padded keys
    (33, 33, "padding"),
    (40, 57, "lengths"),       # padded queries and keys
])
def test_cudnn_attention_equals_xla_in_values_and_gradients(t, s, mask_kind):
  b, h, d = 2, 4, 64
  q, k, v = _qkv(b, t, s, h, d)
  kw = {}
  if "causal" in mask_kind:
    kw["causal"] = True
  if "lengths" in mask_kind:
    kw["query_seq_lengths"] = jnp.array([t, t // 2 + 1], jnp.int32)
    kw["key_value_seq_lengths"] = jnp.array([s, s // 2 + 1], jnp.int32)
  mask = None
  if mask_kind == "padding":
    lengths = jnp.array([s, s // 2 + 1])
    mask = jnp.arange(s)[None] < lengths[:, None]          # [b, s]

  def loss(impl):
    def f(q, k, v):
      out = layers.dot_product_attention(q, k, v, mask, implementation=impl,
                                         **kw)
      return (out.astype(jnp.float32) ** 2).sum(), out
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

  (_, out_x), grads_x = loss("xla")(q, k, v)
  (_, out_c), grads_c = loss("cudnn")(q, k, v)
  assert _rel_err(out_c, out_x) < TOL
  for gc, gx in zip(grads_c, grads_x):
    assert _rel_err(gc, gx) < TOL


def _fmha_calls(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text().count("__cudnn$fmha")


@pytest.mark.parametrize("kw", [{}, {"causal": True}, {
    "causal": True, "query_seq_lengths": jnp.array([128, 70], jnp.int32),
    "key_value_seq_lengths": jnp.array([128, 70], jnp.int32)}])
def test_cudnn_is_used_when_asked(kw):
  """The compiled program calls cuDNN's fused attention (its custom-call
  target; function names in the metadata do not count), forward and
  backward; the 'xla' path never does."""
  q, k, v = _qkv(2, 128, 128, 4, 64)
  def fwd(impl):
    return lambda q, k, v: layers.dot_product_attention(
        q, k, v, implementation=impl, **kw)
  def grad(impl):
    return jax.grad(lambda q, k, v: fwd(impl)(q, k, v).astype(
        jnp.float32).sum(), argnums=(0, 1, 2))
  assert _fmha_calls(fwd("cudnn"), q, k, v) >= 1
  assert _fmha_calls(grad("cudnn"), q, k, v) >= 2   # forward + backward
  assert _fmha_calls(fwd("xla"), q, k, v) == 0
  assert _fmha_calls(grad("xla"), q, k, v) == 0


def test_causal_padded_encoder_cudnn_equals_xla():
  """A text tower's Encoder (causal, right-padded token mask) through
  'cudnn' (lengths + causal, no dense mask) and 'xla': outputs at real
  tokens and gradients agree to bf16 tolerance; cuDNN is in the program."""
  b, t, d = 4, 77, 256
  x = jax.random.normal(jax.random.key(0), (b, t, d)).astype(jnp.bfloat16)
  mask = jnp.arange(t)[None, :] < jnp.array([77, 40, 12, 1])[:, None]
  kw = dict(num_layers=2, num_heads=4, mlp_dim=512, dtype=jnp.bfloat16,
            causal=True)
  params = layers.Encoder(**kw).init(jax.random.key(1), x, mask)

  def step(impl):
    enc = layers.Encoder(attention_impl=impl, **kw)
    def f(p):
      out = enc.apply(p, x, mask)
      return (out.astype(jnp.float32) ** 2 * mask[..., None]).sum(), out
    return jax.value_and_grad(f, has_aux=True)
  (_, out_x), g_x = jax.jit(step("xla"))(params)
  (_, out_c), g_c = jax.jit(step("cudnn"))(params)
  real = np.asarray(mask)
  assert _rel_err(np.asarray(out_c, np.float32)[real],
                  np.asarray(out_x, np.float32)[real]) < TOL
  for a, w in zip(jax.tree_util.tree_leaves(g_c),
                  jax.tree_util.tree_leaves(g_x)):
    assert _rel_err(a, w) < 5e-2
  assert _fmha_calls(step("cudnn"), params) >= 2


@pytest.mark.parametrize("impl", ["auto", "cudnn"])
def test_bf16_dual_encoder_step_matches_float32(impl):
  """One DualEncoder forward in bf16 compute (cuDNN attention where it
  applies, or everywhere) against float32 XLA: embeddings within bf16
  tolerance."""
  from mmtx.models import DualEncoder
  def cfg(dtype, impl):
    tower = dict(width=128, depth=2, mlp_dim=256, num_heads=2, dtype=dtype,
                 attention_impl=impl)
    return dict(embed_dim=64, loss="softmax",
                 image=dict(patch_size=16, posemb="learned", pool="gap",
                            **tower),
                 text=dict(vocab_size=100, max_len=16, causal=True,
                           pool="last", **tower))
  images = jax.random.uniform(jax.random.key(0), (4, 64, 64, 3),
                              minval=-1, maxval=1)
  texts = jnp.concatenate([jax.random.randint(jax.random.key(1), (4, 12), 1,
                                              100),
                           jnp.zeros((4, 4), jnp.int32)], axis=1)
  ref = DualEncoder(cfg("float32", "xla"))
  params = ref.init(jax.random.key(2), images, texts)
  img32, txt32, _ = jax.jit(ref.apply)(params, images, texts)
  img16, txt16, _ = jax.jit(DualEncoder(cfg("bfloat16", impl)).apply)(
      params, images, texts)
  # L2-normalised embeddings: compare the cosine to float32's.
  for a, b in ((img16, img32), (txt16, txt32)):
    cos = (np.asarray(a, np.float32) * np.asarray(b, np.float32)).sum(-1)
    assert cos.min() > 0.99, cos
