"""The audio front end against librosa (float64) and the SpecAugment /
spectrogram-patch / AST pieces against hand-computed references."""
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import optax
import pytest

from mmtx.layers import audio
from mmtx.models.audio import AudioTransformer


def _signals(sr, n, batch=3, seed=0):
  """Noise, a chirp and a two-tone mix: energy across the whole band."""
  rng = np.random.default_rng(seed)
  t = np.arange(n) / sr
  out = [0.3 * rng.standard_normal(n),
         0.5 * np.sin(2 * np.pi * (100 + (sr / 4) * t / t[-1]) * t),
         0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)]
  return np.stack(out[:batch]).astype(np.float64)


@pytest.mark.parametrize("sr,n_fft,hop,n_mels,fmin,fmax,n", [
    (16000, 400, 160, 64, 0.0, None, 16000),       # 1 s, speech-style
    (16000, 512, 128, 80, 20.0, 7600.0, 12345),    # odd length, band-limited
    (22050, 2048, 512, 128, 0.0, None, 22050),     # librosa's defaults
])
def test_log_mel_equals_librosa_float64(sr, n_fft, hop, n_mels, fmin, fmax, n):
  y = _signals(sr, n)
  eps = 1e-6
  ref = np.stack([np.log(librosa.feature.melspectrogram(
      y=row, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin,
      fmax=fmax) + eps).T for row in y])
  got = jax.jit(lambda w: audio.log_mel_spectrogram(
      w, sample_rate=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels,
      fmin=fmin, fmax=fmax, eps=eps))(jnp.asarray(y, jnp.float32))
  assert got.shape == ref.shape == (3, 1 + n // hop, n_mels)
  # float32 against float64: the log of a mel power > 1e-3 to 5e-5
  # absolute (seen: 6e-6), every cell to 2e-3 (seen: 1e-4, in cells whose
  # power is near eps). A symmetric Hann window is off by 0.2.
  got = np.asarray(got, np.float64)
  loud = ref > np.log(1e-3)
  assert loud.mean() > 0.3
  np.testing.assert_allclose(got[loud], ref[loud], atol=5e-5, rtol=0)
  np.testing.assert_allclose(got, ref, atol=2e-3, rtol=0)


def test_mel_filterbank_equals_librosa():
  for kw in (dict(sr=16000, n_fft=400, n_mels=40),
             dict(sr=44100, n_fft=1024, n_mels=128, fmin=30.0, fmax=16000.0)):
    ref = librosa.filters.mel(dtype=np.float64, **kw).T
    sr = kw.pop("sr")
    got = audio.mel_filterbank(sample_rate=sr, **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_log_mel_rejects_bad_input_where_it_enters():
  w = jnp.zeros((2, 1000))
  kw = dict(sample_rate=16000, n_fft=400, hop_length=160, n_mels=40)
  with pytest.raises(ValueError, match=r"float \[batch, samples\]"):
    audio.log_mel_spectrogram(jnp.zeros(1000), **kw)
  with pytest.raises(ValueError, match="hop_length must be a positive int"):
    audio.log_mel_spectrogram(w, **{**kw, "hop_length": 0})
  with pytest.raises(ValueError, match="fmax <= sample_rate / 2 = 8000"):
    audio.log_mel_spectrogram(w, fmax=9000.0, **kw)


def test_spec_augment_masks_one_band_of_the_stated_law():
  """One time band and one mel band per example: each is a contiguous run
  of at most max_width cells set to `value`, the rest untouched, and the
  mean masked share over many examples is E[width] / length = (W / 2) / T."""
  b, t, f, wt, wf = 4096, 50, 40, 10, 8
  spec = jnp.asarray(np.random.default_rng(1).standard_normal((b, t, f)) + 5,
                     jnp.float32)
  out = np.asarray(audio.spec_augment(jax.random.key(3), spec, time_masks=1,
                                      max_time_width=wt, freq_masks=1,
                                      max_freq_width=wf, value=-7.0))
  masked = out == -7.0
  np.testing.assert_array_equal(out[~masked], np.asarray(spec)[~masked])
  rows_t = masked.all(axis=2)           # frames masked across all mels
  rows_f = masked.all(axis=1)           # mels masked across all frames
  # A cell is masked iff its frame or its mel channel is.
  np.testing.assert_array_equal(masked, rows_t[:, :, None] | rows_f[:, None])
  for rows, width in ((rows_t, wt), (rows_f, wf)):
    n = rows.sum(axis=1)
    assert n.max() <= width
    first = rows.argmax(axis=1)
    for i in range(0, b, 97):           # contiguous: one run from `first`
      assert rows[i, first[i]:first[i] + n[i]].all() or n[i] == 0
    assert abs(n.mean() - width / 2) < 0.15, n.mean()
  # Deterministic given the key; another key masks elsewhere.
  again = audio.spec_augment(jax.random.key(3), spec, time_masks=1,
                             max_time_width=wt, freq_masks=1,
                             max_freq_width=wf, value=-7.0)
  np.testing.assert_array_equal(np.asarray(again), out)
  other = audio.spec_augment(jax.random.key(4), spec, time_masks=1,
                             max_time_width=wt, freq_masks=1,
                             max_freq_width=wf, value=-7.0)
  assert (np.asarray(other) != out).any()


def test_spectrogram_patches_overlap_as_ast():
  """16x16 patches every 10 (AST): the grid and each token equal a float64
  patch extraction times the kernel, plus the bias."""
  spec = np.random.default_rng(2).standard_normal((2, 100, 64))
  m = audio.SpectrogramPatchEmbedding(8, (16, 16), (10, 10))
  params = m.init(jax.random.key(0), jnp.asarray(spec, jnp.float32))
  (tokens, grid) = m.apply(params, jnp.asarray(spec, jnp.float32))
  assert grid == ((100 - 16) // 10 + 1, (64 - 16) // 10 + 1) == (9, 5)
  k = np.asarray(params["params"]["conv"]["kernel"].unbox()
                 if hasattr(params["params"]["conv"]["kernel"], "unbox")
                 else params["params"]["conv"]["kernel"], np.float64)[:, :, 0]
  bias = np.asarray(jax.tree.leaves(params["params"]["conv"]["bias"])[0])
  ref = np.stack([np.stack([
      np.einsum("btf,tfd->bd", spec[:, 10 * i:10 * i + 16, 10 * j:10 * j + 16],
                k) + bias for j in range(5)], 1) for i in range(9)], 1)
  np.testing.assert_allclose(np.asarray(tokens), ref.reshape(2, 45, 8),
                             atol=1e-4)


def test_ast_learns_which_tone_sounds():
  """End to end: waveforms -> log-mel -> AST -> a linear head learns to tell
  a 300 Hz tone from a 2 kHz one in noise (chance 50 %)."""
  sr, n = 8000, 4000
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 256)
  t = np.arange(n) / sr
  freq = np.where(labels == 1, 2000.0, 300.0)[:, None]
  waves = (0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6, (256, 1)))
           + 0.3 * rng.standard_normal((256, n))).astype(np.float32)
  spec = audio.log_mel_spectrogram(jnp.asarray(waves), sample_rate=sr,
                                   n_fft=256, hop_length=128, n_mels=32)
  model = AudioTransformer(width=32, depth=1, mlp_dim=64, num_heads=2,
                           patch_size=(8, 8), strides=(8, 8))
  params = model.init(jax.random.key(0), spec[:2])
  head = jnp.zeros((32, 2))
  opt = optax.adam(3e-3)
  state = opt.init((params, head))

  def loss_fn(p, x, y):
    feat, extras = model.apply(p[0], x)
    assert extras["grid"] == (4, 4)
    logits = feat @ p[1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

  @jax.jit
  def step(p, s, x, y):
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  p = (params, head)
  for i in range(60):
    sl = slice((i % 6) * 32, (i % 6) * 32 + 32)
    p, state, _ = step(p, state, spec[sl], labels[sl])
  _, logits = loss_fn(p, spec[192:], labels[192:])
  acc = float((np.asarray(logits).argmax(-1) == labels[192:]).mean())
  assert acc >= 0.9, acc
