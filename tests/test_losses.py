"""mmtx.losses against float64 numpy references, open_clip and hand cases."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtx import losses

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------
# float64 numpy references
# ----------------------------------------------------------------------------
def np_log_softmax(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_clip(x, y, s):
  """Loss and analytic gradients (x, y, s) of the CLIP loss."""
  n = x.shape[0]
  dots = x @ y.T
  logits = s * dots
  lp_row, lp_col = np_log_softmax(logits, 1), np_log_softmax(logits, 0)
  loss = -0.5 * (np.mean(np.diag(lp_row)) + np.mean(np.diag(lp_col)))
  eye = np.eye(n)
  g = 0.5 / n * ((np.exp(lp_row) - eye) + (np.exp(lp_col) - eye))
  return loss, (s * g @ y, s * g.T @ x, np.sum(g * dots))


def np_siglip(x, y, s, b):
  """Loss and analytic gradients (x, y, s, b) of the SigLIP loss."""
  n = x.shape[0]
  z = 2 * np.eye(n) - 1
  dots = x @ y.T
  logits = s * dots + b
  loss = np.sum(np.logaddexp(0.0, -z * logits)) / n   # -log sigmoid(z l)
  g = -z / (1.0 + np.exp(z * logits)) / n             # -z sigmoid(-z l) / n
  return loss, (s * g @ y, s * g.T @ x, np.sum(g * dots), np.sum(g))


def finite_diff(f, args, eps=1e-6):
  grads = []
  for k, a in enumerate(args):
    a = np.array(a, dtype=np.float64)
    g = np.zeros_like(a)
    for idx in np.ndindex(*a.shape):
      hi, lo = a.copy(), a.copy()
      hi[idx] += eps
      lo[idx] -= eps
      args_hi = list(args[:k]) + [hi] + list(args[k + 1:])
      args_lo = list(args[:k]) + [lo] + list(args[k + 1:])
      g[idx] = (f(*args_hi) - f(*args_lo)) / (2 * eps)
    grads.append(g)
  return grads


def pair_features(n=8, d=5, seed=0, normalise=True):
  rng = np.random.default_rng(seed)
  x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  if normalise:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
  y = 0.7 * x + 0.3 * y
  return x, y


def f32(*arrays):
  return [jnp.asarray(a, jnp.float32) for a in arrays]


# ----------------------------------------------------------------------------
# Contrastive losses
# ----------------------------------------------------------------------------
def test_numpy_references_have_right_gradients():
  x, y = pair_features(4, 3)
  s, b = 3.0, -1.5
  _, (gx, gy, gs) = np_clip(x, y, s)
  fd = finite_diff(lambda x, y, s: np_clip(x, y, float(s))[0],
                   [x, y, np.array(s)])
  for a, c in zip((gx, gy, gs), fd):
    np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-8)
  _, grads = np_siglip(x, y, s, b)
  fd = finite_diff(lambda x, y, s, b: np_siglip(x, y, float(s), float(b))[0],
                   [x, y, np.array(s), np.array(b)])
  for a, c in zip(grads, fd):
    np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("normalise", [True, False])
def test_softmax_contrastive_matches_numpy(normalise):
  x, y = pair_features(8, 5, seed=1, normalise=normalise)
  s = 1 / 0.07
  want, want_grads = np_clip(x, y, s)
  fn = jax.jit(jax.value_and_grad(losses.softmax_contrastive_loss,
                                  argnums=(0, 1, 2)))
  got, grads = fn(*f32(x, y, s))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("normalise", [True, False])
def test_sigmoid_contrastive_matches_numpy(normalise):
  x, y = pair_features(8, 5, seed=2, normalise=normalise)
  s, b = 10.0, -10.0
  want, want_grads = np_siglip(x, y, s, b)
  fn = jax.jit(jax.value_and_grad(losses.sigmoid_contrastive_loss,
                                  argnums=(0, 1, 2, 3)))
  got, grads = fn(*f32(x, y, s, b))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-5)


def test_contrastive_bf16_inputs_compute_in_float32():
  x, y = pair_features(8, 16, seed=3)
  xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
  xr, yr = np.asarray(xb, np.float64), np.asarray(yb, np.float64)
  got = losses.softmax_contrastive_loss(xb, yb, jnp.bfloat16(14.0))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_clip(xr, yr, 14.0)[0], rtol=1e-5)
  got = losses.sigmoid_contrastive_loss(xb, yb, 10.0, -10.0)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_siglip(xr, yr, 10.0, -10.0)[0],
                             rtol=1e-5)


def test_logit_scale_helpers():
  param = losses.logit_scale_init()(jax.random.key(0), (), jnp.float32)
  np.testing.assert_allclose(param, math.log(1 / 0.07), rtol=1e-6)
  np.testing.assert_allclose(losses.logit_scale_from_param(param), 1 / 0.07,
                             rtol=1e-6)
  np.testing.assert_allclose(losses.logit_scale_from_param(math.log(500.)),
                             100.0, rtol=1e-6)
  np.testing.assert_allclose(
      losses.logit_scale_from_param(math.log(500.), max_scale=None), 500.0,
      rtol=1e-5)
  # Past the clamp the scale gets no gradient (CLIP clamps the parameter).
  g = jax.grad(losses.logit_scale_from_param)(jnp.float32(math.log(500.)))
  assert float(g) == 0.0
  siglip = losses.logit_scale_init(losses.SIGMOID_LOGIT_SCALE_INIT)
  np.testing.assert_allclose(
      losses.logit_scale_from_param(siglip(None, (1,)), None), [10.0],
      rtol=1e-6)
  assert losses.SIGMOID_LOGIT_BIAS_INIT == -10.0


def test_contrastive_matches_open_clip():
  torch = pytest.importorskip("torch")
  loss_mod = pytest.importorskip("open_clip.loss")
  x, y = pair_features(12, 6, seed=4)
  for name, s, b in (("clip", 1 / 0.07, None), ("siglip", 10.0, -10.0),
                     ("siglip", 3.0, 1.0)):
    tx, ty = (torch.tensor(a, requires_grad=True) for a in (x, y))
    ts = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    if name == "clip":
      ref = loss_mod.ClipLoss()(tx, ty, ts)
      inputs, args = (tx, ty, ts), f32(x, y, s)
      fn = losses.softmax_contrastive_loss
    else:
      tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
      ref = loss_mod.SigLipLoss()(tx, ty, ts, tb)
      inputs, args = (tx, ty, ts, tb), f32(x, y, s, b)
      fn = losses.sigmoid_contrastive_loss
    ref.backward()
    got, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(
        *args)
    np.testing.assert_allclose(got, ref.item(), rtol=1e-5, err_msg=name)
    for g, t in zip(grads, inputs):
      np.testing.assert_allclose(g, t.grad.numpy(), rtol=2e-4, atol=1e-5,
                                 err_msg=name)


def test_sharded_contrastive_equals_one_device_on_8_devices():
  """Runs in a subprocess: 8 host devices must be set before jax starts."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, os.path.join(HERE, "contrastive_multidevice_check.py")],
      capture_output=True, text=True, timeout=300, env=env,
      cwd=os.path.dirname(HERE))
  assert proc.returncode == 0 and "ALL OK" in proc.stdout, (
      proc.stdout[-4000:] + proc.stderr[-4000:])


# ----------------------------------------------------------------------------
# ITM hard negatives
# ----------------------------------------------------------------------------
IDS = np.array([0, 0, 1, 2, 2, 2, 3, 4])   # duplicate captions of images 0, 2


def test_itm_never_samples_a_positive():
  rng = np.random.default_rng(5)
  sim = jnp.asarray(rng.normal(size=(8, 8)) * 3 + 5 * np.eye(8), jnp.float32)
  pos = np.asarray(losses.positive_mask_from_ids(IDS))
  keys = jax.random.split(jax.random.key(0), 4000)
  neg = jax.jit(jax.vmap(lambda k: losses.itm_hard_negatives(k, sim, pos)))(
      keys)
  rows = np.arange(8)[None, :].repeat(4000, 0)
  assert np.all(neg.txt_valid) and np.all(neg.img_valid)
  assert not np.any(pos[rows, np.asarray(neg.txt_idx)])   # image i, text j
  assert not np.any(pos[np.asarray(neg.img_idx), rows])   # image i, text j
  # Image 6 (id 3, unique) draws text j with softmax(sim[6]) over j != 6.
  cand = ~pos[6]
  p = np.exp(np.asarray(sim[6], np.float64)) * cand
  p /= p.sum()
  freq = np.bincount(np.asarray(neg.txt_idx)[:, 6], minlength=8) / 4000
  np.testing.assert_allclose(freq, p, atol=0.04)
  # Text 7 draws image i with softmax(sim[:, 7]) over i != 7.
  q = np.exp(np.asarray(sim[:, 7], np.float64)) * ~pos[:, 7]
  q /= q.sum()
  freq = np.bincount(np.asarray(neg.img_idx)[:, 7], minlength=8) / 4000
  np.testing.assert_allclose(freq, q, atol=0.04)


def test_itm_random_fraction_mixes_uniform_draws():
  # Draw law per row: r * uniform + (1 - r) * softmax, both over the
  # non-positives (float64 reference), for r = 0, 0.5 and 1.
  rng = np.random.default_rng(7)
  sim = jnp.asarray(rng.normal(size=(8, 8)) * 3 + 5 * np.eye(8), jnp.float32)
  pos = np.asarray(losses.positive_mask_from_ids(IDS))
  keys = jax.random.split(jax.random.key(3), 6000)
  s64 = np.asarray(sim, np.float64)
  for r in (0.0, 0.5, 1.0):
    neg = jax.jit(jax.vmap(lambda k, r=r: losses.itm_hard_negatives(
        k, sim, pos, random_fraction=r)))(keys)
    for i in (0, 6):
      cand = ~pos[i]
      soft = np.exp(s64[i] - s64[i].max()) * cand
      want = r * cand / cand.sum() + (1 - r) * soft / soft.sum()
      freq = np.bincount(np.asarray(neg.txt_idx)[:, i], minlength=8) / 6000
      np.testing.assert_allclose(freq, want, atol=0.03)
      assert not np.any(pos[i, np.asarray(neg.txt_idx)[:, i]])
      cand = ~pos[:, i]   # text i draws an image
      soft = np.exp(s64[:, i] - s64[:, i].max()) * cand
      want = r * cand / cand.sum() + (1 - r) * soft / soft.sum()
      freq = np.bincount(np.asarray(neg.img_idx)[:, i], minlength=8) / 6000
      np.testing.assert_allclose(freq, want, atol=0.03)
  # r = 0 draws exactly what the default does.
  a = losses.itm_hard_negatives(keys[0], sim, pos)
  b = losses.itm_hard_negatives(keys[0], sim, pos, random_fraction=0.0)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  with pytest.raises(ValueError, match="random_fraction"):
    losses.itm_hard_negatives(keys[0], sim, pos, random_fraction=1.5)


def test_an_images_own_captions_are_no_itm_negatives():
  # Five images; row r drew caption sets[r, 0]. Fingerprints 10, 11 are the
  # two templates of "a red circle" (images 0, 1 and 3 are red circles, row
  # 3 drew the other template), 12 is one token off, 13 another caption.
  sets = np.array([[10, 11, -1], [10, 11, -1], [12, 20, -1], [11, 10, -1],
                   [13, -1, -1]])
  got = np.asarray(losses.positive_mask_from_caption_sets(sets))
  want = np.array([[sets[j, 0] in sets[i] for j in range(5)]
                   for i in range(5)])                   # [image i, text j]
  np.testing.assert_array_equal(got, want)
  assert got[0, 1] and got[0, 3] and got[3, 0] and not got[0, 2]
  assert not got[2, 0] and not got[0, 4] and got[4, 4]
  # Not symmetric: image 5 says 10 and 30, image 6 only 30 -> text 10 (row 5)
  # is no caption of image 6, but text 30 (row 6) is one of image 5's.
  asym = np.asarray(losses.positive_mask_from_caption_sets(
      np.array([[10, 30], [30, -1]])))
  np.testing.assert_array_equal(asym, [[True, True], [False, True]])
  # -1 padding never matches; a (padding) row whose own fingerprint is -1
  # is no positive of any image.
  pad = np.asarray(losses.positive_mask_from_caption_sets(
      np.array([[-1, -1], [7, -1]])))
  np.testing.assert_array_equal(pad, [[False, False], [False, True]])
  # Even when ITC scores the duplicates highest, image 0 never draws one.
  pos = np.asarray(losses.positive_mask_from_ids(np.arange(5))) | got
  sim = jnp.asarray(np.where(got, 50.0, 0.0), jnp.float32)
  keys = jax.random.split(jax.random.key(2), 500)
  neg = jax.vmap(lambda k: losses.itm_hard_negatives(k, sim, pos))(keys)
  assert set(np.asarray(neg.txt_idx)[:, 0]) <= {2, 4}
  assert set(np.asarray(neg.img_idx)[:, 0]) <= {2, 4}
  with pytest.raises(ValueError, match="caption_sets"):
    losses.positive_mask_from_caption_sets(np.zeros(5, np.int32))


def test_itm_rows_without_candidates_are_safe():
  sim = jnp.asarray(np.random.default_rng(6).normal(size=(4, 4)) * 1e4,
                    jnp.float32)
  neg = losses.itm_hard_negatives(jax.random.key(1), sim,
                                  jnp.ones((4, 4), bool))
  assert not np.any(neg.txt_valid) and not np.any(neg.img_valid)
  np.testing.assert_array_equal(neg.txt_idx, np.arange(4))
  np.testing.assert_array_equal(neg.img_idx, np.arange(4))
  # Image 1 has no candidate; text 2 only one; -inf and NaN never drawn.
  mask = np.zeros((4, 4), bool)
  mask[1, :] = True
  mask[:, 2] = True
  mask[0, 2] = False
  sim = np.array(sim)
  sim[0, 3] = -np.inf
  sim[3, 0] = np.nan
  sample = jax.jit(losses.itm_hard_negatives)
  for seed in range(20):
    neg = sample(jax.random.key(seed), jnp.asarray(sim), jnp.asarray(mask))
    np.testing.assert_array_equal(neg.txt_valid, [True, False, True, True])
    assert int(neg.txt_idx[0]) in (1, 2)   # text 3 is -inf for image 0
    assert int(neg.txt_idx[3]) == 1   # text 0 is NaN, text 2 masked
    assert int(neg.img_idx[2]) == 0   # only image 0 may be drawn for text 2
    assert int(neg.img_idx[0]) == 2   # image 1 masked, image 3 NaN
  loss = losses.itm_loss(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32),
                         jnp.zeros(4))
  assert float(loss) == 0.0
  g = jax.grad(lambda l: losses.itm_loss(l, jnp.zeros(4, jnp.int32),
                                         jnp.zeros(4)))(jnp.ones((4, 2)))
  assert np.all(np.isfinite(g)) and not np.any(g)


def test_itm_loss_matches_numpy():
  rng = np.random.default_rng(7)
  logits, labels = rng.normal(size=(6, 2)), rng.integers(0, 2, 6)
  w = np.array([1, 1, 0, 1, 0, 1.0])
  ce = -np_log_softmax(logits, 1)[np.arange(6), labels]
  np.testing.assert_allclose(
      losses.itm_loss(*f32(logits), labels, jnp.asarray(w)),
      np.sum(w * ce) / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(losses.itm_loss(*f32(logits), labels),
                             ce.mean(), rtol=1e-5)


# ----------------------------------------------------------------------------
# MLM masking and token losses
# ----------------------------------------------------------------------------
def test_mlm_mask_statistics():
  vocab, pad, cls, sep, mask_id = 1000, 0, 1, 2, 3
  rng = np.random.default_rng(8)
  tokens = rng.integers(4, vocab, size=(512, 128))
  lengths = rng.integers(20, 129, size=512)
  tokens[np.arange(128)[None, :] >= lengths[:, None]] = pad
  tokens[:, 0] = cls
  tokens[np.arange(512), lengths - 1] = sep
  tokens = jnp.asarray(tokens, jnp.int32)
  masked, targets, weights = jax.jit(
      lambda k, t: losses.mlm_mask(k, t, vocab_size=vocab, mask_id=mask_id,
                                   special_ids=(cls, sep)))(
                                       jax.random.key(3), tokens)
  tokens, masked = np.asarray(tokens), np.asarray(masked)
  weights = np.asarray(weights)
  np.testing.assert_array_equal(targets, tokens)
  special = tokens < 4
  assert weights.dtype == np.float32
  assert not np.any(weights[special])
  np.testing.assert_array_equal(masked[special], tokens[special])
  np.testing.assert_array_equal(masked[weights == 0], tokens[weights == 0])
  sel = weights == 1
  assert abs(sel.sum() / (~special).sum() - 0.15) < 0.01
  n = sel.sum()
  to_mask = masked[sel] == mask_id
  kept = masked[sel] == tokens[sel]
  rand = ~to_mask & ~kept
  assert abs(to_mask.sum() / n - 0.8) < 0.02
  assert abs(kept.sum() / n - 0.1) < 0.015
  assert abs(rand.sum() / n - 0.1) < 0.015
  assert np.all(masked[sel][rand] >= 4) and np.all(masked < vocab)


def test_mlm_random_tokens_skip_special_ids():
  """Small vocab: random draws cover exactly the non-special ids, uniformly."""
  tokens = jnp.full((128, 512), 1, jnp.int32)   # all regular id 1
  masked, _, weights = losses.mlm_mask(
      jax.random.key(4), tokens, vocab_size=8, mask_id=3, special_ids=(7, 5),
      prob=1.0)
  assert np.all(np.asarray(weights) == 1)
  masked = np.asarray(masked)
  counts = np.bincount(masked.ravel(), minlength=8) / masked.size
  # 80% -> 3; 10% kept (1); 10% uniform over the regular ids {1, 2, 4, 6}.
  np.testing.assert_allclose(counts[[0, 5, 7]], 0.0)
  np.testing.assert_allclose(counts[3], 0.8, atol=0.01)
  np.testing.assert_allclose(counts[1], 0.1 + 0.025, atol=0.006)
  np.testing.assert_allclose(counts[[2, 4, 6]], 0.025, atol=0.004)


def test_mlm_mask_rejects_bad_arguments():
  tokens = jnp.ones((2, 4), jnp.int32)
  with pytest.raises(ValueError, match="special_ids"):
    losses.mlm_mask(jax.random.key(0), tokens, vocab_size=10, mask_id=3,
                    special_ids=(12,))
  with pytest.raises(ValueError, match="tokens"):
    losses.mlm_mask(jax.random.key(0), tokens[0], vocab_size=10, mask_id=3,
                    special_ids=())


def np_token_ce(logits, targets, weights, a=0.0):
  v = logits.shape[-1]
  labels = (1 - a) * np.eye(v)[targets] + a / v
  ce = -np.sum(labels * np_log_softmax(logits, -1), -1)
  return np.sum(weights * ce) / np.sum(weights)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_lm_and_mlm_loss_match_numpy(smoothing):
  rng = np.random.default_rng(9)
  logits = rng.normal(size=(3, 5, 11)) * 2
  targets = rng.integers(0, 11, size=(3, 5))
  w = (rng.random((3, 5)) < 0.6).astype(np.float64)
  want = np_token_ce(logits, targets, w, smoothing)
  got = losses.lm_loss(*f32(logits), targets, jnp.asarray(w),
                       label_smoothing=smoothing)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(
      losses.lm_loss(*f32(logits), targets, None, smoothing),
      np_token_ce(logits, targets, np.ones_like(w), smoothing), rtol=1e-5)
  if smoothing == 0.0:
    np.testing.assert_allclose(
        losses.mlm_loss(*f32(logits), targets, jnp.asarray(w)), want,
        rtol=1e-5)
  # bfloat16 logits: float32 result equal to the rounded logits' loss.
  lb = jnp.asarray(logits, jnp.bfloat16)
  got = losses.lm_loss(lb, targets, jnp.asarray(w), smoothing)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(
      got, np_token_ce(np.asarray(lb, np.float64), targets, w, smoothing),
      rtol=1e-5)


def test_vqa_soft_and_classification_loss_match_numpy():
  rng = np.random.default_rng(10)
  logits = rng.normal(size=(4, 6)) * 3
  t = np.minimum(1.0, rng.integers(0, 5, size=(4, 6)) / 3)
  bce = -(t * np.log(1 / (1 + np.exp(-logits))) +
          (1 - t) * np.log(1 / (1 + np.exp(logits))))
  np.testing.assert_allclose(losses.vqa_soft_loss(*f32(logits, t)),
                             bce.sum(1).mean(), rtol=1e-5)
  labels = rng.integers(0, 6, 4)
  np.testing.assert_allclose(
      losses.classification_loss(*f32(logits), labels),
      -np_log_softmax(logits, 1)[np.arange(4), labels].mean(), rtol=1e-5)
  # Weighted: examples with weight 0 (padding) do not count.
  w = np.array([1.0, 0.0, 2.0, 1.0])
  ce = -np_log_softmax(logits, 1)[np.arange(4), labels]
  np.testing.assert_allclose(
      losses.classification_loss(*f32(logits), labels, weights=w),
      (ce * w).sum() / w.sum(), rtol=1e-5)
  # A hand case: logits 0 and target 1/3 on one answer -> 1 * log 2 per answer.
  np.testing.assert_allclose(
      losses.vqa_soft_loss(jnp.zeros((1, 3)), jnp.array([[1 / 3, 0, 1]])),
      3 * math.log(2), rtol=1e-6)


@pytest.mark.parametrize("call, name", [
    (lambda: losses.softmax_contrastive_loss(jnp.ones((4, 3)),
                                             jnp.ones((5, 3)), 1.0),
     "txt_emb"),
    (lambda: losses.softmax_contrastive_loss(jnp.ones((4,)), jnp.ones((4,)),
                                             1.0), "img_emb"),
    (lambda: losses.softmax_contrastive_loss(jnp.ones((4, 3)),
                                             jnp.ones((4, 3)), jnp.ones(2)),
     "logit_scale"),
    (lambda: losses.sigmoid_contrastive_loss(jnp.ones((4, 3)),
                                             jnp.ones((4, 3)), 1.0,
                                             jnp.ones((2, 2))), "logit_bias"),
    (lambda: losses.itm_hard_negatives(jax.random.key(0), jnp.ones((3, 4))),
     "sim"),
    (lambda: losses.itm_hard_negatives(jax.random.key(0), jnp.ones((3, 3)),
                                       jnp.ones((3, 2), bool)),
     "positive_mask"),
    (lambda: losses.itm_loss(jnp.ones((3, 3)), jnp.zeros(3, jnp.int32)),
     "itm_logits"),
    (lambda: losses.lm_loss(jnp.ones((2, 3, 5)), jnp.zeros((2, 4), jnp.int32),
                            None), "targets"),
    (lambda: losses.mlm_loss(jnp.ones((2, 3, 5)), jnp.zeros((2, 3), jnp.int32),
                             jnp.ones((3, 2))), "weights"),
    (lambda: losses.vqa_soft_loss(jnp.ones((2, 5)), jnp.ones((2, 4))),
     "soft_targets"),
    (lambda: losses.classification_loss(jnp.ones((2, 5)),
                                        jnp.zeros(3, jnp.int32)), "labels"),
    (lambda: losses.classification_loss(jnp.ones((2, 5)),
                                        jnp.zeros(2, jnp.int32),
                                        weights=jnp.ones(3)), "weights"),
])
def test_bad_shapes_raise_value_error_naming_the_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()
