"""AV-Scenes: generated audio-visual clips whose questions need sight, sound
or both (built in seconds, no download).

A clip is FRAMES frames of SIZE x SIZE pixels and FRAMES * SAMPLES_PER_FRAME
audio samples at SAMPLE_RATE Hz. It shows NUM_OBJECTS objects of distinct
colours and random shapes; each rests, then from its own onset frame (all
onsets differ) moves STEP pixels per frame in its direction. One or two of
them sound: a sounding object's tone (PITCHES_HZ[low|high], the two differ
when both sound) starts with its movement and lasts TONE_FRAMES frames, over
a little noise. So "what colour is the object that makes the high sound?"
needs the tone's onset heard and the object that starts moving then seen.

Questions (qtype / qsubtype, answer ids index ANSWERS):
  sight: 'how many objects move <dir>?' (count), 'which way does the <colour>
    object move?' (direction)
  sound: 'how many sounds are there?' (count), 'is there a <pitch> sound?'
    (exists)
  both: 'what colour is the object that makes the <pitch> sound?' (colour),
    'which way is the object with the <pitch> sound moving?' (direction),
    'is the <pitch> sound made by a <shape>?' (shape)

Events (multi-label 'label', ids index EVENTS): one event per sounding
object, '<pitch> sound moving <direction>' (id = pitch * 4 + direction), so a
clip has one or two. Audio alone tells which pitches sound and video alone
which directions occur; naming the events binds each tone to the object
whose movement starts with it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from mmtx.data import tfds_base

FRAMES = 8
SIZE = 32
OBJECT_SIZE = 6
STEP = 2
NUM_OBJECTS = 3
SAMPLE_RATE = 8000
SAMPLES_PER_FRAME = 1000          # 8 frames = 1 s of audio
TONE_FRAMES = 3
PITCHES = ("low", "high")
PITCHES_HZ = (500.0, 2000.0)
TONE_AMPLITUDE = 0.5
NOISE_STD = 0.05

COLORS = ("red", "green", "blue", "yellow", "white")
RGB = np.array([[230, 40, 40], [40, 200, 40], [50, 80, 240], [230, 220, 40],
                [235, 235, 235]], np.uint8)
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
DELTAS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])   # (dx, dy) per frame
COUNTS = ("0", "1", "2", "3")
ANSWERS = COLORS + DIRECTIONS + COUNTS + ("yes", "no")
QTYPES = ("sight", "sound", "both")
QSUBTYPES = (("count", "direction"), ("count", "exists"),
             ("colour", "direction", "shape"))
EVENTS = tuple(f"{p} sound moving {d}" for p in PITCHES for d in DIRECTIONS)


def _answer(word: str) -> int:
  return ANSWERS.index(word)


def shape_mask(shape: int) -> np.ndarray:
  """bool [OBJECT_SIZE, OBJECT_SIZE]: the object's pixels."""
  s = OBJECT_SIZE
  yy, xx = np.mgrid[:s, :s] + 0.5
  if SHAPES[shape] == "circle":
    return (xx - s / 2) ** 2 + (yy - s / 2) ** 2 <= (s / 2) ** 2
  if SHAPES[shape] == "square":
    return np.ones((s, s), bool)
  return np.abs(xx - s / 2) <= yy / 2          # apex at the top


def positions(start: np.ndarray, direction: int, onset: int) -> np.ndarray:
  """int [FRAMES, 2] top-left (x, y) of an object per frame."""
  moved = np.maximum(np.arange(FRAMES) - onset, 0) * STEP
  return start[None] + moved[:, None] * DELTAS[direction][None]


def sample_scene(rng: np.random.Generator) -> dict:
  """One scene: per object colour, shape, direction, onset, start, pitch
  (-1 = silent); objects never overlap in any frame."""
  travel = (FRAMES - 1) * STEP
  while True:
    colors = rng.choice(len(COLORS), NUM_OBJECTS, replace=False)
    shapes = rng.integers(0, len(SHAPES), NUM_OBJECTS)
    dirs = rng.integers(0, len(DIRECTIONS), NUM_OBJECTS)
    onsets = rng.choice(FRAMES - 2, NUM_OBJECTS, replace=False)
    starts = np.zeros((NUM_OBJECTS, 2), np.int64)
    for k in range(NUM_OBJECTS):
      lo = np.where(DELTAS[dirs[k]] < 0, travel, 0)
      hi = SIZE - OBJECT_SIZE - np.where(DELTAS[dirs[k]] > 0, travel, 0)
      starts[k] = rng.integers(lo, hi + 1)
    path = np.stack([positions(starts[k], dirs[k], onsets[k])
                     for k in range(NUM_OBJECTS)])          # [K, F, 2]
    gap = np.abs(path[:, None] - path[None])                 # [K, K, F, 2]
    overlap = (gap < OBJECT_SIZE + 1).all(-1).any(-1)
    if not overlap[~np.eye(NUM_OBJECTS, dtype=bool)].any():
      break
  pitch = np.full(NUM_OBJECTS, -1)
  sounding = rng.choice(NUM_OBJECTS, rng.integers(1, 3), replace=False)
  pitch[sounding] = rng.permutation(len(PITCHES))[:len(sounding)]
  return dict(color=colors, shape=shapes, direction=dirs, onset=onsets,
              start=starts, pitch=pitch)


def render(scene: dict) -> np.ndarray:
  """uint8 [FRAMES, SIZE, SIZE, 3] on black."""
  video = np.zeros((FRAMES, SIZE, SIZE, 3), np.uint8)
  for k in range(NUM_OBJECTS):
    mask = shape_mask(scene["shape"][k])
    path = positions(scene["start"][k], scene["direction"][k],
                     scene["onset"][k])
    for f, (x, y) in enumerate(path):
      region = video[f, y:y + OBJECT_SIZE, x:x + OBJECT_SIZE]
      region[mask] = RGB[scene["color"][k]]
  return video


def synthesize(scene: dict, rng: np.random.Generator) -> np.ndarray:
  """float32 [FRAMES * SAMPLES_PER_FRAME] waveform in [-1, 1]."""
  n = FRAMES * SAMPLES_PER_FRAME
  t = np.arange(n) / SAMPLE_RATE
  wave = rng.normal(0, NOISE_STD, n)
  for k in np.flatnonzero(scene["pitch"] >= 0):
    a = scene["onset"][k] * SAMPLES_PER_FRAME
    b = min(a + TONE_FRAMES * SAMPLES_PER_FRAME, n)
    wave[a:b] += TONE_AMPLITUDE * np.sin(
        2 * np.pi * PITCHES_HZ[scene["pitch"][k]] * t[a:b] + rng.uniform(0, 6))
  return np.clip(wave, -1, 1).astype(np.float32)


def questions(scene: dict, rng: np.random.Generator) -> list[tuple]:
  """[(text, answer id, qtype, qsubtype)]: each sight and sound question
  once (random colour / direction / pitch), and the 'both' questions for
  each pitch that sounds."""
  c, s, d, p = (scene[k] for k in ("color", "shape", "direction", "pitch"))
  out = []
  dr = int(rng.integers(len(DIRECTIONS)))
  out.append((f"how many objects move {DIRECTIONS[dr]}?",
              _answer(COUNTS[int((d == dr).sum())]), 0, 0))
  k = int(rng.integers(NUM_OBJECTS))
  out.append((f"which way does the {COLORS[c[k]]} object move?",
              _answer(DIRECTIONS[d[k]]), 0, 1))
  out.append(("how many sounds are there?",
              _answer(COUNTS[int((p >= 0).sum())]), 1, 0))
  pi = int(rng.integers(len(PITCHES)))
  out.append((f"is there a {PITCHES[pi]} sound?",
              _answer("yes" if (p == pi).any() else "no"), 1, 1))
  for pi in range(len(PITCHES)):
    if not (p == pi).any():
      continue
    k = int(np.flatnonzero(p == pi)[0])
    name = PITCHES[pi]
    out.append((f"what colour is the object that makes the {name} sound?",
                _answer(COLORS[c[k]]), 2, 0))
    out.append((f"which way is the object with the {name} sound moving?",
                _answer(DIRECTIONS[d[k]]), 2, 1))
    sh = int(rng.integers(len(SHAPES)))
    out.append((f"is the {name} sound made by a {SHAPES[sh]}?",
                _answer("yes" if s[k] == sh else "no"), 2, 2))
  return out


def events(scene: dict) -> np.ndarray:
  """int32 [1 or 2] sorted EVENTS ids: pitch * len(DIRECTIONS) + direction
  of each sounding object."""
  k = np.flatnonzero(scene["pitch"] >= 0)
  ids = scene["pitch"][k] * len(DIRECTIONS) + scene["direction"][k]
  return np.sort(ids).astype(np.int32)


SPLIT_KEYS = {"train": 0, "validation": 1, "test": 2}


def generate(seed: int, split: str, num_clips: int) -> Iterator[dict]:
  """Yields `num_clips` records of `split`; the random stream is
  `default_rng([seed, SPLIT_KEYS[split]])`, so a split depends only on
  these three."""
  if split not in SPLIT_KEYS:
    raise ValueError(f"av_scenes: unknown split {split!r}; expected one of "
                     f"{sorted(SPLIT_KEYS)}.")
  rng = np.random.default_rng([seed, SPLIT_KEYS[split]])
  for i in range(num_clips):
    scene = sample_scene(rng)
    qs = questions(scene, rng)
    yield {
        "id": f"{split}_{i:05d}",
        "video": render(scene),
        "audio": synthesize(scene, rng),
        "objects": {k: np.asarray(scene[k], np.int32)
                    for k in ("color", "shape", "direction", "onset", "pitch")},
        "question": np.array([q[0] for q in qs], dtype=object),
        "answer": np.array([q[1] for q in qs], np.int32),
        "qtype": np.array([q[2] for q in qs], np.int32),
        "qsubtype": np.array([q[3] for q in qs], np.int32),
        "label": events(scene),
    }


@dataclasses.dataclass(eq=False)
class AvScenesConfig(tfds.core.BuilderConfig):
  num_train: int = 8000
  num_validation: int = 1000
  num_test: int = 1000
  seed: int = 0

  def split_sizes(self) -> dict:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}


class AvScenes(tfds_base.Builder):
  """AV-Scenes; see the module docstring. Record: 'id' str; 'video' uint8
  [FRAMES, SIZE, SIZE, 3]; 'audio' float32 [FRAMES * SAMPLES_PER_FRAME];
  'objects' {'color', 'shape', 'direction', 'onset', 'pitch'} int32
  [NUM_OBJECTS]; 'question' str [Q]; 'answer', 'qtype', 'qsubtype' int32
  [Q]; 'label' int32 [1 or 2], the clip's EVENTS ids."""
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "'label': the clip's audio-visual events."}
  BUILDER_CONFIGS = [
      AvScenesConfig(name="default", description=(
          "8,000 train / 1,000 validation / 1,000 test clips.")),
      AvScenesConfig(name="tiny", num_train=64, num_validation=16,
                     num_test=16, description="For tests."),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    f = tfds.features
    obj = {k: f.Tensor(shape=(NUM_OBJECTS,), dtype=np.int32)
           for k in ("color", "shape", "direction", "onset", "pitch")}
    return tfds.core.DatasetInfo(
        builder=self,
        disable_shuffling=True,
        description=__doc__,
        features=f.FeaturesDict({
            "id": f.Text(),
            "video": f.Tensor(shape=(FRAMES, SIZE, SIZE, 3), dtype=np.uint8,
                              encoding="bytes"),
            "audio": f.Tensor(shape=(FRAMES * SAMPLES_PER_FRAME,),
                              dtype=np.float32, encoding="bytes"),
            "objects": f.FeaturesDict(obj),
            "question": f.Tensor(shape=(None,), dtype=np.str_),
            "answer": f.Tensor(shape=(None,), dtype=np.int32),
            "qtype": f.Tensor(shape=(None,), dtype=np.int32),
            "qsubtype": f.Tensor(shape=(None,), dtype=np.int32),
            "label": f.Tensor(shape=(None,), dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(
            seed=self.builder_config.seed,
            num_clips=self.builder_config.split_sizes(),
            answers=list(ANSWERS), qtypes=list(QTYPES),
            qsubtypes=[list(s) for s in QSUBTYPES],
            labels=list(EVENTS), multi_label=True,
            frames=FRAMES, size=SIZE, sample_rate=SAMPLE_RATE,
            audio_samples=FRAMES * SAMPLES_PER_FRAME,
            colors=list(COLORS), shapes=list(SHAPES),
            directions=list(DIRECTIONS), pitches_hz=list(PITCHES_HZ)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {split: self._generate_examples(split, n)
            for split, n in cfg.split_sizes().items() if n > 0}

  def _generate_examples(self, split: str, num_clips: int):
    for record in generate(self.builder_config.seed, split, num_clips):
      yield record["id"], record
