"""Sort-of-CLEVR (Santoro et al. 2017, "A simple neural network module for
relational reasoning", Sec. 5.1 and App. D): a pure-numpy generator.

A scene is a 75x75 RGB image on a white background with 6 objects, one of each
color in `COLORS`, each a circle (radius `OBJECT_SIZE`) or a square (half-width
`OBJECT_SIZE`) at random, with integer centers and non-overlapping bounding
boxes (at least one background pixel between any two objects). Coordinates are
`(x, y)` = (column, row), so y grows downwards; "left" means x < 37.5 and
"top" means y < 37.5.

Questions (qtype / qsubtype ids, answers from `ANSWERS`):
  0 nonrel   0 shape      "what is the shape of the X object?"       circle|square
             1 horizontal "is the X object on the left or ...?"     left|right
             2 vertical   "is the X object at the top or ...?"      top|bottom
  1 rel      0 closest    shape of the object closest to X (Euclidean distance
                          between centers)                          circle|square
             1 furthest   shape of the object furthest from X       circle|square
             2 count      how many objects (X included) have X's shape    1..6
  2 ternary  0 between    how many objects Z (not X, Y) lie between X and Y:
                          the projection of Z's center onto the line XY falls
                          strictly inside the segment XY
                          ((Z-X).(Y-X) > 0 and (Z-Y).(X-Y) > 0)         0..4
             1 midpoint   the color of the object (not X, Y) closest to the
                          midpoint of X and Y                           a color
             2 closer     how many objects Z (not X, Y) are closer to X than
                          Y is (|Z-X| < |Y-X|)                          0..4
Ambiguous cases never occur: a scene is resampled if any object has two
equally close (or equally far) neighbours, and a ternary question is only asked
about a pair (X, Y) with no ties (no equal distances, no Z on a boundary).

Question encoding (`ENCODING_DIM` = 18, uint8):
  [0:6] color X one-hot, [6:12] color Y one-hot (ternary only, else zero),
  [12:15] qtype one-hot, [15:18] qsubtype one-hot.
For nonrel/rel questions, dims [0:6] + [12:14] + [15:18] are exactly the
paper's 11-dim vector (6 colors, nonrel/rel, 3 subtypes).

Captions (5 templates, cycled) and dialogues are described at `captions` and
`dialogues`. Everything is deterministic given a numpy Generator.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from mmtx.data import tfds_base

IMAGE_SIZE = 75
OBJECT_SIZE = 5            # circle radius / square half-width, in pixels
MIN_GAP = 2 * OBJECT_SIZE + 2  # min Chebyshev distance between two centers
NUM_OBJECTS = 6
COLORS = ("red", "green", "blue", "orange", "gray", "yellow")
RGB = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 156, 0),
                (128, 128, 128), (255, 255, 0)], np.uint8)
SHAPES = ("circle", "square")
ANSWERS = ("left", "right", "top", "bottom", "circle", "square",
           "0", "1", "2", "3", "4", "5", "6") + COLORS
QTYPES = ("nonrel", "rel", "ternary")
QSUBTYPES = (("shape", "horizontal", "vertical"),
             ("closest", "furthest", "count"),
             ("between", "midpoint", "closer"))
ENCODING_DIM = 18
_A = {a: i for i, a in enumerate(ANSWERS)}
_SHAPE0, _COUNT0, _COLOR0 = _A["circle"], _A["0"], _A["red"]
_QUESTION_TEMPLATES = (
    ("what is the shape of the {a} object?",
     "is the {a} object on the left or on the right?",
     "is the {a} object at the top or at the bottom?"),
    ("what is the shape of the object closest to the {a} object?",
     "what is the shape of the object furthest from the {a} object?",
     "how many objects have the same shape as the {a} object?"),
    ("how many objects lie between the {a} object and the {b} object?",
     "what color is the object closest to the midpoint of the {a} object and "
     "the {b} object?",
     "how many objects are closer to the {a} object than the {b} object is?"),
)


# ----------------------------------------------------------------- scenes
def sample_scenes(rng: np.random.Generator, n: int):
  """`n` valid scenes by rejection sampling.

  Returns `centers` int32 `[n, 6, 2]` (x, y), object k has color k, and
  `shapes` int32 `[n, 6]` (0 = circle, 1 = square).
  """
  lo, hi = OBJECT_SIZE, IMAGE_SIZE - 1 - OBJECT_SIZE
  centers, shapes, have = [], [], 0
  while have < n:
    m = max(256, 10 * (n - have))
    c = rng.integers(lo, hi + 1, size=(m, NUM_OBJECTS, 2))
    s = rng.integers(0, 2, size=(m, NUM_OBJECTS))
    ok = scenes_valid(c)
    centers.append(c[ok])
    shapes.append(s[ok])
    have += int(ok.sum())
  return (np.concatenate(centers)[:n].astype(np.int32),
          np.concatenate(shapes)[:n].astype(np.int32))


def _pairwise(centers):
  c = centers.astype(np.int64)
  diff = c[:, None, :, :] - c[:, :, None, :]            # [n, i, j, 2] = c_j - c_i
  return diff, (diff ** 2).sum(-1)                      # d2 [n, i, j]


def scenes_valid(centers: np.ndarray) -> np.ndarray:
  """bool `[n]`: no overlap, unique nearest/furthest neighbours, and every
  ternary subtype has at least one unambiguous (X, Y) pair."""
  diff, d2 = _pairwise(centers)
  eye = np.eye(NUM_OBJECTS, dtype=bool)
  cheb = np.abs(diff).max(-1)
  ok = np.where(eye, True, cheb >= MIN_GAP).all((1, 2))
  srt = np.sort(np.where(eye, np.iinfo(np.int64).max, d2), axis=-1)
  ok &= (srt[..., 0] < srt[..., 1]).all(-1)        # unique nearest
  ok &= (srt[..., -2] > srt[..., -3]).all(-1)      # unique furthest (col -1 = diag)
  if ok.any():                                     # the costlier check on survivors
    _, tvalid = _ternary_tables(centers[ok])
    ok[ok] = tvalid.any((2, 3)).all(1)
  return ok


def render(centers: np.ndarray, shapes: np.ndarray) -> np.ndarray:
  """uint8 `[n, 75, 75, 3]` images of the scenes (white background)."""
  n = centers.shape[0]
  img = np.full((n, IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
  off = np.arange(-OBJECT_SIZE, OBJECT_SIZE + 1)
  dy, dx = np.meshgrid(off, off, indexing="ij")             # [p, p] patch offsets
  templates = np.stack([dx * dx + dy * dy <= OBJECT_SIZE ** 2,   # circle
                        np.ones_like(dx, bool)])                  # square
  rows = centers[:, :, 1, None, None] + dy                  # [n, 6, p, p]
  cols = centers[:, :, 0, None, None] + dx
  mask = templates[shapes]                                  # [n, 6, p, p]
  image_idx = np.broadcast_to(np.arange(n)[:, None, None, None], mask.shape)
  color = np.broadcast_to(np.arange(NUM_OBJECTS)[None, :, None, None], mask.shape)
  img[image_idx[mask], rows[mask], cols[mask]] = RGB[color[mask]]
  return img


# ---------------------------------------------------------------- answers
def _ternary_tables(centers):
  """Answers `[n, 3, 6, 6]` (subtype, X, Y) and validity of each (X, Y)."""
  c = centers.astype(np.int64)
  n = c.shape[0]
  a = c[:, :, None, None, :]                   # X  [n, a, 1, 1, 2]
  b = c[:, None, :, None, :]                   # Y  [n, 1, b, 1, 2]
  z = c[:, None, None, :, :]                   # Z  [n, 1, 1, z, 2]
  idx = np.arange(NUM_OBJECTS)
  other = ((idx[:, None, None] != idx[None, None, :]) &
           (idx[None, :, None] != idx[None, None, :]))          # z not in {a,b}
  pair = idx[:, None] != idx[None, :]
  dot1 = ((z - a) * (b - a)).sum(-1)
  dot2 = ((z - b) * (a - b)).sum(-1)
  between = ((dot1 > 0) & (dot2 > 0) & other).sum(-1)
  v_between = pair & ~(((dot1 == 0) | (dot2 == 0)) & other).any(-1)
  mid = ((2 * z - a - b) ** 2).sum(-1)
  mid = np.where(other, mid, np.iinfo(np.int64).max)
  srt = np.sort(mid, -1)
  mid_arg = mid.argmin(-1)
  v_mid = pair & (srt[..., 0] < srt[..., 1])
  _, d2 = _pairwise(centers)
  daz = d2[:, :, None, :]                      # |Z-X|^2   [n, a, 1, z]
  dab = d2[:, :, :, None]                      # |Y-X|^2   [n, a, b, 1]
  closer = ((daz < dab) & other).sum(-1)
  v_closer = pair & ~((daz == dab) & other).any(-1)
  answers = np.stack([_COUNT0 + between, _COLOR0 + mid_arg, _COUNT0 + closer], 1)
  valid = np.stack([v_between, v_mid, v_closer], 1)
  del n
  return answers.astype(np.int32), valid


def answer_tables(centers: np.ndarray, shapes: np.ndarray) -> dict:
  """Every question's answer id, for scenes `centers [n,6,2]`, `shapes [n,6]`.

  Returns 'nonrel' and 'rel' `[n, 3, 6]` (subtype, color X), 'ternary'
  `[n, 3, 6, 6]` (subtype, X, Y) with 'ternary_valid' (same shape, bool), and
  'closest' / 'furthest' `[n, 6]`: the color index of each object's neighbour.
  """
  _, d2 = _pairwise(centers)
  eye = np.eye(NUM_OBJECTS, dtype=bool)
  closest = np.where(eye, np.iinfo(np.int64).max, d2).argmin(-1)
  furthest = np.where(eye, -1, d2).argmax(-1)
  x, y = centers[..., 0], centers[..., 1]
  nonrel = np.stack([_SHAPE0 + shapes,
                     np.where(x < IMAGE_SIZE / 2, _A["left"], _A["right"]),
                     np.where(y < IMAGE_SIZE / 2, _A["top"], _A["bottom"])], 1)
  same = (shapes[:, :, None] == shapes[:, None, :]).sum(-1)
  rel = np.stack([_SHAPE0 + np.take_along_axis(shapes, closest, 1),
                  _SHAPE0 + np.take_along_axis(shapes, furthest, 1),
                  _COUNT0 + same], 1)
  tern, tvalid = _ternary_tables(centers)
  return dict(nonrel=nonrel.astype(np.int32), rel=rel.astype(np.int32),
              ternary=tern, ternary_valid=tvalid,
              closest=closest.astype(np.int32), furthest=furthest.astype(np.int32))


# -------------------------------------------------------------- questions
def question_text(qtype: int, qsubtype: int, a: int, b: int = -1) -> str:
  """The natural-language question; `a`, `b` are color indices."""
  return _QUESTION_TEMPLATES[qtype][qsubtype].format(
      a=COLORS[a], b=COLORS[b] if b >= 0 else "")


def question_encoding(qtype, qsubtype, a, b) -> np.ndarray:
  """uint8 `[..., 18]` encoding of questions (see the module docstring).

  `b` < 0 means no second color (nonrel/rel questions).
  """
  qtype, qsubtype, a, b = np.broadcast_arrays(*map(np.asarray, (qtype, qsubtype, a, b)))
  enc = np.zeros(qtype.shape + (ENCODING_DIM,), np.uint8)
  eye6, eye3 = np.eye(6, dtype=np.uint8), np.eye(3, dtype=np.uint8)
  enc[..., 0:6] = eye6[a]
  enc[..., 6:12] = np.where((b >= 0)[..., None], eye6[np.maximum(b, 0)], 0)
  enc[..., 12:15] = eye3[qtype]
  enc[..., 15:18] = eye3[qsubtype]
  return enc


def sample_questions(rng: np.random.Generator, tables: dict,
                     per_type: int) -> dict:
  """`per_type` questions of each qtype per scene, uniformly random subtype
  and color(s); a ternary pair (X, Y) is uniform among the unambiguous pairs.

  Returns int32 arrays `[n, 3 * per_type]`: 'qtype', 'qsubtype', 'color_a',
  'color_b' (-1 when unused), 'answer'; questions ordered by qtype.
  """
  n = tables["nonrel"].shape[0]
  rows = np.arange(n)[:, None]
  out = {k: [] for k in ("qtype", "qsubtype", "color_a", "color_b", "answer")}
  for t, name in enumerate(QTYPES):
    sub = rng.integers(0, 3, size=(n, per_type))
    if name != "ternary":
      a = rng.integers(0, NUM_OBJECTS, size=(n, per_type))
      b = np.full_like(a, -1)
      ans = tables[name][rows, sub, a]
    else:
      valid = tables["ternary_valid"][rows, sub].reshape(n, per_type, -1)
      u = rng.random(valid.shape)
      flat = np.where(valid, u, -1.0).argmax(-1)
      a, b = np.divmod(flat, NUM_OBJECTS)
      ans = tables["ternary"][rows, sub, a, b]
    for k, v in zip(out, (np.full_like(sub, t), sub, a, b, ans)):
      out[k].append(v)
  return {k: np.concatenate(v, 1).astype(np.int32) for k, v in out.items()}


# --------------------------------------------------------------- captions
_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six")


def _quadrant(center) -> str:
  vert = "top" if center[1] < IMAGE_SIZE / 2 else "bottom"
  horiz = "left" if center[0] < IMAGE_SIZE / 2 else "right"
  return f"{vert} {horiz}"


def _name(k, shapes) -> str:
  return f"{COLORS[k]} {SHAPES[shapes[k]]}"


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _count_phrase(m: int, word: str) -> str:
  return f"{_NUMBER_WORDS[m]} {word}{'s' if m != 1 else ''}"


def _and_list(words) -> str:
  words = list(words)
  if len(words) <= 1:
    return "".join(words)
  return ", ".join(words[:-1]) + " and " + words[-1]


def _caption(template: int, rng, centers, shapes, closest, furthest) -> str:
  objs = rng.permutation(NUM_OBJECTS)
  if template == 0:                      # every object with its quadrant
    return _and_list(f"{_article(COLORS[k])} {_name(k, shapes)} at the "
                     f"{_quadrant(centers[k])}" for k in objs) + "."
  if template == 1:                      # shape counts, minority listed
    counts = [int((shapes == 0).sum()), int((shapes == 1).sum())]
    text = (f"there {'is' if counts[0] == 1 else 'are'} "
            f"{_count_phrase(counts[0], 'circle')} and "
            f"{_count_phrase(counts[1], 'square')}")
    shape = 0 if counts[0] <= counts[1] else 1
    members = [COLORS[k] for k in objs if shapes[k] == shape]
    if members:
      noun = SHAPES[shape] + ("s are" if len(members) > 1 else " is")
      text += f"; the {noun} {_and_list(members)}"
    return text + "."
  if template == 2:                      # clear left-of / above relations
    parts = []
    for axis, rel in ((0, "to the left of"), (1, "above")):
      pairs = [(i, j) for i, j in itertools.permutations(range(NUM_OBJECTS), 2)
               if centers[j, axis] - centers[i, axis] > 2 * OBJECT_SIZE]
      if pairs:
        i, j = pairs[rng.integers(len(pairs))]
        parts.append(f"the {_name(i, shapes)} is {rel} the {_name(j, shapes)}")
    return ", and ".join(parts) + "."
  if template == 3:                      # nearest / furthest neighbours
    i, j = objs[0], objs[1]
    return (f"the {_name(i, shapes)} is closest to the "
            f"{_name(closest[i], shapes)}, and the {_name(j, shapes)} is "
            f"furthest from the {_name(furthest[j], shapes)}.")
  # template 4: which objects are in the left / right half
  halves = []
  for side, keep in (("left", lambda x: x < IMAGE_SIZE / 2),
                     ("right", lambda x: x >= IMAGE_SIZE / 2)):
    members = [f"the {_name(k, shapes)}" for k in objs if keep(centers[k, 0])]
    halves.append(f"the {side} half holds {_and_list(members) or 'nothing'}")
  return "; ".join(halves) + "."


def captions(rng, centers, shapes, closest, furthest, num: int) -> list[str]:
  """`num` captions of one scene (`centers [6,2]`, `shapes [6]`), cycling
  through 5 templates: all objects with quadrants; shape counts; left-of /
  above relations; nearest / furthest neighbours; left / right halves."""
  return [_caption(i % 5, rng, centers, shapes, closest, furthest)
          for i in range(num)]


# -------------------------------------------------------------- dialogues
# Openers name a color; follow-ups say "it" for the current referent, which is
# the object named in the opener or, after a question answered by a color, the
# object that answer names. A follow-up is never repeated about one referent.
_OPENERS = (("shape", "what is the shape of the {c} object?"),
            ("side", "is the {c} object on the left or on the right?"),
            ("height", "is the {c} object at the top or at the bottom?"))
_FOLLOW_UPS = (("shape", "what shape is it?"),
               ("side", "is it on the left or on the right?"),
               ("height", "is it at the top or at the bottom?"),
               ("count", "how many objects have the same shape as it?"),
               ("closest_color", "what color is the object closest to it?"),
               ("furthest_color", "what color is the object furthest from it?"),
               ("closest_shape", "and what shape is the object closest to it?"),
               ("furthest_shape", "and what shape is the object furthest from it?"))


def _dialogue_answer(kind, r, centers, shapes, closest, furthest):
  """(answer id, new referent) for a question of `kind` about object `r`."""
  if kind == "shape":
    return _SHAPE0 + shapes[r], r
  if kind == "side":
    return (_A["left"] if centers[r, 0] < IMAGE_SIZE / 2 else _A["right"]), r
  if kind == "height":
    return (_A["top"] if centers[r, 1] < IMAGE_SIZE / 2 else _A["bottom"]), r
  if kind == "count":
    return _COUNT0 + int((shapes == shapes[r]).sum()), r
  other = closest[r] if kind.startswith("closest") else furthest[r]
  if kind.endswith("color"):
    return _COLOR0 + other, other
  return _SHAPE0 + shapes[other], r


def dialogues(rng, centers, shapes, closest, furthest, num: int, turns: int):
  """`num` dialogues of `turns` turns about one scene.

  Returns (questions `[num, turns]` str, answers int32 `[num, turns]`,
  referents int32 `[num, turns]`: the color index each question is about).
  """
  qs, ans, refs = [], [], []
  for _ in range(num):
    r = int(rng.integers(NUM_OBJECTS))
    kind, tmpl = _OPENERS[rng.integers(len(_OPENERS))]
    asked = {kind}
    q_row, a_row, r_row = [tmpl.format(c=COLORS[r])], [], [r]
    a, new_r = _dialogue_answer(kind, r, centers, shapes, closest, furthest)
    a_row.append(a)
    for _ in range(turns - 1):
      if new_r != r:
        r, asked = new_r, set()
      choices = [f for f in _FOLLOW_UPS if f[0] not in asked]
      kind, tmpl = choices[rng.integers(len(choices))]
      asked.add(kind)
      q_row.append(tmpl)
      r_row.append(r)
      a, new_r = _dialogue_answer(kind, r, centers, shapes, closest, furthest)
      a_row.append(a)
    qs.append(q_row)
    ans.append(a_row)
    refs.append(r_row)
  return (np.array(qs, dtype=object).reshape(num, turns),
          np.array(ans, np.int32).reshape(num, turns),
          np.array(refs, np.int32).reshape(num, turns))


# --------------------------------------------------------------- datasets
@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """Everything that determines a split's bytes (besides the split name)."""
  seed: int = 0
  questions_per_type: int = 10
  captions_per_image: int = 5
  dialogues_per_image: int = 2
  dialogue_turns: int = 4


SPLIT_KEYS = {"train": 0, "test": 1, "test_large": 2, "validation": 3}


def generate(config: GeneratorConfig, split: str, num_images: int,
             chunk: int = 1000) -> Iterator[dict]:
  """Yields `num_images` records of `split` (the schema of `SortOfClevr`).

  The random stream is `np.random.default_rng([seed, SPLIT_KEYS[split]])`,
  consumed chunk by chunk, so a split's content depends only on the config,
  the split and `num_images`.
  """
  if split not in SPLIT_KEYS:
    raise ValueError(f"sort_of_clevr: unknown split {split!r}; expected one "
                     f"of {sorted(SPLIT_KEYS)}.")
  rng = np.random.default_rng([config.seed, SPLIT_KEYS[split]])
  done = 0
  while done < num_images:
    n = min(chunk, num_images - done)
    centers, shapes = sample_scenes(rng, n)
    images = render(centers, shapes)
    tables = answer_tables(centers, shapes)
    q = sample_questions(rng, tables, config.questions_per_type)
    enc = question_encoding(q["qtype"], q["qsubtype"], q["color_a"], q["color_b"])
    for i in range(n):
      cl, fu = tables["closest"][i], tables["furthest"][i]
      d_q, d_a, _ = dialogues(rng, centers[i], shapes[i], cl, fu,
                              config.dialogues_per_image, config.dialogue_turns)
      yield {
          "id": f"{split}_{done + i:05d}",
          "image": images[i],
          "objects": {"center": centers[i], "shape": shapes[i]},
          "question": np.array([question_text(*x) for x in zip(
              q["qtype"][i], q["qsubtype"][i], q["color_a"][i], q["color_b"][i])],
                               dtype=object),
          "question_encoding": enc[i],
          "answer": q["answer"][i],
          "qtype": q["qtype"][i],
          "qsubtype": q["qsubtype"][i],
          "caption": np.array(captions(rng, centers[i], shapes[i], cl, fu,
                                       config.captions_per_image), dtype=object),
          "dialogue_question": d_q,
          "dialogue_answer": d_a,
      }
    done += n


# ------------------------------------------------------------ TFDS builder
@dataclasses.dataclass(eq=False)
class SortOfClevrConfig(tfds.core.BuilderConfig):
  """Split sizes and the generator settings; all go into the metadata.

  'validation' is for choosing recipes; 'test' (the paper's 200 images) and
  'test_large' are for reporting. Each split has its own random stream.
  """
  num_train: int = 9300
  num_validation: int = 500
  num_test: int = 200
  num_test_large: int = 2000
  generator: GeneratorConfig = GeneratorConfig()

  def split_sizes(self) -> dict:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test, "test_large": self.num_test_large}


class SortOfClevr(tfds_base.Builder):
  """Sort-of-CLEVR with questions, captions and dialogues; see module doc.

  Record: 'id' str; 'image' uint8 [75,75,3]; 'objects' {'center' int32 [6,2]
  (x, y), 'shape' int32 [6]} (object k has color k); 'question' str [Q];
  'question_encoding' uint8 [Q,18]; 'answer', 'qtype', 'qsubtype' int32 [Q];
  'caption' str [C]; 'dialogue_question' str [D,T]; 'dialogue_answer' int32
  [D,T]. Answer ids index `ANSWERS`.
  """
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "A 500-image 'validation' split; 'train' gives "
                            "up the same 500 images (9,800 -> 9,300)."}
  BUILDER_CONFIGS = [
      SortOfClevrConfig(name="default", description=(
          "10,000 images as in Santoro et al. 2017 (9,300 train + 500 "
          "validation / 200 test) plus a 2,000-image test_large split.")),
      SortOfClevrConfig(name="tiny", num_train=64, num_validation=16,
                        num_test=16, num_test_large=32,
                        description="For tests."),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    gen = cfg.generator
    features = tfds.features
    return tfds.core.DatasetInfo(
        builder=self,
        disable_shuffling=True,  # record i is example i, as generated
        description=__doc__,
        features=features.FeaturesDict({
            "id": features.Text(),
            "image": features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                     dtype=np.uint8, encoding="bytes"),
            "objects": features.FeaturesDict({
                "center": features.Tensor(shape=(NUM_OBJECTS, 2), dtype=np.int32),
                "shape": features.Tensor(shape=(NUM_OBJECTS,), dtype=np.int32)}),
            "question": features.Tensor(shape=(None,), dtype=np.str_),
            "question_encoding": features.Tensor(
                shape=(None, ENCODING_DIM), dtype=np.uint8, encoding="bytes"),
            "answer": features.Tensor(shape=(None,), dtype=np.int32),
            "qtype": features.Tensor(shape=(None,), dtype=np.int32),
            "qsubtype": features.Tensor(shape=(None,), dtype=np.int32),
            "caption": features.Tensor(shape=(None,), dtype=np.str_),
            "dialogue_question": features.Tensor(
                shape=(None, gen.dialogue_turns), dtype=np.str_),
            "dialogue_answer": features.Tensor(
                shape=(None, gen.dialogue_turns), dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(
            generator=dataclasses.asdict(gen),
            num_images=cfg.split_sizes(),
            answers=list(ANSWERS),
            qtypes=list(QTYPES),
            qsubtypes=[list(s) for s in QSUBTYPES],
            questions_per_image=3 * gen.questions_per_type,
            dialogues_per_image=gen.dialogues_per_image,
            dialogue_turns=gen.dialogue_turns,
            image_size=IMAGE_SIZE, object_size=OBJECT_SIZE,
            colors=list(COLORS), rgb=RGB.tolist(),
        ),
        homepage="https://arxiv.org/abs/1706.01427",
        citation=("@inproceedings{santoro2017simple, title={A simple neural "
                  "network module for relational reasoning}, author={Santoro, "
                  "Adam and others}, booktitle={NeurIPS}, year={2017}}"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {split: self._generate_examples(split, n)
            for split, n in cfg.split_sizes().items() if n > 0}

  def _generate_examples(self, split: str, num_images: int):
    for record in generate(self.builder_config.generator, split, num_images):
      yield record["id"], record
