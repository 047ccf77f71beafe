"""Views: how one record becomes one training/eval example (a task names
the view its batches come from: `Task.view`).

Record schema (what mmtx's builders and `catalog.to_record` produce):
  'id' str; 'image' uint8 [H, W, 3], or the encoded bytes (JPEG / PNG /
  WebP) in datasets `python -m mmtx.data ingest` writes; 'caption' str [C];
  for VQA datasets 'question' str [Q], 'answer' int32 [Q] (index into the
  dataset's answer list), 'qtype' int32 [Q], optionally 'qsubtype' int32 [Q]
  and 'question_encoding' uint8 [Q, E]; for dialogue datasets
  'dialogue_question' str [D, T] and 'dialogue_answer' int32 [D, T];
  for classification datasets 'label' int32 [K], the ids (into the dataset's
  'labels' list) of the record's K >= 1 classes (multi-label when K > 1).
  Ingested VQA datasets also have 'answer_ids' int32 [Q, 10], the human
  answers' ids (-1: not in the vocabulary, -2: none), and 'answer' -1 for a
  question none of whose answers is in the vocabulary. Audio-visual clips
  (av_scenes) have 'video' uint8 [T, H, W, 3] and 'audio' float32 [samples]
  in place of 'image'.

Example keys (the pipeline stacks them into batches with a leading [B]):
  every view: 'image' float32 [H, W, 3] in [-1, 1] (or normalised with
    `ViewSpec.normalize`; encoded images are decoded and cropped as
    `ViewSpec.image_policy` says, images.py); 'index' int32, the
    record's index in its split; 'valid' bool, False for padding examples.
    Audio-visual clips: 'video' float32 [T, H, W, 3] in [-1, 1] and 'audio'
    float32 [samples] instead of 'image'.
  'vqa' (one example per question): 'question' int32 [L] (0 = pad),
    'question_mask' bool [L], 'answer' int32, 'qtype' int32, 'qsubtype' int32
    (0 when the dataset has none), and 'question_encoding' float32 [E] when
    the dataset has it (sort_of_clevr), 'answer_ids' int32 [10] when the
    dataset has it (ingested VQA).
  'vqa' with `questions_per_image` Q > 0 (one example per image, Q of its
    questions): the same question fields with a leading [Q] axis
    ('question' int32 [Q, L], 'answer' int32 [Q], ...) and 'question_valid'
    bool [Q] (False for padding when the image has fewer than Q questions).
    Training draws Q of the image's questions at random per example and
    epoch (`random_text`); otherwise they are its first Q, in order.
  'caption' and 'contrastive' (one example per image): 'text' int32 [L],
    'text_mask' bool [L]; the caption is drawn at random per example and epoch
    when `random_text`, else it is the record's first caption.
    'contrastive' also: 'caption_set' int32 [CAPTION_SET]: `fingerprint`s
    of the record's captions as tokenized, the drawn one first, -1 padding
    (what the image's captions say, for telling a true ITM negative from
    another image's caption that is word for word one of this image's).
  'dialogue' (one example per turn): 'history' int32 [L]: bos q1 sep a1 sep
    ... sep q_t eos, the oldest tokens cut first; 'history_mask' bool [L];
    'answer' int32 (answer to q_t); 'turn' int32 (t, from 0).
  'dialogue' with `questions_per_image` Q > 0 (one example per image, Q of
    its turns, each with its own history): the same fields with a leading
    [Q] axis and 'question_valid' bool [Q], drawn like the VQA groups.
  'label' (one example per record): 'labels' float32 [num_labels], 1 for
    each of the record's classes and 0 elsewhere.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

from mmtx.data import images as images_lib
from mmtx.data import tokenizers as tok_lib

VIEWS = ("vqa", "caption", "contrastive", "dialogue", "label")
REQUIRED_FIELDS = {"vqa": ("question", "answer", "qtype"),
                   "caption": ("caption",), "contrastive": ("caption",),
                   "dialogue": ("dialogue_question", "dialogue_answer"),
                   "label": ("label",)}


# Captions fingerprinted per 'contrastive' example; a record with more keeps
# the drawn one and the first 15 others (COCO has 5-7, Flickr30k 5).
CAPTION_SET = 16


def fingerprint(ids: np.ndarray) -> np.ndarray:
  """`[..., L]` token ids (0 = pad) -> `[...]` int32 in [0, 2**31): a CRC-32
  of each row's non-pad tokens, so equal rows (the same words as the model
  sees them) get equal values and different ones collide with chance 2**-31.
  """
  ids = np.asarray(ids)
  flat = ids.reshape(-1, ids.shape[-1])
  out = [zlib.crc32(row[row != 0].astype("<i4").tobytes()) & 0x7FFFFFFF
         for row in flat]
  return np.asarray(out, np.int32).reshape(ids.shape[:-1])


def caption_set(fingerprints, first: int = 0,
                size: int = CAPTION_SET) -> np.ndarray:
  """`[size]` int32: the `fingerprint`s of one image's captions,
  fingerprints[first] first, then the others in order; -1 pads."""
  fingerprints = np.asarray(fingerprints, np.int32)
  order = np.concatenate([[first], np.delete(np.arange(len(fingerprints)),
                                             first)])[:size]
  out = np.full(size, -1, np.int32)
  out[:len(order)] = fingerprints[order]
  return out


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """What a view needs besides the record."""
  view: str
  tokenizer: Any
  max_len: int
  image_shape: tuple[int, int, int]
  answers: tuple[str, ...] | None = None
  augment: bool = False
  random_text: bool = False
  dataset: str = "dataset"        # for error messages
  rebuild_hint: str = ""          # how to rebuild, for error messages
  questions_per_image: int = 0    # 'vqa'/'dialogue': 0 = one per question
  normalize: str = "minus_one_one"  # images.NORMALIZATIONS key
  image_policy: Any = None        # images.Policy for encoded images
  labels: tuple[str, ...] | None = None  # 'label': the class names

  def __post_init__(self):
    if self.view not in VIEWS:
      raise ValueError(f"unknown view {self.view!r}; expected one of {VIEWS}.")
    if self.view in ("vqa", "dialogue") and not self.answers:
      raise ValueError(f"view {self.view!r} needs a dataset with an answer "
                       f"vocabulary; {self.dataset} has none.")
    if self.view == "label" and not self.labels:
      raise ValueError(f"view 'label' needs a dataset with a class list "
                       f"(metadata 'labels'); {self.dataset} has none.")
    if self.questions_per_image and (self.view not in ("vqa", "dialogue")
                                     or self.questions_per_image < 0):
      raise ValueError(f"questions_per_image={self.questions_per_image} needs "
                       f"view 'vqa' or 'dialogue' and a value >= 0 (view is "
                       f"{self.view!r}).")


def as_text(x) -> str:
  """A record's bytes / numpy bytes / str field as str (UTF-8)."""
  return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def record_id(record) -> str:
  return as_text(record.get("id", "?"))


def units_per_record(view: str, record, questions_per_image: int = 0) -> int:
  """How many examples of `view` one record holds."""
  if view == "vqa" and not questions_per_image:
    return len(record["question"])
  if view == "dialogue" and not questions_per_image:
    return int(np.asarray(record["dialogue_answer"]).size)
  return 1


def normalize_image(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 in [-1, 1]: x / 127.5 - 1."""
  return image.astype(np.float32) / 127.5 - 1.0


def augment_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """uint8 [H, W, 3] -> float32: `normalize_image` then a light photometric
  jitter, the same for all channels (colors, shapes and positions, hence
  every answer, are unchanged): x * U(0.9, 1.1) + U(-0.1, 0.1), clipped to
  [-1, 1]."""
  contrast = rng.uniform(0.9, 1.1)
  brightness = rng.uniform(-0.1, 0.1)
  out = image.astype(np.float32) * np.float32(contrast / 127.5)
  out += np.float32(brightness - contrast)
  return np.clip(out, -1.0, 1.0, out=out)


def _fail(spec: ViewSpec, record, what: str):
  hint = f" Rebuild it: {spec.rebuild_hint}." if spec.rebuild_hint else ""
  raise ValueError(f"{spec.dataset} record {record_id(record)!r}: {what}; the "
                   f"record is corrupt or from another version of the "
                   f"dataset.{hint}")


def _answer(spec: ViewSpec, record, value) -> np.int32:
  value = int(value)
  if value == -1 and "answer_ids" in record:   # no answer in the vocabulary
    return np.int32(value)
  if not 0 <= value < len(spec.answers):
    _fail(spec, record, f"answer id {value} is outside the answer vocabulary "
          f"of {len(spec.answers)} answers")
  return np.int32(value)


def _pick(spec: ViewSpec, n: int, rng) -> np.ndarray:
  """Which of a record's n questions (turns) go into its group of Q: Q
  distinct ones at random when training (`random_text`), else the first."""
  q = spec.questions_per_image
  if spec.random_text and rng is not None:
    return rng.permutation(n)[:q]
  return np.arange(min(n, q))


def _question_group(spec: ViewSpec, record, rng) -> dict:
  """Q = spec.questions_per_image of the record's questions, stacked, padded
  with 'question_valid' False rows when it has fewer."""
  q = spec.questions_per_image
  pick = _pick(spec, len(record["question"]), rng)
  k = len(pick)
  ids = np.zeros((q, spec.max_len), np.int32)
  mask = np.zeros((q, spec.max_len), bool)
  if k:
    ids[:k], mask[:k] = spec.tokenizer.encode_batch(
        [as_text(record["question"][i]) for i in pick], spec.max_len)
  out = {"question": ids, "question_mask": mask,
         "question_valid": np.arange(q) < k}
  for field in ("answer", "qtype", "qsubtype"):
    v = np.zeros(q, np.int32)
    if field in record:
      v[:k] = np.asarray(record[field])[pick]
    out[field] = v
  for a in out["answer"][:k]:
    _answer(spec, record, a)  # range check
  if "answer_ids" in record:
    ids = np.full((q, np.shape(record["answer_ids"])[-1]), -2, np.int32)
    ids[:k] = np.asarray(record["answer_ids"])[pick]
    out["answer_ids"] = ids
  if "question_encoding" in record:
    enc = np.asarray(record["question_encoding"], np.float32)
    e = np.zeros((q, enc.shape[-1]), np.float32)
    e[:k] = enc[pick]
    out["question_encoding"] = e
  return out


def _turn(spec: ViewSpec, record, d: int, t: int) -> dict:
  """Turn t of dialogue d: the history up to q_t, its answer, t."""
  tok = spec.tokenizer
  questions = np.asarray(record["dialogue_question"])
  answers = np.asarray(record["dialogue_answer"])
  seq = []
  for turn in range(t):
    seq += tok.encode(as_text(questions[d, turn])) + [tok_lib.SEP]
    seq += tok.encode(spec.answers[_answer(spec, record, answers[d, turn])])
    seq += [tok_lib.SEP]
  seq += tok.encode(as_text(questions[d, t]))
  ids, mask = tok_lib.pad_sequences([seq], spec.max_len, truncate="left")
  return dict(history=ids[0], history_mask=mask[0],
              answer=_answer(spec, record, answers[d, t]), turn=np.int32(t))


def _turn_group(spec: ViewSpec, record, rng) -> dict:
  """Q = spec.questions_per_image of the record's dialogue turns (each with
  its own history), stacked like `_question_group`: 'history' [Q, L],
  'answer' / 'turn' [Q], 'question_valid' [Q] (False rows pad an image with
  fewer than Q turns). Training draws them at random per example and epoch
  (`random_text`); otherwise they are the first Q in (dialogue, turn) order."""
  q = spec.questions_per_image
  turns = np.asarray(record["dialogue_answer"]).shape[1]
  pick = _pick(spec, int(np.asarray(record["dialogue_answer"]).size), rng)
  out = {"history": np.zeros((q, spec.max_len), np.int32),
         "history_mask": np.zeros((q, spec.max_len), bool),
         "answer": np.zeros(q, np.int32), "turn": np.zeros(q, np.int32),
         "question_valid": np.arange(q) < len(pick)}
  for row, unit in enumerate(pick):
    for k, v in _turn(spec, record, *divmod(int(unit), turns)).items():
      out[k][row] = v
  return out


def make_example(spec: ViewSpec, record, index: int, unit: int,
                 rng: np.random.Generator | None) -> dict:
  """Example `unit` of record number `index` (see the module docstring)."""
  # Audio-visual clips carry 'video' (uint8 [T, H, W, 3], spec.image_shape)
  # and 'audio' (float32 [samples]) instead of an image.
  image = record["video"] if "video" in record else record["image"]
  encoded = isinstance(image, (bytes, np.bytes_))
  if not encoded:
    image = np.asarray(image)
  if not encoded and (image.shape != tuple(spec.image_shape)
                      or image.dtype != np.uint8):
    _fail(spec, record, f"{'video' if 'video' in record else 'image'} has "
          f"shape {image.shape} and dtype {image.dtype}, expected uint8 "
          f"{tuple(spec.image_shape)}")
  count = units_per_record(spec.view, record, spec.questions_per_image)
  if not 0 <= unit < count:
    _fail(spec, record, f"it has {count} {spec.view} examples but example "
          f"{unit} was asked for (the dataset's metadata disagrees)")
  ex = {"index": np.int32(index), "valid": np.bool_(True)}
  tok = spec.tokenizer
  if spec.view == "vqa":
    lengths = {f: len(record[f]) for f in ("question", "answer", "qtype")}
    if len(set(lengths.values())) != 1:
      _fail(spec, record, f"its question fields differ in length {lengths}")
    if spec.questions_per_image:
      ex.update(_question_group(spec, record, rng))
    else:
      ids, mask = tok.encode_batch([as_text(record["question"][unit])],
                                   spec.max_len)
      ex.update(question=ids[0], question_mask=mask[0],
                answer=_answer(spec, record, record["answer"][unit]),
                qtype=np.int32(record["qtype"][unit]),
                qsubtype=np.int32(record["qsubtype"][unit]
                                  if "qsubtype" in record else 0))
      if "question_encoding" in record:
        ex["question_encoding"] = np.asarray(
            record["question_encoding"][unit], np.float32)
      if "answer_ids" in record:
        ex["answer_ids"] = np.asarray(record["answer_ids"][unit], np.int32)
  elif spec.view in ("caption", "contrastive"):
    captions = record["caption"]
    if len(captions) == 0:
      _fail(spec, record, "it has no caption")
    pick = 0
    if spec.random_text and rng is not None:
      pick = int(rng.integers(len(captions)))
    if spec.view == "contrastive":   # every caption, for 'caption_set'
      ids, mask = tok.encode_batch([as_text(c) for c in captions],
                                   spec.max_len)
      ex["caption_set"] = caption_set(fingerprint(ids), pick)
      ids, mask = ids[pick:], mask[pick:]
    else:
      ids, mask = tok.encode_batch([as_text(captions[pick])], spec.max_len)
    ex.update(text=ids[0], text_mask=mask[0])
  elif spec.view == "label":
    ids = np.asarray(record["label"]).reshape(-1)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= len(spec.labels):
      _fail(spec, record, f"its label ids {ids.tolist()} are not 1 or more "
            f"ids in [0, {len(spec.labels)})")
    labels = np.zeros(len(spec.labels), np.float32)
    labels[ids] = 1
    ex["labels"] = labels
  elif spec.questions_per_image:  # dialogue, Q turns of the image
    ex.update(_turn_group(spec, record, rng))
  else:  # dialogue, one turn
    turns = np.asarray(record["dialogue_answer"]).shape[1]
    ex.update(_turn(spec, record, *divmod(unit, turns)))
  # Last, so that turning augmentation on does not change the text drawn.
  if "video" in record:
    ex["video"] = normalize_image(image)
    ex["audio"] = np.asarray(record["audio"], np.float32)
  elif encoded:
    ex["image"] = _decoded_image(spec, record, bytes(image), rng)
  elif spec.augment and rng is not None:
    ex["image"] = _renormalize(augment_image(image, rng), spec.normalize)
  elif spec.normalize == "minus_one_one":
    ex["image"] = normalize_image(image)
  else:
    ex["image"] = images_lib.normalize(image, spec.normalize)
  return ex


def _renormalize(image: np.ndarray, name: str) -> np.ndarray:
  """float32 in [-1, 1] (normalize_image's scale) -> normalised by `name`."""
  if name == "minus_one_one":
    return image
  mean, std = (np.asarray(v, np.float32)
               for v in images_lib.NORMALIZATIONS[name])
  return ((image + 1) / 2 - mean) / std


def _record_texts(spec: ViewSpec, record):
  """Every text of the record and the answers its labels name."""
  for field in ("question", "caption", "dialogue_question"):
    if field in record:
      yield from (as_text(t) for t in np.asarray(record[field]).reshape(-1))
  for field in ("answer", "dialogue_answer"):
    if field in record and spec.answers:
      yield from (spec.answers[int(a)] for a in
                  np.asarray(record[field]).reshape(-1) if a >= 0)


def _decoded_image(spec: ViewSpec, record, data: bytes, rng) -> np.ndarray:
  """An encoded image decoded, cropped and normalised by the spec's policy;
  a training view (`augment`) takes the random crop, and the flip only when
  no text of the record says left or right."""
  policy = spec.image_policy or images_lib.Policy(
      size=spec.image_shape[0], normalize=spec.normalize)
  train = spec.augment and rng is not None
  flip_ok = train and policy.hflip and images_lib.flip_safe(
      _record_texts(spec, record))
  try:
    return images_lib.preprocess(data, policy, rng, train=train,
                                 flip_ok=flip_ok)
  except (OSError, ValueError) as e:
    _fail(spec, record, f"its image does not decode ({type(e).__name__}: "
          f"{str(e)[:200]})")
