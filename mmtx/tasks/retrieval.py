"""Image-text evaluation shared by the contrastive, caption and pretrain
tasks: run a model over every (image, reference caption) pair of an eval
split, then image <-> text retrieval recall@K with all captions of each image
(a hit for image -> text when any of its captions ranks in the top K).

A split's images come from its eval iterator (one example per image, view
'contrastive' or 'caption'); their captions from `info.record(index)`, so a
dataset with 5 captions per image gives 5 texts per image, as in the COCO /
Flickr30k retrieval protocol (Karpathy & Fei-Fei 2015).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmtx import data as data_lib
from mmtx import metrics as metrics_lib
from mmtx import sharding
from mmtx.data import views


@dataclasses.dataclass
class Pairs:
  """What `run_pairs` gathered, valid rows only.

  outputs: name -> `[n_pairs, ...]` numpy arrays from the model function;
  pair_image `[n_pairs]` int: the image (0..n_images-1) of each pair;
  indices `[n_images]` int: each image's record index in the split;
  references: per image, all its captions (str); objects: per image, the
  record's 'objects' dict or None when the dataset has none.
  """
  outputs: dict[str, np.ndarray]
  pair_image: np.ndarray
  indices: np.ndarray
  references: list[list[str]]
  objects: list[Any]

  @property
  def first_pair(self) -> np.ndarray:
    """`[n_images]` the row of each image's first pair (caption 0)."""
    first = np.full(len(self.indices), -1, np.int64)
    for row in range(len(self.pair_image) - 1, -1, -1):
      first[self.pair_image[row]] = row
    return first


def pair_chunks(images: np.ndarray, captions: list[list[str]], tokenizer,
                max_len: int, chunk: int, first_image: int = 0):
  """Yields model batches of size `chunk` covering every (image, caption).

  images `[b, H, W, 3]` (the valid images of one eval batch), captions[i] the
  captions of image i. Each batch: 'image' `[chunk, H, W, 3]`, 'text'
  `[chunk, max_len]` int32, 'pair_image' `[chunk]` int32 (first_image + i,
  -1 on padding rows), 'caption_set' `[chunk, CAPTION_SET]` int32 (the
  image's caption fingerprints, this row's first: `data.views.caption_set`;
  -1 on padding rows), 'valid' `[chunk]` bool. Pairs go caption-slot-major
  (caption 0 of every image, then caption 1, ...), so neighbouring rows show
  different images (the pretrain task's ITM negatives rely on it).
  """
  order = [(i, c) for c in range(max((len(x) for x in captions), default=0))
           for i in range(len(captions)) if c < len(captions[i])]
  flat, _ = tokenizer.encode_batch([c for caps in captions for c in caps],
                                   max_len)
  starts = np.cumsum([0] + [len(caps) for caps in captions])
  fps = views.fingerprint(flat)
  size = views.CAPTION_SET
  for start in range(0, len(order), chunk):
    part = order[start:start + chunk]
    pad = chunk - len(part)
    rows = np.array([i for i, _ in part] + [0] * pad, np.int64)
    text = np.zeros((chunk, max_len), np.int32)
    sets = np.full((chunk, size), -1, np.int32)
    for r, (i, c) in enumerate(part):
      text[r] = flat[starts[i] + c]
      sets[r] = views.caption_set(fps[starts[i]:starts[i + 1]], c, size)
    yield {"image": images[rows], "text": text,
           "pair_image": np.array([first_image + i for i, _ in part]
                                  + [-1] * pad, np.int32),
           "caption_set": sets, "valid": np.arange(chunk) < len(part)}


def gather_rows(batch: dict, keys) -> dict[str, np.ndarray]:
  """`batch[k]` for k in keys as numpy, with several processes the global
  batch's rows: every process's rows, concatenated in process order (the
  order `sharding.put_batch` gives them)."""
  if jax.process_count() == 1:
    return {k: np.asarray(batch[k]) for k in keys}
  return {k: np.asarray(multihost_utils.process_allgather(
      np.asarray(batch[k]), tiled=True)) for k in keys}


def local_rows(chunk: dict) -> dict:
  """This process's share of a batch that every process holds whole, so
  that `sharding.put_batch` puts the whole batch back together."""
  n, i = jax.process_count(), jax.process_index()
  if n == 1:
    return chunk
  return {k: v[i * len(v) // n:(i + 1) * len(v) // n]
          for k, v in chunk.items()}


def run_pairs(step: Callable, params, config, mesh, it, info) -> Pairs:
  """Runs `step` over every pair of the split behind `it`: `fn(params,
  batch) -> dict of [chunk, ...] arrays` jitted with its outputs replicated
  (`Task.jit(fn, mesh)`); see `pair_chunks` for the batch keys. chunk =
  config.data.eval_batch_size.

  Each eval batch is gathered from all processes and taken in record order
  (on one process it is already), so every process builds the same chunks,
  feeds its share of each, and reads back every pair's outputs: the pairs,
  their chunks and the outputs do not depend on the process count."""
  outputs: dict[str, list] = {}
  pair_image, indices, references, objects = [], [], [], []
  for batch in it:
    batch = gather_rows(batch, ("image", "index", "valid"))
    valid = batch["valid"].astype(bool)
    order = np.argsort(batch["index"][valid], kind="stable")
    idx = batch["index"][valid][order]
    records = [info.record(int(i)) for i in idx]
    captions = [[data_lib.as_text(c) for c in r["caption"]] for r in records]
    for chunk in pair_chunks(batch["image"][valid][order], captions,
                             info.tokenizer, config.data.max_len,
                             config.data.eval_batch_size, len(indices)):
      out = jax.device_get(step(params, sharding.put_batch(local_rows(chunk),
                                                           mesh)))
      keep = chunk["valid"]
      for k, v in out.items():
        outputs.setdefault(k, []).append(np.asarray(v)[keep])
      pair_image.append(chunk["pair_image"][keep])
    indices.extend(int(i) for i in idx)
    references.extend(captions)
    objects.extend(r.get("objects") for r in records)
  if not indices:
    raise ValueError(f"{info.name} {info.split}: the eval split has no "
                     "images.")
  return Pairs({k: np.concatenate(v) for k, v in outputs.items()},
               np.concatenate(pair_image), np.asarray(indices), references,
               objects)


def text_outputs(step: Callable, params, config, mesh, info,
                 texts: list[str]) -> dict[str, np.ndarray]:
  """`step`'s outputs `[len(texts), ...]` for texts alone (e.g. zero-shot
  prompts), each paired with a blank image: for models whose text features
  do not see the image (DualEncoder, the unimodal towers)."""
  blank = np.zeros((1,) + tuple(info.image_shape), np.float32)
  outputs: dict[str, list] = {}
  for chunk in pair_chunks(blank, [list(texts)], info.tokenizer,
                           config.data.max_len, config.data.eval_batch_size):
    out = jax.device_get(step(params, sharding.put_batch(local_rows(chunk),
                                                         mesh)))
    for k, v in out.items():
      outputs.setdefault(k, []).append(np.asarray(v)[chunk["valid"]])
  return {k: np.concatenate(v) for k, v in outputs.items()}


def recall(pairs: Pairs, ks=(1, 5, 10)) -> dict[str, float]:
  """Recall@K both ways from outputs 'img_emb' and 'txt_emb' `[n_pairs, d]`
  (an image's embedding is taken from its first pair)."""
  img_emb = pairs.outputs["img_emb"][pairs.first_pair]
  sim = img_emb.astype(np.float64) @ pairs.outputs["txt_emb"].astype(
      np.float64).T
  return metrics_lib.retrieval_recall(sim, pairs.pair_image, ks)


def recall_rows(values: dict[str, float], prefix: str = "") -> list[tuple]:
  """Table rows (direction, R@1, R@5, R@10) from `recall`'s dict."""
  rows = []
  for name, key in (("image -> text", "i2t"), ("text -> image", "t2i")):
    rows.append((name, *(f"{100 * values[f'{prefix}{key}_r{k}']:.2f}"
                         for k in (1, 5, 10))))
  return rows
