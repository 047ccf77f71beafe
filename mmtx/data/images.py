"""Encoded images (JPEG / PNG / WebP bytes) -> model inputs, inside the
input pipeline: decode, resize and crop, optional horizontal flip, and the
model's normalisation constants.

  policy = Policy(size=224, normalize="clip")
  x = preprocess(jpeg_bytes, policy, rng=None)         # eval: [224, 224, 3]
  x = preprocess(jpeg_bytes, policy, rng, train=True)  # random resized crop

Eval: the image's center square (side = its shorter side) resized to
`size` x `size` (an image already that size is returned as decoded).
Training: a random crop of `crop_scale` of the area with aspect ratio in
`crop_ratio` (Szegedy et al. 2015's "Inception" crop), resized to `size`,
then a horizontal flip with probability 1/2 where the caller says it is
label-safe (`flip_safe`). Every random choice comes from the numpy
Generator the caller passes, which the pipeline seeds from the seed and the
example's position, so the output is deterministic given both.
"""
from __future__ import annotations

import dataclasses
import io
import math
import re

import numpy as np

# (mean, std) per channel on [0, 1] pixels; 'minus_one_one' is x / 127.5 - 1.
NORMALIZATIONS = {
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073),
             (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_SIDE_WORDS = re.compile(r"\b(left|right|lefts|rights|leftmost|rightmost)\b",
                         re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Policy:
  """How an encoded image becomes a `[size, size, 3]` float32 input."""
  size: int = 224
  normalize: str = "minus_one_one"
  crop_scale: tuple[float, float] = (0.35, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  hflip: bool = False     # training only, and only where `flip_safe`

  def __post_init__(self):
    if self.normalize not in NORMALIZATIONS:
      raise ValueError(f"image normalize={self.normalize!r}; expected one of "
                       f"{sorted(NORMALIZATIONS)}.")
    if not (isinstance(self.size, int) and self.size > 0):
      raise ValueError(f"image size must be a positive int, got {self.size!r}.")
    lo, hi = self.crop_scale
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"crop_scale={self.crop_scale}: expected 0 < lo <= hi "
                       "<= 1 (fractions of the image area).")


def _pil():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image


def open_image(data: bytes, draft: tuple[int, int] | None = None):
  """A fully decoded RGB PIL image; OSError/ValueError for bytes that are
  not a complete JPEG / PNG / WebP (or another format Pillow reads).
  `draft` (width, height): a JPEG may be decoded at 1/2, 1/4 or 1/8 of its
  size as long as it stays at least this large (libjpeg's DCT scaling)."""
  image = _pil().open(io.BytesIO(data))
  if draft is not None and image.format == "JPEG":
    image.draft("RGB", draft)
  return _loaded(image)


def _loaded(image):
  image.load()   # decodes every byte: a truncated file fails here
  if image.mode != "RGB":
    image = image.convert("RGB")  # gray, palette, CMYK; alpha is dropped
  if image.width < 1 or image.height < 1:
    raise ValueError(f"image has size {image.size}")
  return image


def decode(data: bytes) -> np.ndarray:
  """Encoded bytes -> uint8 `[H, W, 3]`."""
  return np.asarray(open_image(data), np.uint8)


def normalize(image: np.ndarray, name: str = "minus_one_one") -> np.ndarray:
  """uint8 `[H, W, 3]` -> float32 `(x / 255 - mean) / std`; 'minus_one_one'
  is computed as x / 127.5 - 1 (views.normalize_image, the built-in
  datasets' convention)."""
  if name == "minus_one_one":
    return image.astype(np.float32) / 127.5 - 1.0
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[name])
  return (image.astype(np.float32) / np.float32(255) - mean) / std


def _resize(image, size, box):
  """PIL crop `box` (left, top, right, bottom; may be fractional) resized
  to size x size."""
  if box == (0, 0, image.width, image.height) and image.size == (size, size):
    return image
  return image.resize((size, size), _pil().Resampling.BILINEAR, box=box)


def center_box(width: int, height: int) -> tuple[int, int, int, int]:
  """The centered square of side min(width, height)."""
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  return (left, top, left + side, top + side)


def random_box(width: int, height: int, rng: np.random.Generator,
               scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
  """A crop of area in `scale` x the image's and aspect ratio (w / h) in
  `ratio` (log-uniform), at a uniform position; after 10 misses, the
  center square."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return (left, top, left + w, top + h)
  return center_box(width, height)


def flip_safe(texts) -> bool:
  """False when any text says 'left' or 'right': mirroring the image would
  make its question, answer or caption wrong."""
  return not any(_SIDE_WORDS.search(t) for t in texts)


def preprocess(data: bytes, policy: Policy, rng: np.random.Generator | None,
               *, train: bool = False, flip_ok: bool = False) -> np.ndarray:
  """Encoded bytes -> float32 `[size, size, 3]` (see the module docstring).
  `train` (with an rng) takes the random resized crop and, when
  `policy.hflip` and `flip_ok`, a flip with probability 1/2. A JPEG whose
  crop is at least twice `size` is decoded at a reduced scale that keeps
  the crop at least `size` pixels (`open_image`'s draft), which skips most
  of the decoding work."""
  image = _pil().open(io.BytesIO(data))
  w, h = image.size
  if train and rng is not None:
    box = random_box(w, h, rng, policy.crop_scale, policy.crop_ratio)
  else:
    box = center_box(w, h)
  bw, bh = box[2] - box[0], box[3] - box[1]
  if image.format == "JPEG" and min(bw, bh) >= 2 * policy.size:
    image.draft("RGB", (math.ceil(w * policy.size / bw),
                        math.ceil(h * policy.size / bh)))
    sx, sy = image.size[0] / w, image.size[1] / h
    box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
  image = _loaded(image)
  out = np.asarray(_resize(image, policy.size, box), np.uint8)
  if train and rng is not None and policy.hflip and flip_ok:
    if rng.random() < 0.5:
      out = out[:, ::-1]
  return normalize(out, policy.normalize)


def shrink(data: bytes, max_side: int) -> bytes:
  """Re-encodes an image whose longer side exceeds `max_side` at that size
  (aspect kept; JPEG quality 95, other formats as they were); smaller
  images are returned unchanged."""
  image = _pil().open(io.BytesIO(data))
  fmt = image.format or "PNG"
  if max(image.size) <= max_side:
    return data
  image = open_image(data)
  scale = max_side / max(image.size)
  size = (max(1, round(image.width * scale)),
          max(1, round(image.height * scale)))
  image = image.resize(size, _pil().Resampling.BICUBIC)
  buf = io.BytesIO()
  kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
  image.save(buf, format=fmt, **kw)
  return buf.getvalue()
