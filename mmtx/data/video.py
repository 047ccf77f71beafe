"""Frame sampling for video clips in the input pipeline."""
from __future__ import annotations

import numpy as np


def sample_frames(num_frames: int, clip_frames: int, stride: int, *,
                  rng: np.random.Generator | None = None) -> np.ndarray:
  """Indices of a clip of `clip_frames` frames every `stride` from a video
  of `num_frames`: a uniformly random start when `rng` is given (training),
  else the centred clip (evaluation). A video shorter than the clip repeats
  its last frame."""
  if min(num_frames, clip_frames, stride) < 1:
    raise ValueError(f"sample_frames: num_frames, clip_frames and stride must "
                     f"be >= 1, got {num_frames}, {clip_frames}, {stride}.")
  span = (clip_frames - 1) * stride + 1
  room = max(num_frames - span, 0)
  start = int(rng.integers(0, room + 1)) if rng is not None else room // 2
  return np.minimum(start + stride * np.arange(clip_frames), num_frames - 1)
