"""TFDS catalog datasets with an image and a text field (coco_captions, ...).

`to_record` turns one decoded TFDS example into mmtx's record schema
({'id', 'image' uint8 [S, S, 3], 'caption' str [C]}, and 'label' int32 [1],
the class id zero-shot evaluation reads, when `Fields.label` names one) that
the views read,
so any such dataset serves captioning and contrastive pretraining. Which
features hold the image, the text(s) and the id is set by `Fields`; known
datasets are in `CATALOG_FIELDS`.

Reading a catalog dataset needs it built in array_record format
(`tfds build NAME --file_format=array_record`, which itself needs TensorFlow
for most catalog builders), and decoding its `Image` feature without
TensorFlow needs OpenCV or Pillow (TFDS's NumPy path).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Fields:
  """Feature names: `image` uint8 [H, W, C]; `text` a string or a list of
  strings; `id` optional (the record index is used when None); `label`
  optional, an integer class id feature (`--config.zero_shot.label=label.0`
  then classifies by it). A name with
  '/' is looked up as a key first, then as a path into nested dicts
  ('captions/text' -> example['captions']['text'])."""
  image: str = "image"
  text: str = "text"
  id: str | None = None
  label: str | None = None


CATALOG_FIELDS = {
    "coco_captions": Fields(image="image", text="captions/text", id="image/id"),
}


def get_field(example: Mapping[str, Any], name: str) -> Any:
  """`example[name]`, or the nested lookup along the '/'-separated path."""
  if name in example:
    return example[name]
  node = example
  for part in name.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      raise KeyError(name)
    node = node[part]
  return node


def _as_str(x) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """float32 `[height, width, C]` from `[H, W, C]`: bilinear with half-pixel
  centers (no antialiasing), clamped at the borders."""
  src_h, src_w = image.shape[:2]
  img = image.astype(np.float32)

  def axis(out, src):
    pos = np.clip((np.arange(out) + 0.5) * src / out - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)

  y0, y1, wy = axis(height, src_h)
  x0, x1, wx = axis(width, src_w)
  rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
  return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 `[size, size, 3]`: shorter side resized to `size`, center crop."""
  h, w = image.shape[:2]
  scale = size / min(h, w)
  new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
  if (new_h, new_w) != (h, w):
    image = np.clip(np.round(resize_bilinear(image, new_h, new_w)), 0, 255)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top:top + size, left:left + size].astype(np.uint8)


def to_record(example: Mapping[str, Any], fields: Fields, image_size: int,
              index: int) -> dict:
  """One TFDS example -> {'id': str, 'image': uint8 [S,S,3], 'caption': str [C]}
  (+ 'label' int32 [1] with `fields.label`).

  Gray (`[H, W]`, `[H, W, 1]`) images are repeated to RGB, an alpha channel is
  dropped. Raises ValueError naming the record for a missing field, a
  non-image, or an empty text.
  """
  rid = str(index)
  try:
    if fields.id is not None:
      rid = _as_str(get_field(example, fields.id))
    image = np.asarray(get_field(example, fields.image))
    text = get_field(example, fields.text)
    label = None if fields.label is None else get_field(example, fields.label)
  except KeyError as e:
    raise ValueError(f"catalog record {rid}: no feature {e.args[0]!r}; the "
                     f"example has {sorted(example)}. Set `fields=Fields(...)` "
                     "to the dataset's feature names.") from None
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.dtype != np.uint8:
    raise ValueError(f"catalog record {rid}: image has shape {image.shape} "
                     f"and dtype {image.dtype}; expected uint8 [H, W, 1|3|4].")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = resize_square(image[..., :3], image_size)
  texts = [text] if isinstance(text, (str, bytes, np.str_, np.bytes_)) else list(text)
  texts = [_as_str(t) for t in np.asarray(texts, dtype=object).reshape(-1)]
  if not texts or not any(t.strip() for t in texts):
    raise ValueError(f"catalog record {rid}: the text feature "
                     f"{fields.text!r} is empty.")
  record = {"id": rid, "image": image, "caption": np.array(texts, dtype=object)}
  if label is not None:
    if np.ndim(label) or not np.issubdtype(np.asarray(label).dtype,
                                           np.integer) or int(label) < 0:
      raise ValueError(f"catalog record {rid}: the label feature "
                       f"{fields.label!r} is {label!r}; expected a class id, "
                       "an integer >= 0.")
    record["label"] = np.array([label], np.int32)
  return record
