"""easy-VQA (Zhou 2020, https://github.com/vzhou842/easy-VQA) as a TFDS builder.

Read from the files the `easy-vqa` PyPI package ships (`easy_vqa/data/`):
64x64 RGB PNG images (one colored circle, rectangle or triangle on a light
background), `questions.json` lists of `[question, answer, image_id]`, and
`answers.txt` (13 answers). 4,000 train images with 38,575 questions and 1,000
test images with 9,673 questions.

qtype ids (from the answer): 0 'shape', 1 'color', 2 'yes/no'.
Captions are generated from what the image's questions reveal: the answer of a
"what shape / what color" question, the shape or color a "what" question names
("what color is the triangle?"), and the yes/no questions (a "yes" to a
positive or a "no" to a negated question confirms the named attribute; the
last color or shape not ruled out by the others is also taken). An attribute
that stays unknown (about 5% of images) is left out of the captions.
"""
from __future__ import annotations

import json
import os
import re
import struct
import zlib

import numpy as np
import tensorflow_datasets as tfds

from mmtx.data import tfds_base

IMAGE_SIZE = 64
QTYPES = ("shape", "color", "yes/no")
SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
_CAPTION_TEMPLATES = ("a {color} {shape}.",
                      "a {shape} colored {color}.",
                      "the image shows a {color} {shape} on a light background.",
                      "there is one {shape} in the image, and it is {color}.")


def package_data_dir() -> str:
  """The `data/` folder of the installed `easy-vqa` package."""
  try:
    import easy_vqa as pkg  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("easy_vqa: the `easy-vqa` package is not installed; "
                      "`pip install easy-vqa==1.0`.") from e
  return os.path.join(os.path.dirname(pkg.__file__), "data")


def answers() -> list[str]:
  """The package's 13 answers, in the order of its `answers.txt`."""
  with open(os.path.join(package_data_dir(), "answers.txt")) as f:
    return [line.strip() for line in f if line.strip()]


def read_questions(split: str) -> list[tuple[str, str, int]]:
  """`[(question, answer, image_id), ...]` from `data/{split}/questions.json`."""
  if split not in ("train", "test"):
    raise ValueError(f"easy_vqa: unknown split {split!r}; expected 'train' or "
                     "'test'.")
  with open(os.path.join(package_data_dir(), split, "questions.json")) as f:
    return [(q, a, int(i)) for q, a, i in json.load(f)]


# -------------------------------------------------------------------- PNG
def read_png(path: str) -> np.ndarray:
  """Decodes an 8-bit, non-interlaced PNG to uint8 `[H, W, 3]`.

  Handles gray, RGB and RGBA (alpha dropped) with all five row filters (PNG
  spec, Sec. 9); anything else is a ValueError.
  """
  with open(path, "rb") as f:
    data = f.read()
  if data[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError(f"read_png: {path} is not a PNG file.")
  pos, idat, header = 8, [], None
  while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
    (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
    if zlib.crc32(kind + body) != crc:
      raise ValueError(f"read_png: {path} has a corrupt {kind!r} chunk (CRC).")
    if kind == b"IHDR":
      header = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
      idat.append(body)
    elif kind == b"IEND":
      break
    pos += 12 + length
  if header is None:
    raise ValueError(f"read_png: {path} has no IHDR chunk.")
  width, height, depth, color, _, _, interlace = header
  channels = {0: 1, 2: 3, 6: 4}.get(color)
  if depth != 8 or channels is None or interlace:
    raise ValueError(f"read_png: {path} is a PNG this reader does not handle "
                     f"(bit depth {depth}, color type {color}, interlace "
                     f"{interlace}); only 8-bit gray/RGB/RGBA without "
                     "interlacing. Convert it, e.g. with Pillow.")
  raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
  stride = width * channels
  if raw.size != height * (stride + 1):
    raise ValueError(f"read_png: {path} has {raw.size} pixel bytes, expected "
                     f"{height * (stride + 1)}.")
  rows = raw.reshape(height, stride + 1)
  out = np.zeros((height, stride), np.uint8)
  prev = np.zeros(stride, np.uint8)
  for y in range(height):
    filt, line = rows[y, 0], rows[y, 1:]
    if filt == 0:
      cur = line.copy()
    elif filt == 1:      # Sub: running sum along the row, per channel
      cur = np.cumsum(line.reshape(width, channels), 0, dtype=np.uint8).reshape(-1)
    elif filt == 2:      # Up
      cur = line + prev
    elif filt in (3, 4):  # Average / Paeth: sequential along the row
      cur = _unfilter_sequential(int(filt), line.tolist(), prev.tolist(), channels)
    else:
      raise ValueError(f"read_png: {path} row {y} has unknown filter {filt}.")
    out[y] = cur
    prev = out[y]
  img = out.reshape(height, width, channels)
  if channels == 1:
    return np.repeat(img, 3, axis=-1)
  return np.ascontiguousarray(img[..., :3])


def _unfilter_sequential(filt, line, prev, bpp):
  cur = [0] * len(line)
  for i, x in enumerate(line):
    a = cur[i - bpp] if i >= bpp else 0
    b = prev[i]
    if filt == 3:
      cur[i] = (x + (a + b) // 2) & 255
      continue
    c = prev[i - bpp] if i >= bpp else 0
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
    cur[i] = (x + pred) & 255
  return np.array(cur, np.uint8)


# --------------------------------------------------------------- captions
def infer_attributes(questions) -> dict:
  """{'shape': str | None, 'color': str | None} of one image from its
  `[(question, answer), ...]` (see the module docstring)."""
  found = {"shape": set(), "color": set()}
  ruled_out = {"shape": set(), "color": set()}
  for question, answer in questions:
    words = re.findall(r"[a-z]+", question.lower())
    negated = "not" in words or "no" in words
    for word in words + [answer]:
      kind = "shape" if word in SHAPES else "color" if word in COLORS else None
      if kind is None:
        continue
      if word == answer or words[0] == "what":
        found[kind].add(word)
      elif (answer == "yes") != negated:
        found[kind].add(word)
      else:
        ruled_out[kind].add(word)
  out = {}
  for kind, vocab in (("shape", SHAPES), ("color", COLORS)):
    left = set(vocab) - ruled_out[kind]
    if len(found[kind]) == 1:
      out[kind] = found[kind].pop()
    elif not found[kind] and len(left) == 1:
      out[kind] = left.pop()
    else:
      out[kind] = None
  return out


def make_captions(shape: str | None, color: str | None) -> list[str]:
  """Captions of one image; unknown attributes are left out."""
  if shape and color:
    return [t.format(shape=shape, color=color) for t in _CAPTION_TEMPLATES]
  if shape:
    return [f"a {shape}.", f"the image shows a {shape} on a light background."]
  if color:
    return [f"a {color} shape.", f"the image shows a {color} shape on a light "
            "background."]
  return ["a shape on a light background."]


def qtype_of(answer: str) -> int:
  """0 'shape', 1 'color', 2 'yes/no' from the answer."""
  return 0 if answer in SHAPES else 1 if answer in COLORS else 2


# ------------------------------------------------------------ TFDS builder
class EasyVqa(tfds_base.Builder):
  """easy-VQA, one record per image (records in image-id order).

  Record: 'id' str ('train_00042'); 'image_id' int32; 'image' uint8
  [64,64,3]; 'question' str [Q]; 'answer' int32 [Q] (index into
  `metadata['answers']`); 'qtype' int32 [Q]; 'caption' str [C].
  """
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From the easy-vqa 1.0 package files."}

  def _info(self) -> tfds.core.DatasetInfo:
    counts = {}
    for split in ("train", "test"):
      per_image = {}
      for _, _, image_id in read_questions(split):
        per_image[image_id] = per_image.get(image_id, 0) + 1
      counts[split] = [per_image[i] for i in sorted(per_image)]
    features = tfds.features
    return tfds.core.DatasetInfo(
        builder=self,
        disable_shuffling=True,  # record i is example i, as generated
        description=__doc__,
        features=features.FeaturesDict({
            "id": features.Text(),
            "image_id": features.Scalar(dtype=np.int32),
            "image": features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                     dtype=np.uint8, encoding="bytes"),
            "question": features.Tensor(shape=(None,), dtype=np.str_),
            "answer": features.Tensor(shape=(None,), dtype=np.int32),
            "qtype": features.Tensor(shape=(None,), dtype=np.int32),
            "caption": features.Tensor(shape=(None,), dtype=np.str_),
        }),
        metadata=tfds.core.MetadataDict(
            answers=answers(), qtypes=list(QTYPES), question_counts=counts,
            source="easy-vqa==1.0 package files", image_size=IMAGE_SIZE),
        homepage="https://github.com/vzhou842/easy-VQA",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the package ships the files
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split: str):
    vocab = {a: i for i, a in enumerate(answers())}
    by_image = {}
    for question, answer, image_id in read_questions(split):
      by_image.setdefault(image_id, []).append((question, answer))
    image_dir = os.path.join(package_data_dir(), split, "images")
    for image_id in sorted(by_image):
      qa = by_image[image_id]
      image = read_png(os.path.join(image_dir, f"{image_id}.png"))
      if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"easy_vqa: image {split}/{image_id} has shape "
                         f"{image.shape}, expected {(IMAGE_SIZE, IMAGE_SIZE, 3)}.")
      key = f"{split}_{image_id:05d}"
      yield key, {
          "id": key,
          "image_id": image_id,
          "image": image,
          "question": np.array([q for q, _ in qa], dtype=object),
          "answer": np.array([vocab[a] for _, a in qa], np.int32),
          "qtype": np.array([qtype_of(a) for _, a in qa], np.int32),
          "caption": np.array(make_captions(**infer_attributes(qa)), dtype=object),
      }
