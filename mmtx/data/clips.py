"""Audio and video files -> the fixed-size clip arrays of AV records
('video' uint8 [T, S, S, 3], 'audio' float32 [N]), for `ingest`.

  spec = ClipSpec(frames=8, frame_stride=2, size=64, sample_rate=16000,
                  audio_seconds=1.0)
  video, audio = decode_clip(spec, video="a.mp4")            # audio track
  video, audio = decode_clip(spec, video="a.mp4", audio="a.flac")

Video (MP4 and whatever else FFmpeg reads, through PyAV): every frame is
decoded; the clip is `frames` frames every `frame_stride`, the centred one
(`video.sample_frames` without an rng, its evaluation convention; a video
shorter than the clip repeats its last frame); each frame's centre square
(side = its shorter side) is resized bilinearly to size x size.
Audio (WAV / FLAC / OGG through soundfile, anything else - e.g. an MP4's
audio track - through PyAV): channels averaged to mono, resampled to
`sample_rate` by `resample`, only the `audio_seconds` window centred on the
video clip's time span (from its first frame's start to its last frame's
end), zero where it runs past the recording.
A file that does not decode raises `ClipError(reason, detail)`.
"""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np

from mmtx.data import images
from mmtx.data import video as video_lib

# `resample`'s kernel: a Kaiser-windowed sinc with this many zero crossings
# each side (at the lower of the two rates) and this window shape.
RESAMPLE_ZEROS = 16
RESAMPLE_BETA = 8.6


class ClipError(ValueError):
  """A clip file that cannot be used: `reason` (counted by ingest), detail."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """The shape of the records' clips (see the module docstring)."""
  frames: int = 8
  frame_stride: int = 2
  size: int = 224
  sample_rate: int = 16000
  audio_seconds: float = 1.0

  def __post_init__(self):
    for k in ("frames", "frame_stride", "size", "sample_rate"):
      v = getattr(self, k)
      if not (isinstance(v, int) and v > 0):
        raise ValueError(f"clip {k} must be a positive int, got {v!r}.")
    if not self.audio_seconds > 0:
      raise ValueError(f"clip audio_seconds must be > 0, got "
                       f"{self.audio_seconds!r}.")

  @property
  def audio_samples(self) -> int:
    return int(round(self.audio_seconds * self.sample_rate))


def _file(src):
  """A path, or bytes wrapped as a file object."""
  return io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src


def _name(src) -> str:
  return "<bytes>" if isinstance(src, (bytes, bytearray)) else str(src)


def resample(wave: np.ndarray, orig_rate: int, target_rate: int, *,
             start: int = 0, num: int | None = None) -> np.ndarray:
  """float [N] at `orig_rate` -> float32 samples y[start:start + num] at
  `target_rate` (default: all ceil(N * target / orig) of them) by
  band-limited interpolation: y[m] = sum_k x[k] c h(c (m orig / target -
  k)), c = min(1, target / orig) the low-pass cutoff (relative to the input's
  Nyquist rate), h a sinc under a Kaiser window (beta RESAMPLE_BETA) of
  RESAMPLE_ZEROS zero crossings each side; x is zero outside [0, N). The
  kernel is tabulated once per phase (target / gcd of the rates phases)."""
  wave = np.asarray(wave, np.float64)
  if num is None:
    num = math.ceil(len(wave) * target_rate / orig_rate) - start
  g = math.gcd(int(orig_rate), int(target_rate))
  p, q = orig_rate // g, target_rate // g         # m -> input m * p / q
  cutoff = min(1.0, target_rate / orig_rate)
  half = RESAMPLE_ZEROS / cutoff                  # in input samples
  offsets = np.arange(-math.ceil(half), math.ceil(half) + 1)
  t = np.arange(q)[:, None] / q - offsets[None]   # [phase, tap] distances
  window = np.i0(RESAMPLE_BETA * np.sqrt(np.clip(1 - (t / half) ** 2, 0, 1)))
  table = np.where(np.abs(t) <= half, cutoff * np.sinc(cutoff * t) * window
                   / np.i0(RESAMPLE_BETA), 0.0)
  pad = len(offsets)
  padded = np.concatenate([np.zeros(pad), wave, np.zeros(pad)])
  out = np.zeros(num, np.float64)
  for lo in range(0, num, 8192):                  # bounded memory per block
    m = np.arange(start + lo, start + min(lo + 8192, num), dtype=np.int64)
    base, phase = np.divmod(m * p, q)
    k = np.clip(base[:, None] + offsets[None] + pad, 0, len(padded) - 1)
    # Taps outside the padded input (a window far past either end) are 0.
    inside = (base[:, None] + offsets[None] >= -pad) & (
        base[:, None] + offsets[None] < len(wave) + pad)
    out[m - start] = (padded[k] * table[phase] * inside).sum(1)
  return out.astype(np.float32)


def _audio_soundfile(src):
  import soundfile  # pylint: disable=g-import-not-at-top
  data, rate = soundfile.read(_file(src), dtype="float64", always_2d=True)
  return data.mean(1), int(rate)


def _audio_av(src):
  import av  # pylint: disable=g-import-not-at-top
  with av.open(_file(src)) as container:
    if not container.streams.audio:
      raise ClipError("no audio track", _name(src))
    stream = container.streams.audio[0]
    # Planar float, the file's own rate and channels (no FFmpeg mixing).
    to_float = av.AudioResampler(format="fltp")
    parts, rate = [], stream.codec_context.sample_rate
    for frame in container.decode(stream):
      for f in to_float.resample(frame):
        parts.append(f.to_ndarray().astype(np.float64).mean(0))
    for f in to_float.resample(None):
      parts.append(f.to_ndarray().astype(np.float64).mean(0))
  if not parts:
    raise ClipError("no audio track", f"{_name(src)}: no audio samples")
  return np.concatenate(parts), int(rate)


def decode_audio(src):
  """A file (path or bytes) -> (mono float64 [samples], its sample rate);
  ClipError if it does not decode."""
  try:
    wave, rate = _audio_soundfile(src)
  except FileNotFoundError:
    raise ClipError("missing file", _name(src)) from None
  except ClipError:
    raise
  except Exception:  # noqa: BLE001 - not a format libsndfile reads
    try:
      wave, rate = _audio_av(src)
    except ClipError:
      raise
    except FileNotFoundError:
      raise ClipError("missing file", _name(src)) from None
    except Exception as e:  # noqa: BLE001 - FFmpeg's many error types
      raise ClipError("unreadable audio",
                      f"{_name(src)}: {type(e).__name__}: {str(e)[:80]}"
                      ) from None
  if wave.size == 0 or not np.isfinite(wave).all():
    raise ClipError("unreadable audio", f"{_name(src)}: "
                    + ("no samples" if wave.size == 0 else "non-finite"))
  return wave, rate


def decode_video(src, spec: ClipSpec, *, with_audio: bool = True):
  """A file (path or bytes) -> (uint8 [frames, size, size, 3], (start, end)
  seconds of the clip's span, `decode_audio` of its audio track, or None
  when it has none or not `with_audio`)."""
  import av  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  frames, times = [], []
  try:
    with av.open(_file(src)) as container:
      if not container.streams.video:
        raise ClipError("no video track", _name(src))
      stream = container.streams.video[0]
      rate = float(stream.average_rate or stream.guessed_rate or 0) or None
      for frame in container.decode(stream):
        image = frame.to_image()
        box = images.center_box(image.width, image.height)
        image = image.resize((spec.size, spec.size),
                             Image.Resampling.BILINEAR, box=box)
        frames.append(np.asarray(image.convert("RGB"), np.uint8))
        times.append(frame.time if frame.time is not None
                     else len(times) / (rate or 1.0))
      has_audio = bool(container.streams.audio)
  except ClipError:
    raise
  except FileNotFoundError:
    raise ClipError("missing file", _name(src)) from None
  except Exception as e:  # noqa: BLE001 - FFmpeg's many error types
    raise ClipError("unreadable video", f"{_name(src)}: {type(e).__name__}: "
                    f"{str(e)[:80]}") from None
  if not frames:
    raise ClipError("unreadable video", f"{_name(src)}: no frames")
  idx = video_lib.sample_frames(len(frames), spec.frames, spec.frame_stride)
  step = 1.0 / rate if rate else (times[1] - times[0] if len(times) > 1
                                  else 0.0)
  span = (float(times[idx[0]]), float(times[idx[-1]]) + step)
  audio = decode_audio(src) if has_audio and with_audio else None
  return np.stack([frames[i] for i in idx]), span, audio


def decode_clip(spec: ClipSpec, *, video, audio=None):
  """(uint8 [frames, size, size, 3], float32 [spec.audio_samples]) from a
  video file and, optionally, a separate audio file (else the video's own
  audio track); ClipError naming what is wrong."""
  frames, span, track = decode_video(video, spec, with_audio=audio is None)
  if audio is not None:
    track = decode_audio(audio)
  if track is None:
    raise ClipError("no audio track", f"{_name(video)} has none and no "
                    "audio file is named")
  wave, rate = track
  n = spec.audio_samples
  start = int(round((span[0] + span[1]) / 2 * spec.sample_rate - n / 2))
  return frames, resample(wave, rate, spec.sample_rate, start=start, num=n)
