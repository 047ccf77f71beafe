"""mmtx.generation against hand-made "models", brute-force enumeration in
float64, and the Captioner's own teacher-forced / uncached logits."""
import itertools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtx import generation as gen
from mmtx.models import captioner as cap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAD, EOS = 0, 1


def np_log_softmax_nopad(logits):
  """float64 log-probs over every token but PAD (PAD -> -inf)."""
  z = np.asarray(logits, np.float64).copy()
  z[..., PAD] = -np.inf
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def check_eos_padding(out, max_new, eos_id=EOS):
  """Positions after a row's length are PAD; a row shorter than max_new ends
  in EOS and has no earlier EOS."""
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  for row, n in zip(tokens, lengths):
    assert 1 <= n <= max_new
    assert (row[n:] == PAD).all()
    assert (row[:n] != PAD).all()
    assert not (row[:n - 1] == eos_id).any()
    if n < max_new:
      assert row[n - 1] == eos_id


# ----------------------------------------------------------------------------
# Hand-made step_fns
# ----------------------------------------------------------------------------
def bigram_step_fn(table):
  """logits of the next token = table[last token]; no state."""
  table = jnp.asarray(table, jnp.float32)

  def step_fn(tokens, cache, positions):
    return table[tokens], cache
  return step_fn


def history_step_fn(table, vocab):
  """logits = table[state], state = the prefix as base-`vocab` digits: a
  "model" that depends on the whole history; the state is the cache."""
  table = jnp.asarray(table, jnp.float32)

  def step_fn(tokens, cache, positions):
    state, rows = cache["state"], []
    for j in range(tokens.shape[1]):
      state = state * vocab + tokens[:, j]
      rows.append(table[state])
    return jnp.stack(rows, 1), {"state": state}
  return step_fn


def test_greedy_hand_case():
  # Next token after: 2 -> 3, 3 -> 4, 4 -> EOS, EOS -> 2; PAD always has the
  # largest logit and must never be picked.
  table = np.full((5, 5), -1.0, np.float32)
  table[:, PAD] = 9.0
  table[2, 3] = table[3, 4] = table[4, EOS] = table[EOS, 2] = 2.0
  step_fn = bigram_step_fn(table)
  prompt = jnp.array([[2], [4], [EOS]], jnp.int32)
  run = jax.jit(lambda c, p: gen.greedy(step_fn, c, p, max_new_tokens=5,
                                        eos_id=EOS))
  out = run({"x": jnp.zeros(3)}, prompt)
  np.testing.assert_array_equal(out.tokens, [[3, 4, EOS, 0, 0],
                                             [EOS, 0, 0, 0, 0],
                                             [2, 3, 4, EOS, 0]])
  np.testing.assert_array_equal(out.lengths, [3, 1, 4])
  lp = np_log_softmax_nopad(table)[2, 3]   # every chosen step: 2.0 vs -1.0
  np.testing.assert_allclose(out.scores, [3 * lp, lp, 4 * lp], rtol=1e-6)
  check_eos_padding(out, 5)
  # Without EOS every row runs to max_new_tokens.
  out = jax.jit(lambda c, p: gen.greedy(step_fn, c, p, max_new_tokens=4,
                                        eos_id=None))({"x": jnp.zeros(3)},
                                                      prompt)
  np.testing.assert_array_equal(out.tokens[0], [3, 4, EOS, 2])
  np.testing.assert_array_equal(out.lengths, [4, 4, 4])


def brute_force(table, vocab, prompt_tok, max_new, alpha):
  """Every hypothesis (EOS-terminated, or max_new long) with its GNMT score,
  best first, in float64."""
  logp = np_log_softmax_nopad(table)
  hyps = []
  for n in range(1, max_new + 1):
    for seq in itertools.product(range(1, vocab), repeat=n):
      if EOS in seq[:-1] or (n < max_new and seq[-1] != EOS):
        continue
      state, total = prompt_tok, 0.0
      for tok in seq:
        total += logp[state, tok]
        state = state * vocab + tok
      hyps.append((total / ((5.0 + n) / 6.0) ** alpha, seq))
  return sorted(hyps, key=lambda h: -h[0])


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_exhaustive_equals_brute_force(alpha):
  vocab, max_new = 4, 3
  beam = vocab ** max_new
  rs = np.random.RandomState(int(alpha * 10))
  table = 2.0 * rs.randn(vocab ** (max_new + 1), vocab).astype(np.float32)
  prompts = [2, 3]
  step_fn = history_step_fn(table, vocab)
  cache = {"state": jnp.zeros(len(prompts) * beam, jnp.int32)}
  out = jax.jit(lambda c, p: gen.beam_search(
      step_fn, c, p, beam_size=beam, max_new_tokens=max_new, eos_id=EOS,
      alpha=alpha))(cache, jnp.array(prompts, jnp.int32)[:, None])
  for i, p in enumerate(prompts):
    want = brute_force(table, vocab, p, max_new, alpha)
    # Beam >= the number of hypotheses: all are found, in score order.
    valid = np.isfinite(np.asarray(out.beam_scores[i]))
    assert valid.sum() == len(want)
    np.testing.assert_allclose(out.beam_scores[i][valid], [h[0] for h in want],
                               rtol=1e-5)
    for j, (_, seq) in enumerate(want):
      row = np.asarray(out.beams[i, j])
      np.testing.assert_array_equal(row[:len(seq)], seq)
      assert (row[len(seq):] == PAD).all()
      assert out.beam_lengths[i, j] == len(seq)
    np.testing.assert_array_equal(out.tokens[i], out.beams[i, 0])
    assert out.lengths[i] == len(want[0][1])
  check_eos_padding(out, max_new)


def test_beam_small_width_beats_greedy():
  # Greedy takes 2 (p=0.5), then EOS: P = 0.5 * 0.34. Beam keeps 3 (0.45),
  # whose EOS has P = 0.45 * 0.98.
  vocab = 4
  table = np.full((vocab ** 3, vocab), -30.0, np.float32)
  table[2, [EOS, 2, 3]] = np.log([0.05, 0.5, 0.45])
  table[2 * vocab + 2, [EOS, 2, 3]] = np.log([0.34, 0.33, 0.33])
  table[2 * vocab + 3, [EOS, 2, 3]] = np.log([0.98, 0.01, 0.01])
  step_fn = history_step_fn(table, vocab)
  prompt = jnp.array([[2]], jnp.int32)
  g = gen.greedy(step_fn, {"state": jnp.zeros(1, jnp.int32)}, prompt,
                 max_new_tokens=3, eos_id=EOS)
  b = gen.beam_search(step_fn, {"state": jnp.zeros(2, jnp.int32)}, prompt,
                      beam_size=2, max_new_tokens=3, eos_id=EOS, alpha=0.0)
  np.testing.assert_array_equal(g.tokens, [[2, EOS, PAD]])
  np.testing.assert_allclose(g.scores, [np.log(0.5 * 0.34)], rtol=1e-5)
  np.testing.assert_array_equal(b.tokens, [[3, EOS, PAD]])
  np.testing.assert_array_equal(b.lengths, [2])
  np.testing.assert_allclose(b.scores, [np.log(0.45 * 0.98)], rtol=1e-5)


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------
def np_allowed(logits, temperature, top_k, top_p):
  """float64 reference of the token sets top-k / nucleus may sample."""
  z = np.asarray(logits, np.float64).copy()
  z[PAD] = -np.inf
  z = z / temperature
  order = np.argsort(-z, kind="stable")
  allowed = set(order[:top_k].tolist()) if top_k else set(range(len(z)))
  allowed.discard(PAD)
  if top_p < 1.0:
    kept = z.copy()
    kept[[t for t in range(len(z)) if t not in allowed]] = -np.inf
    probs = np.exp(kept - kept.max())
    probs /= probs.sum()
    nucleus, mass = set(), 0.0
    for t in np.argsort(-probs, kind="stable"):
      nucleus.add(int(t))
      mass += probs[t]
      if mass >= top_p:
        break
    allowed &= nucleus
  probs = np.exp(z - z[list(allowed)].max())
  probs = {t: probs[t] for t in allowed}
  total = sum(probs.values())
  return {t: p / total for t, p in probs.items()}


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 3, 1.0), (0.7, 0, 0.8), (1.5, 4, 0.9)])
def test_sampling_stays_in_top_k_and_nucleus(temperature, top_k, top_p):
  vocab, n_rows, steps = 8, 4000, 3
  probs = np.array([0.0, 0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02])
  logits = np.log(np.maximum(probs, 1e-9)) + 0.5
  logits[PAD] = 5.0                              # must never be sampled
  table = np.stack([np.roll(logits[1:], s) for s in range(steps)])
  table = np.concatenate([np.full((steps, 1), 5.0), table], 1)

  def step_fn(tokens, cache, positions):
    return jnp.asarray(table, jnp.float32)[positions][None].repeat(
        tokens.shape[0], 0), cache

  out = jax.jit(lambda c, p, r: gen.sample(
      step_fn, c, p, r, max_new_tokens=steps, eos_id=None,
      temperature=temperature, top_k=top_k, top_p=top_p))(
          {}, jnp.full((n_rows, 1), 2, jnp.int32), jax.random.key(0))
  tokens = np.asarray(out.tokens)
  for s in range(steps):
    want = np_allowed(table[s], temperature, top_k, top_p)
    got = np.bincount(tokens[:, s], minlength=vocab) / n_rows
    assert set(np.flatnonzero(got)) <= set(want), (s, got, want)
    for t, p in want.items():   # frequencies within ~4.5 sigma
      assert abs(got[t] - p) < 4.5 * np.sqrt(p * (1 - p) / n_rows) + 1e-3


def test_sampling_eos_and_filter_checks():
  table = np.zeros((6, 6), np.float32)
  table[:, EOS] = 1.0
  out = gen.sample(bigram_step_fn(table), {}, jnp.full((64, 1), 2, jnp.int32),
                   jax.random.key(3), max_new_tokens=6, eos_id=EOS)
  check_eos_padding(out, 6)
  assert (np.asarray(out.lengths) < 6).any()
  with pytest.raises(ValueError, match="top_p"):
    gen.filter_logits(jnp.zeros((2, 5)), top_p=0.0)
  with pytest.raises(ValueError, match="top_k"):
    gen.filter_logits(jnp.zeros((2, 5)), top_k=6)
  with pytest.raises(ValueError, match="temperature"):
    gen.filter_logits(jnp.zeros((2, 5)), temperature=0.0)


def test_argument_errors():
  step_fn = bigram_step_fn(np.zeros((4, 4)))
  with pytest.raises(ValueError, match="prompt"):
    gen.greedy(step_fn, {}, jnp.zeros((3,), jnp.int32), max_new_tokens=2,
               eos_id=EOS)
  with pytest.raises(ValueError, match="eos_id"):
    gen.greedy(step_fn, {}, jnp.ones((1, 1), jnp.int32), max_new_tokens=2,
               eos_id=PAD)
  with pytest.raises(ValueError, match="cache"):
    gen.beam_search(step_fn, {"kv": jnp.zeros((2, 3))},
                    jnp.ones((2, 1), jnp.int32), beam_size=3,
                    max_new_tokens=2, eos_id=EOS)
  bad = lambda t, c, p: (jnp.zeros(t.shape), c)  # noqa: E731
  with pytest.raises(ValueError, match="step_fn"):
    gen.greedy(bad, {}, jnp.ones((1, 2), jnp.int32), max_new_tokens=2,
               eos_id=EOS)


# ----------------------------------------------------------------------------
# The Captioner: KV cache == teacher forcing == recomputing the prefix
# ----------------------------------------------------------------------------
VOCAB = 13
SCALE = 1.0
CFG = dict(image=dict(patch_size=4, width=16, depth=1, mlp_dim=32,
                      num_heads=2),
           text=dict(vocab_size=VOCAB, width=16, depth=1, mlp_dim=32,
                     num_heads=2, max_len=12),
           decoder_depth=2, embed_dim=8, num_queries=3, tie_embeddings=False)


@pytest.fixture(scope="module")
def model():
  """Random params (weights ~ N(0, SCALE^2), larger than the init so logits
  are far from uniform; biases ~ 0, LN scales ~ 1) and their teacher-forced
  outputs. Shapes come from tracing `init`: compiling the initialisers' RNG
  would cost more than all the other tests."""
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  texts = jnp.array([[2, 5, 6, 7, EOS, 0], [2, 3, 4, EOS, 0, 0]], jnp.int32)
  m = cap.Captioner(CFG)
  shapes = nn.meta.unbox(jax.eval_shape(m.init, jax.random.key(0), images,
                                        texts))["params"]
  rs = np.random.RandomState(0)

  def draw(path, s):
    name = jax.tree_util.keystr(path[-1:])
    base = {"['bias']": 0.0, "['scale']": 1.0}.get(name)  # biases, LN
    if base is None:
      return jnp.asarray(SCALE * rs.randn(*s.shape), s.dtype)
    return jnp.asarray(base + 0.1 * rs.randn(*s.shape), s.dtype)

  params = jax.tree_util.tree_map_with_path(draw, shapes)
  logits, extras = jax.jit(m.apply)({"params": params}, images, texts)
  return dict(params=params, images=images, texts=texts, logits=logits,
              extras=extras, context=extras["context"])


def test_captioner_outputs_and_coca_loss(model):
  from mmtx import losses
  logits, extras, texts = model["logits"], model["extras"], model["texts"]
  assert logits.shape == (2, 6, VOCAB) and logits.dtype == jnp.float32
  assert extras["context"].shape == (2, 3, 16)   # num_queries pooled tokens
  for name in ("img_emb", "txt_emb"):
    assert extras[name].shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(extras[name], axis=1), 1.0,
                               rtol=1e-5)
  loss = losses.softmax_contrastive_loss(
      extras["img_emb"], extras["txt_emb"], extras["logit_scale"]) + \
      losses.lm_loss(logits[:, :-1], texts[:, 1:], texts[:, 1:] != 0)
  assert np.isfinite(loss)


def test_teacher_forced_logits_equal_cached_steps(model):
  texts = model["texts"]
  step_fn, cache = cap.decode_fns(CFG, model["params"], model["context"],
                                  max_len=6)
  step_fn = jax.jit(step_fn)
  # A 2-token first chunk (prefill), then one token at a time.
  got, cache = step_fn(texts[:, :2], cache, jnp.arange(2))
  rows = [got]
  for t in range(2, 6):
    got, cache = step_fn(texts[:, t:t + 1], cache, jnp.array([t]))
    rows.append(got)
  got = np.asarray(jnp.concatenate(rows, 1))
  real = np.asarray(texts != 0)
  np.testing.assert_allclose(got[real], np.asarray(model["logits"])[real],
                             rtol=1e-4, atol=1e-4)


def test_left_padded_prompt_matches_unpadded(model):
  params, context = model["params"], model["context"]
  padded = jnp.array([[0, 0, 2, 5], [2, 3, 4, 6]], jnp.int32)
  step_fn, cache = cap.decode_fns(CFG, params, context, max_len=4)
  got, _ = jax.jit(step_fn)(padded, cache, jnp.arange(4))
  step_fn, cache = cap.decode_fns(CFG, params, context[:1], max_len=2)
  alone, _ = jax.jit(step_fn)(padded[:1, 2:], cache, jnp.arange(2))
  np.testing.assert_allclose(got[0, 2:], alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_cached_decoding_equals_uncached(model, method):
  params, images = model["params"], model["images"]
  prompt = jnp.array([[0, 2, 7], [2, 3, 4]], jnp.int32)  # left-padded row 0
  kw = dict(max_new_tokens=8, eos_id=EOS, method=method)
  if method == "beam":
    kw.update(beam_size=3, alpha=0.6)

  def run(cached):
    return jax.jit(lambda p, x, q: cap.generate(CFG, p, x, q, cached=cached,
                                                **kw))(params, images, prompt)

  fast, slow = run(True), run(False)
  np.testing.assert_array_equal(fast.tokens, slow.tokens)
  np.testing.assert_array_equal(fast.lengths, slow.lengths)
  np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-5, atol=1e-5)
  check_eos_padding(fast, 8)
  assert len(set(np.asarray(fast.tokens).ravel().tolist())) > 1  # not trivial
  if method == "beam":
    np.testing.assert_array_equal(fast.beams, slow.beams)
    np.testing.assert_allclose(fast.beam_scores, slow.beam_scores, rtol=1e-5,
                               atol=1e-5)


def test_captioner_input_errors(model):
  params, images, texts, context = (model[k] for k in (
      "params", "images", "texts", "context"))
  m = cap.Captioner(CFG)
  with pytest.raises(ValueError, match="texts"):
    m.apply({"params": params}, images, texts.astype(jnp.float32))
  with pytest.raises(ValueError, match="images"):
    m.apply({"params": params}, images[0], texts)
  with pytest.raises(ValueError, match="max_len"):
    m.apply({"params": params}, images, jnp.ones((2, 13), jnp.int32))
  with pytest.raises(ValueError, match="context"):
    m.apply({"params": params}, texts, context[:1],
            method=cap.Captioner.text_logits)
  with pytest.raises(ValueError, match="config.text.vocab_size"):
    cap.parse_config(dict(CFG, text={"width": 8}))
  with pytest.raises(ValueError, match="unknown"):
    cap.parse_config(dict(CFG, depth=3))
  with pytest.raises(ValueError, match="config.image.pool"):
    cap.parse_config(dict(CFG, image=dict(CFG["image"], pool="gap")))
  with pytest.raises(ValueError, match="max_len"):
    cap.decode_fns(CFG, params, context, max_len=13)


def test_benchmark_quick_runs():
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "benchmarks",
                                    "caption_decode.py"), "--quick"],
      capture_output=True, text=True, timeout=240, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tokens/s" in proc.stdout
