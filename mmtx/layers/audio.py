"""Audio front end: log-mel spectrograms with librosa's conventions,
SpecAugment masking (Park et al. 2019), and AST-style spectrogram patches
(Gong et al. 2021).

`log_mel_spectrogram` follows `librosa.feature.melspectrogram`'s defaults:
frames centred on t * hop_length with n_fft // 2 zeros padded at both ends,
a periodic Hann window of n_fft samples, power 2, and a Slaney mel
filterbank (linear below 1 kHz, logarithmic above, each triangle scaled to
unit area); the result is log(mel power + eps).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Slaney's mel scale: linear (200/3 Hz per mel) below 1 kHz, then
# logarithmic with 27 mels per factor 6.4.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz) -> np.ndarray:
  """Frequencies in Hz -> Slaney mels (float64)."""
  hz = np.asarray(hz, np.float64)
  log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) /
                                   _MIN_LOG_HZ) / _LOG_STEP
  return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def mel_to_hz(mel) -> np.ndarray:
  """Slaney mels -> Hz (float64); the inverse of `hz_to_mel`."""
  mel = np.asarray(mel, np.float64)
  log_part = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL))
  return np.where(mel >= _MIN_LOG_MEL, log_part, mel * _F_SP)


@functools.lru_cache(maxsize=32)
def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int,
                   fmin: float = 0.0,
                   fmax: Optional[float] = None) -> np.ndarray:
  """`[n_fft // 2 + 1, n_mels]` float64: triangular filters centred on
  n_mels + 2 points equally spaced in Slaney mels from fmin to fmax (default
  sample_rate / 2), each divided by its width in Hz / 2 (unit area)."""
  fmax = sample_rate / 2 if fmax is None else fmax
  fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  rising = (fft_hz[None] - lo) / (mid - lo)
  falling = (hi - fft_hz[None]) / (hi - mid)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights *= 2.0 / (hi - lo)
  return weights.T


def _check_audio_args(waveforms, sample_rate, n_fft, hop_length, n_mels, fmin,
                      fmax):
  if waveforms.ndim != 2 or not jnp.issubdtype(waveforms.dtype, jnp.floating):
    raise ValueError(f"log_mel_spectrogram: waveforms must be float [batch, "
                     f"samples], got shape {waveforms.shape} dtype "
                     f"{waveforms.dtype}.")
  for name, v in (("sample_rate", sample_rate), ("n_fft", n_fft),
                  ("hop_length", hop_length), ("n_mels", n_mels)):
    if not (isinstance(v, (int, np.integer)) and v > 0):
      raise ValueError(f"log_mel_spectrogram: {name} must be a positive int, "
                       f"got {v!r}.")
  top = sample_rate / 2 if fmax is None else fmax
  if not 0 <= fmin < top <= sample_rate / 2:
    raise ValueError(f"log_mel_spectrogram: need 0 <= fmin < fmax <= "
                     f"sample_rate / 2 = {sample_rate / 2}, got fmin={fmin}, "
                     f"fmax={fmax}.")


def log_mel_spectrogram(waveforms: Array, *, sample_rate: int, n_fft: int,
                        hop_length: int, n_mels: int, fmin: float = 0.0,
                        fmax: Optional[float] = None,
                        eps: float = 1e-6) -> Array:
  """`[batch, samples]` -> `[batch, 1 + samples // hop_length, n_mels]`
  float32: log(mel power + eps), librosa's conventions (module docstring).
  jit-able: the parameters are static Python numbers."""
  _check_audio_args(waveforms, sample_rate, n_fft, hop_length, n_mels, fmin,
                    fmax)
  x = jnp.asarray(waveforms, jnp.float32)
  pad = n_fft // 2
  x = jnp.pad(x, ((0, 0), (pad, pad)))
  num_frames = 1 + (x.shape[1] - n_fft) // hop_length
  idx = (np.arange(num_frames)[:, None] * hop_length +
         np.arange(n_fft)[None, :])
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  frames = x[:, idx] * jnp.asarray(window, jnp.float32)
  spec = jnp.fft.rfft(frames, axis=-1)
  power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
  fb = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels,
                      fmin=float(fmin),
                      fmax=None if fmax is None else float(fmax))
  mel = jnp.einsum("btf,fm->btm", power, jnp.asarray(fb, jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.log(mel + eps)


def _band_masks(rng, batch, length, count, max_width):
  """[batch, length] bool: the union of `count` bands per row, each of a
  width drawn uniformly from 0..max_width at a uniform start."""
  if count == 0 or max_width == 0:
    return jnp.zeros((batch, length), bool)
  k_width, k_start = jax.random.split(rng)
  width = jax.random.randint(k_width, (batch, count), 0,
                             min(max_width, length) + 1)
  start = jnp.floor(jax.random.uniform(k_start, (batch, count)) *
                    (length - width + 1)).astype(jnp.int32)
  pos = jnp.arange(length)[None, None, :]
  inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
  return inside.any(axis=1)


def spec_augment(rng: Array, spec: Array, *, time_masks: int = 2,
                 max_time_width: int = 20, freq_masks: int = 2,
                 max_freq_width: int = 10, value: float = 0.0) -> Array:
  """SpecAugment's time and frequency masking on `[batch, frames, mels]`:
  per example, `time_masks` bands of 0..max_time_width frames and
  `freq_masks` bands of 0..max_freq_width mel channels are set to `value`
  (widths and starts uniform; bands may overlap)."""
  if spec.ndim != 3:
    raise ValueError(f"spec_augment: spec must be [batch, frames, mels], got "
                     f"shape {spec.shape}.")
  for name, v in (("time_masks", time_masks), ("freq_masks", freq_masks),
                  ("max_time_width", max_time_width),
                  ("max_freq_width", max_freq_width)):
    if not (isinstance(v, (int, np.integer)) and v >= 0):
      raise ValueError(f"spec_augment: {name} must be an int >= 0, got {v!r}.")
  b, t, f = spec.shape
  k_time, k_freq = jax.random.split(rng)
  masked = (_band_masks(k_time, b, t, time_masks, max_time_width)[:, :, None]
            | _band_masks(k_freq, b, f, freq_masks, max_freq_width)[:, None, :])
  return jnp.where(masked, jnp.asarray(value, spec.dtype), spec)


class SpectrogramPatchEmbedding(nn.Module):
  """`[batch, frames, mels]` -> `([batch, gt * gf, features], (gt, gf))`:
  a linear map of each patch_size (frames x mels) patch taken every
  `strides`; strides below the patch size overlap the patches, as AST's
  16x16 patches every 10 (Gong et al. 2021)."""
  features: int
  patch_size: tuple[int, int] = (16, 16)
  strides: Optional[tuple[int, int]] = None   # None: = patch_size
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, spec: Array):
    if spec.ndim != 3:
      raise ValueError(f"SpectrogramPatchEmbedding: spec must be [batch, "
                       f"frames, mels], got shape {spec.shape}.")
    pt, pf = self.patch_size
    st, sf = self.strides or self.patch_size
    if spec.shape[1] < pt or spec.shape[2] < pf:
      raise ValueError(f"SpectrogramPatchEmbedding: a {spec.shape[1]} x "
                       f"{spec.shape[2]} spectrogram is smaller than one "
                       f"{pt} x {pf} patch.")
    x = nn.Conv(self.features, (pt, pf), strides=(st, sf), padding="VALID",
                dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(),
                    (None, None, "channels", "embed")),
                bias_init=nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), ("embed",)),
                name="conv")(spec[..., None].astype(self.dtype))
    b, gt, gf, d = x.shape
    return x.reshape(b, gt * gf, d), (gt, gf)
