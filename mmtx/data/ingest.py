"""`python -m mmtx.data ingest FORMAT SRC --name NAME`: a user's image-text
files -> a dataset the pipeline reads as `get_dataset(NAME, ...)` /
`--config.data.name=NAME`.

  python -m mmtx.data ingest csv pairs.csv --name mypairs
  python -m mmtx.data ingest coco /data/coco --name coco \
      --split train=annotations/captions_train2017.json,\
val=annotations/captions_val2017.json

FORMAT: webdataset, csv, tsv, jsonl, coco, vqa, parquet, and for
audio-visual clips av_webdataset, av_csv, av_tsv, av_jsonl
(ingest_sources.py and ingest_clips.py say what each reads). SRC is the
'train' split's source, or, with `--split`, the folder the split sources
are relative to.

  python -m mmtx.data ingest av_csv clips.csv --name myclips \
      --frames 8 --frame_stride 2 --image_size 64 --sample_rate 16000

Clips are decoded here, not in the pipeline (clips.py: frames sampled and
resized, audio resampled and windowed), into the records AV-Scenes has:
'video' uint8 [frames, image_size, image_size, 3], 'audio' float32
[audio_seconds * sample_rate], and 'label' int32 [K] (ids into the
metadata's 'labels': the training split's labels, sorted; 'multi_label'
when a clip has several), 'caption' and / or the VQA fields ('answer_ids'
included) for the columns the source has (ingest_clips.py).

Output: `DATA_DIR/NAME/1.0.0/`, a TFDS folder dataset of array_record
shards with the record schema of views.py, except that 'image' holds the
source's encoded bytes (JPEG / PNG / WebP, re-encoded only when
`--max_side` shrinks it); the pipeline decodes them (images.py). VQA
records also hold 'answer_ids' int32 [Q, 10]: each human answer's index in
the answer vocabulary (-1: not in it, -2: no answer), which the VQA task
turns into the official VQA accuracy. Image-caption records of a source
with a --label_column column (webdataset: KEY.cls or the .json key) also
hold 'label' int32 [K], ids into the metadata's 'labels' as for clips, which
zero-shot evaluation reads (`--config.zero_shot.label=label.0`). A word
vocabulary fitted on the training split is saved beside the shards
(`words.json`).

Items stream through worker processes (`--workers`) in batches, with a
bounded number in flight, so memory does not grow with the dataset; shards
are written in source order, so the dataset does not depend on the worker
count. A row that is wrong (missing or unreadable image, empty or
non-UTF-8 text, missing column) is skipped and counted per reason; the
summary is printed and kept in the metadata ('ingest').
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import multiprocessing
import os
import re
import shutil
import sys
import time

import numpy as np

from mmtx.data import clips as clips_lib
from mmtx.data import ingest_clips
from mmtx.data import ingest_sources as sources
from mmtx.data import ingest_texts as texts_lib
from mmtx.data import tokenizers as tok_lib

VERSION = "1.0.0"
PROBE = 32                  # items checked before any work
SHOWN_PER_REASON = 3        # skipped rows named per reason
FORMATS = sources.FORMATS + ingest_clips.FORMATS
NUM_HUMAN_ANSWERS = texts_lib.NUM_HUMAN_ANSWERS


def dataset_dir(name: str, data_dir: str | None = None) -> str:
  from mmtx.data import build as build_lib  # pylint: disable=g-import-not-at-top
  return os.path.join(data_dir or build_lib.default_data_dir(), name, VERSION)


def is_ingested(name: str, data_dir: str | None = None) -> bool:
  """Whether `ingest` wrote dataset `name` into `data_dir`."""
  return bool(re.fullmatch(r"[a-z][a-z0-9_]*", name)) and os.path.isfile(
      os.path.join(dataset_dir(name, data_dir), "dataset_info.json"))


def open_builder(name: str, data_dir: str | None = None):
  """The TFDS read-only builder of an ingested dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder_from_directory(dataset_dir(name, data_dir))


def rerun_command(metadata, name: str) -> str:
  """The command that writes the dataset again (for error messages)."""
  info = metadata.get("ingest", {})
  splits = ",".join(f"{k}={v}" for k, v in info.get("sources", {}).items())
  return (f"python -m mmtx.data ingest {info.get('format', 'FORMAT')} / "
          f"--split {splits} --name {name} --overwrite")


# ------------------------------------------------------------------ worker
_WORKER = {}


def _init_worker(kind, max_side, labels, clips=None, classes=None):
  _WORKER.update(kind=kind, max_side=max_side, labels=labels, clips=clips,
                 classes=classes,
                 features=None)


def _features(kind, clips=None, classes=None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  f = tfds.features
  feats = {"id": f.Text()}
  if classes:
    feats["label"] = f.Tensor(shape=(None,), dtype=np.int32)
  if kind == "av":
    spec = clips.spec
    feats["video"] = f.Tensor(shape=(spec.frames, spec.size, spec.size, 3),
                              dtype=np.uint8, encoding="bytes")
    feats["audio"] = f.Tensor(shape=(spec.audio_samples,), dtype=np.float32,
                              encoding="bytes")
    if "labels" in clips.fields:
      feats["label"] = f.Tensor(shape=(None,), dtype=np.int32)
  else:
    feats["image"] = f.Tensor(shape=(), dtype=np.object_)
  if kind == "vqa" or kind == "av" and "questions" in clips.fields:
    for k in ("answer", "qtype", "qsubtype"):
      feats[k] = f.Tensor(shape=(None,), dtype=np.int32)
    feats["question"] = f.Tensor(shape=(None,), dtype=np.str_)
    feats["answer_ids"] = f.Tensor(shape=(None, NUM_HUMAN_ANSWERS),
                                   dtype=np.int32)
  if kind == "caption" or kind == "av" and "captions" in clips.fields:
    feats["caption"] = f.Tensor(shape=(None,), dtype=np.str_)
  return f.FeaturesDict(feats)


def _image(item):
  """(bytes, None) or (None, (reason, detail))."""
  from mmtx.data import images  # pylint: disable=g-import-not-at-top
  data = item.get("image")
  if data is None:
    try:
      with open(item["path"], "rb") as f:
        data = f.read()
    except FileNotFoundError:
      return None, ("missing file", item["path"])
    except OSError as e:
      return None, ("unreadable file", f"{item['path']}: {e}")
  try:   # every byte is read; a JPEG's pixels at 1/8 scale, which suffices
    images.open_image(data, draft=(1, 1))
  except Exception as e:  # noqa: BLE001 - Pillow raises many types
    reason = ("truncated image" if "truncat" in str(e).lower()
              else "unreadable image")
    return None, (reason, f"{item.get('path', '')} {type(e).__name__}: "
                  f"{str(e)[:80]}".strip())
  if _WORKER["max_side"]:
    data = images.shrink(data, _WORKER["max_side"])
  return data, None


def _process(batch, train):
  """Items -> [(serialized record or None, texts, question count, [(reason,
  key, detail)])] in order. An item whose image, clip or row is bad is one
  entry under its reason; a bad text (caption, question) or label is one
  entry, and its item is kept while it has a good one left."""
  if _WORKER.get("features") is None:
    _WORKER["features"] = _features(_WORKER["kind"], _WORKER.get("clips"),
                                    _WORKER.get("classes"))
  out = []
  for item in batch:
    key = item["key"]
    if "error" in item:
      out.append((None, (), 0, [(item["error"][0], key, item["error"][1])]))
      continue
    if _WORKER["kind"] == "av":
      fields, texts, n, dropped = ingest_clips.clip_record(
          item, _WORKER["clips"], _WORKER["labels"], train)
      bad = [(d, key, "") if isinstance(d, str) else (d[0], key, d[1])
             for d in dropped]
      if fields is None:
        out.append((None, (), 0, bad))
        continue
      fields["id"] = key
      out.append((_WORKER["features"].serialize_example(fields), texts, n,
                  bad))
      continue
    data, err = _image(item)
    if err:
      out.append((None, (), 0, [(err[0], key, err[1])]))
      continue
    rec = {"id": key, "image": data}
    if _WORKER["kind"] == "vqa":
      fields, dropped = texts_lib.vqa_fields(item["questions"],
                                             _WORKER["labels"], train)
      texts = () if fields is None else tuple(fields["question"])
    else:
      good = [texts_lib.text(c) for c in item["captions"]]
      texts = tuple(t for t, _ in good if t is not None)
      dropped = [w for _, w in good if w]
      fields = {"caption": np.asarray(texts, dtype=object)} if texts else None
    bad = [(why, key, "") for why in dropped]
    if fields is None:
      out.append((None, (), 0, bad or [("no text", key, "")]))
      continue
    if _WORKER.get("classes"):
      ids, why = ingest_clips.label_ids(item.get("labels") or (),
                                        _WORKER["classes"].labels)
      bad += [(w, key, "") for w in why]
      if ids is None:
        out.append((None, (), 0, bad or [("no label", key, "")]))
        continue
      fields["label"] = ids
    rec.update(fields)
    out.append((_WORKER["features"].serialize_example(rec), texts,
                len(texts), bad))
  return out


# ------------------------------------------------------------------ writer
class _ShardWriter:
  """Array_record shards of one split, named as TFDS reads them."""

  def __init__(self, directory, name, split, shard_bytes):
    self.directory, self.name, self.split = directory, name, split
    self.shard_bytes = shard_bytes
    self.lengths, self.files = [], []
    self._writer, self._bytes, self.num_bytes = None, 0, 0

  def write(self, record: bytes):
    from array_record.python import array_record_module as arm  # pylint: disable=g-import-not-at-top
    if self._writer is None:
      path = os.path.join(self.directory, f"{self.name}-{self.split}."
                          f"array_record-{len(self.files):05d}")
      self._writer = arm.ArrayRecordWriter(path, "group_size:1")
      self.files.append(path)
      self.lengths.append(0)
    self._writer.write(record)
    self.lengths[-1] += 1
    self._bytes += len(record)
    self.num_bytes += len(record)
    if self._bytes >= self.shard_bytes:
      self._close()

  def _close(self):
    if self._writer is not None:
      self._writer.close()
      self._writer, self._bytes = None, 0

  def finish(self):
    """Closes the last shard; renames them all '-NNNNN-of-MMMMM'."""
    self._close()
    n = len(self.files)
    for i, path in enumerate(self.files):
      os.rename(path, f"{path}-of-{n:05d}")


# ---------------------------------------------------------------- running
def _batches(items, size):
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _ordered_map(fn, batches, pool, in_flight):
  """fn over batches in the pool, at most `in_flight` at once, in order."""
  if pool is None:
    for b in batches:
      yield fn(b)
    return
  pending = collections.deque()
  for b in batches:
    pending.append(pool.submit(fn, b))
    if len(pending) >= in_flight:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


def _say(verbose, *args):
  if verbose:
    print("mmtx.data ingest:", *args, flush=True)


def ingest(fmt: str, src: str, name: str, *, splits: dict | None = None,
           data_dir: str | None = None, workers: int | None = None,
           max_side: int = 0, image_size: int = 224, top_k: int = 3129,
           answers_file: str | None = None, image_column: str = "",
           text_column: str = "", sep: str = "", images: str = "",
           image_pattern: str = "COCO_{data_subtype}_{image_id:012d}.jpg",
           overwrite: bool = False, batch: int = 64,
           shard_bytes: int = 256 << 20, verbose: bool = True,
           frames: int = 8, frame_stride: int = 2, sample_rate: int = 16000,
           audio_seconds: float = 1.0, video_column: str = "video",
           audio_column: str = "audio", label_column: str = "label") -> dict:
  """Writes dataset `name`; returns its 'ingest' metadata (records and
  skipped rows per split). See the module docstring; `splits` maps split
  names to sources relative to `src` (default {'train': src}). Clips
  (av_* formats) are `clips.ClipSpec(frames, frame_stride, image_size,
  sample_rate, audio_seconds)`."""
  from mmtx.data import build as build_lib  # pylint: disable=g-import-not-at-top
  from mmtx.data import catalog  # pylint: disable=g-import-not-at-top
  fmt = fmt.lower()
  if fmt not in FORMATS:
    raise sources.SourceError(f"ingest: unknown format {fmt!r}; expected one "
                              f"of {FORMATS}.")
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or (
      name in build_lib.BUILDERS or name in catalog.CATALOG_FIELDS):
    raise sources.SourceError(
        f"ingest: --name {name!r} must be lower-case letters, digits and _ "
        "(starting with a letter) and not a built-in dataset's name.")
  splits = {k: os.path.abspath(os.path.join(src, v))
            for k, v in (splits or {"train": ""}).items()}
  if "train" not in splits and fmt == "vqa" and not answers_file:
    raise sources.SourceError("ingest: a VQA dataset needs a 'train' split "
                              "(its answer vocabulary) or --answers FILE.")
  default_cols = {"jsonl": ("filepath", "title"), "csv": ("filepath", "title"),
                  "tsv": ("filepath", "title"), "parquet": ("image", "text"),
                  "webdataset": ("", "caption")}.get(fmt, ("", "caption"))
  opts = argparse.Namespace(
      image_column=image_column or default_cols[0],
      text_column=text_column or default_cols[1], sep=sep, images=images,
      image_pattern=image_pattern, video_column=video_column,
      audio_column=audio_column, label_column=label_column)
  spec = None
  if fmt.startswith("av_"):
    try:
      spec = clips_lib.ClipSpec(frames, frame_stride, image_size, sample_rate,
                                float(audio_seconds))
    except ValueError as e:
      raise sources.SourceError(f"ingest: {e}") from None
    try:
      import av  # noqa: F401  pylint: disable=g-import-not-at-top
      import soundfile  # noqa: F401  pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise sources.SourceError(
          f"ingest: decoding clips needs soundfile and PyAV ({e}); install "
          "them with `pip install 'mmtx[av]'`.") from None
  # Every source is checked before any work.
  reader = ingest_clips if spec else sources
  streams = {s: reader.open_source(fmt, p, opts) for s, p in splits.items()}
  data_dir = data_dir or build_lib.default_data_dir()
  target = os.path.join(data_dir, name, VERSION)
  if os.path.exists(target) and not overwrite:
    raise sources.SourceError(f"ingest: {target} exists; pass --overwrite to "
                              "replace it.")
  kind = "vqa" if fmt == "vqa" else "av" if spec else "caption"
  order = sorted(streams, key=lambda s: s != "train")   # train first
  labels = clips = None
  if kind == "av":
    clips = ingest_clips.clip_labels(streams[order[0]], spec)
  if kind == "vqa" or clips and "questions" in clips.fields:
    labels = texts_lib.vqa_labels([streams[s]() for s in order], top_k,
                                  answers_file)
  classes = _caption_classes(streams[order[0]]) if kind == "caption" \
      else None
  _init_worker(kind, max_side, labels, clips, classes)
  for split in order:
    _probe(streams[split], splits[split], split == "train")
  tmp = os.path.join(data_dir, name, f".{VERSION}.incomplete-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  if workers is None:
    workers = max(1, (os.cpu_count() or 2) - 1)
  pool = None
  if workers > 0:
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(kind, max_side, labels, clips, classes))
  summary = {"format": fmt, "sources": splits, "max_side": max_side,
             "records": {}, "skipped": {}, "skipped_examples": {}}
  counts = collections.Counter()   # words of the training split's texts
  question_counts = {}
  split_infos = []
  try:
    for split in order:
      writer = _ShardWriter(tmp, name, split, shard_bytes)
      skipped, shown, units = _write_split(
          writer, _batches(streams[split](), batch), pool, 2 * max(workers, 1),
          counts if split == "train" else None, verbose)
      summary["records"][split] = sum(writer.lengths)
      summary["skipped"][split] = dict(skipped)
      summary["skipped_examples"][split] = shown
      if not writer.lengths:
        raise sources.SourceError(
            f"ingest: no usable row in {splits[split]} (skipped: "
            f"{dict(skipped)}); nothing was written.")
      if labels:
        question_counts[split] = units
      split_infos.append(_split_info(tmp, name, split, writer))
    _write_metadata(tmp, kind, split_infos, summary, labels, question_counts,
                    image_size, clips, classes)
    if labels:
      counts.update(w for a in labels.answers for w in tok_lib.split_words(a))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    tok_lib.WordTokenizer(words).save(os.path.join(tmp, "words.json"))
    if os.path.exists(target):
      shutil.rmtree(target)
    os.rename(tmp, target)
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)
    shutil.rmtree(tmp, ignore_errors=True)
  _say(verbose, f"wrote {target}; train with --config.data.name={name}")
  return summary


def _caption_classes(stream):
  """The class list (`ingest_clips.Clips`: sorted names of the training
  split's labels, and whether an image has several) of an image-caption
  source with labels; None when its first good item has none (one item is
  read then) or it has no good item (`_probe` then says why)."""
  for item in stream():
    if "error" not in item:
      if "labels" not in item:
        return None
      break
  else:
    return None
  return ingest_clips.clip_labels(stream, None)


def _probe(stream, path, train):
  """A source whose first PROBE items are all unusable (a wrong --images
  folder or column, say) is wrong as a whole: SourceError before any work."""
  probe = _process([i for _, i in zip(range(PROBE), stream())], train)
  if probe and all(r[0] is None for r in probe):
    reasons = collections.Counter(b[0] for r in probe for b in r[3])
    reason, key, detail = probe[0][3][0]
    raise sources.SourceError(
        f"ingest: none of the first {len(probe)} rows of {path} is usable "
        f"({dict(reasons)}; e.g. {reason}: {detail or key}). Check the path, "
        "the column names and --images.")


def _write_split(writer, batches, pool, in_flight, word_counts, verbose):
  """Processes and writes one split in source order, printing progress;
  returns (skipped count per reason, the first skipped rows per reason,
  texts per record)."""
  skipped, shown, units = collections.Counter(), [], []
  split = writer.split
  start = last = time.time()
  fn = _process_train if split == "train" else _process_eval
  for results in _ordered_map(fn, batches, pool, in_flight):
    for record, texts, n_questions, bads in results:
      for bad in bads:
        skipped[bad[0]] += 1
        if sum(1 for s in shown if s[0] == bad[0]) < SHOWN_PER_REASON:
          shown.append(list(bad))
      if record is None:
        continue
      writer.write(record)
      units.append(n_questions)
      if word_counts is not None:
        for t in texts:
          word_counts.update(tok_lib.split_words(t))
    if time.time() - last > 5:
      last = time.time()
      n = sum(writer.lengths)
      _say(verbose, f"{split}: {n:,} records, {sum(skipped.values()):,} "
           f"skipped, {n / (last - start):,.0f} records/s")
  writer.finish()
  _say(verbose, f"{split}: {sum(writer.lengths):,} records in "
       f"{len(writer.files)} shards ({writer.num_bytes / 2**20:,.1f} MiB, "
       f"{time.time() - start:.1f} s); skipped {sum(skipped.values()):,}"
       + "".join(f"\n  {r}: {c:,}" for r, c in skipped.most_common())
       + "".join(f"\n    e.g. {r}: {k} {d}" for r, k, d in shown))
  return skipped, shown, units


def _process_train(batch):
  return _process(batch, True)


def _process_eval(batch):
  return _process(batch, False)


def _split_info(directory, name, split, writer):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.core.SplitInfo(
      name=split, shard_lengths=list(writer.lengths),
      num_bytes=writer.num_bytes,
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=directory, template=_TEMPLATE, dataset_name=name,
          split=split, filetype_suffix="array_record"))


_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def _write_metadata(directory, kind, split_infos, summary, labels,
                    question_counts, image_size, clips=None, classes=None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  meta = {"ingest": summary, "image_size": image_size,
          "image_encoding": "encoded"}
  if clips:
    spec = clips.spec
    meta.update(image_encoding="decoded", frames=spec.frames,
                frame_stride=spec.frame_stride, sample_rate=spec.sample_rate,
                audio_samples=spec.audio_samples)
    if clips.labels:
      meta.update(labels=list(clips.labels), multi_label=clips.multi_label)
  if classes:
    meta.update(labels=list(classes.labels), multi_label=classes.multi_label)
  if labels:
    meta.update(answers=list(labels.answers), qtypes=list(labels.qtypes),
                qsubtypes=[list(s) for s in labels.qsubtypes],
                question_counts=question_counts)
  tfds.folder_dataset.write_metadata(
      data_dir=directory, features=_features(kind, clips, classes),
      split_infos=split_infos,
      filename_template=_TEMPLATE, check_data=False,
      description=("Ingested by `python -m mmtx.data ingest "
                   f"{summary['format']}`."),
      metadata=tfds.core.MetadataDict(meta))


def _parse_splits(text: str) -> dict:
  out = {}
  for part in (p for p in text.split(",") if p):
    split, eq, path = part.partition("=")
    if not eq or not split or not path:
      raise sources.SourceError(f"ingest: --split {text!r}: expected "
                                "NAME=PATH[,NAME=PATH...].")
    out[split] = path
  return out


def main(argv=None):
  p = argparse.ArgumentParser(
      prog="python -m mmtx.data ingest",
      description="Writes a dataset from your image-text files or "
      "audio-visual clips.")
  p.add_argument("format", help=f"one of {', '.join(FORMATS)}")
  p.add_argument("src", help="the train split's source (a file, a brace "
                 "pattern like pairs-{00000..00099}.tar, a folder), or with "
                 "--split the folder the split sources are relative to")
  p.add_argument("--name", required=True)
  p.add_argument("--split", default="", help="train=PATH,val=PATH,...")
  p.add_argument("--data_dir", default=None,
                 help="default: $MMTX_DATA_DIR or ~/tensorflow_datasets")
  p.add_argument("--workers", type=int, default=None,
                 help="worker processes (default: CPU cores - 1; 0 = none)")
  p.add_argument("--max_side", type=int, default=0,
                 help="re-encode images whose longer side is above this")
  p.add_argument("--image_size", type=int, default=224,
                 help="the input size the pipeline crops to by default; "
                 "clips: the frames' side")
  p.add_argument("--top_k", type=int, default=3129,
                 help="vqa: answers kept (most frequent in train)")
  p.add_argument("--answers", default=None,
                 help="vqa: answer vocabulary file, one per line")
  p.add_argument("--image_column", default="",
                 help="csv/tsv/jsonl: 'filepath'; parquet: 'image'")
  p.add_argument("--text_column", default="",
                 help="csv/tsv/jsonl: 'title'; parquet: 'text'; webdataset: "
                 "the .json key ('caption')")
  p.add_argument("--sep", default="",
                 help="csv separator (default: tab for .tsv, else comma)")
  p.add_argument("--images", default="",
                 help="folder the image paths are relative to (default: the "
                 "file's folder; coco: its image folder)")
  p.add_argument("--image_pattern",
                 default="COCO_{data_subtype}_{image_id:012d}.jpg",
                 help="vqa: image file name")
  p.add_argument("--frames", type=int, default=8,
                 help="clips: frames per clip (the centred ones)")
  p.add_argument("--frame_stride", type=int, default=2,
                 help="clips: take every this many source frames")
  p.add_argument("--sample_rate", type=int, default=16000,
                 help="clips: audio resampled to this rate (Hz)")
  p.add_argument("--audio_seconds", type=float, default=1.0,
                 help="clips: audio kept around the frames' centre")
  p.add_argument("--video_column", default="video",
                 help="av_csv/av_tsv/av_jsonl: the video file's column")
  p.add_argument("--audio_column", default="audio",
                 help="av_csv/av_tsv/av_jsonl: the audio file's column "
                 "(absent or empty: the video's own audio track)")
  p.add_argument("--label_column", default="label",
                 help="clips and image-caption sources: the class "
                 "label's column / .json key (webdataset: also KEY.cls)")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  try:
    ingest(args.format, args.src, args.name, splits=_parse_splits(args.split),
           data_dir=args.data_dir, workers=args.workers,
           max_side=args.max_side, image_size=args.image_size,
           top_k=args.top_k, answers_file=args.answers,
           image_column=args.image_column, text_column=args.text_column,
           sep=args.sep, images=args.images, image_pattern=args.image_pattern,
           overwrite=args.overwrite, frames=args.frames,
           frame_stride=args.frame_stride, sample_rate=args.sample_rate,
           audio_seconds=args.audio_seconds, video_column=args.video_column,
           audio_column=args.audio_column, label_column=args.label_column)
  except sources.SourceError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
