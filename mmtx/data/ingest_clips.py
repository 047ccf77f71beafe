"""Audio-visual clips in `python -m mmtx.data ingest` (formats av_csv,
av_tsv, av_jsonl, av_webdataset): their source readers and their records.

A reader (`open_source`) gives items {'key': str, 'video': path | bytes,
'audio': path | bytes | None (the video's own audio track)} and whichever
of 'labels': [str | bytes], 'captions': [...], 'questions': [{'question',
'answers': [answer], ...}] the source has (CSV / JSONL columns 'label'
(--label_column), 'caption' (--text_column), 'question' + 'answer';
webdataset KEY.cls / KEY.txt / a KEY.json with those keys), or {'key',
'error': (reason, detail)}. Consecutive rows naming the same video and
audio make one clip with all their labels, captions and questions
(AudioSet-style files have one row per label). `clip_record` decodes a clip
(clips.py) into the record AV-Scenes has, with 'label' int32 [K] (ids into
the class names `clip_labels` finds) and / or 'caption' and the VQA fields.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from mmtx.data import clips as clips_lib
from mmtx.data import ingest_sources as sources
from mmtx.data import ingest_texts as texts_lib

FORMATS = ("av_webdataset", "av_csv", "av_tsv", "av_jsonl")
VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")
AUDIO_EXTS = ("wav", "flac", "ogg", "mp3")


@dataclasses.dataclass(frozen=True)
class Clips:
  """What an audio-visual ingest writes: the clip shape, the label fields
  the source has ('labels', 'captions', 'questions') and the class names."""
  spec: clips_lib.ClipSpec
  fields: tuple[str, ...]
  labels: tuple[str, ...] = ()
  multi_label: bool = False


# ---------------------------------------------------------------- readers
def _clip_fields(row: dict, opts):
  """A row's (or webdataset .json's) 'labels' / 'captions' / 'questions'
  entries, for the columns it has; None values are kept for the caller to
  count as a missing column."""
  out = {}
  if opts.label_column in row:
    v = row[opts.label_column]
    out["labels"] = None if v is None else sources.as_list(v)
  if opts.text_column in row:
    v = row[opts.text_column]
    out["captions"] = None if v is None else sources.as_list(v)
  if "question" in row or "answer" in row:
    q, a = row.get("question"), row.get("answer")
    out["questions"] = None if q is None or a is None else [
        {"question": q, "answers": [str(a)], "answer_type": "all",
         "question_type": "all"}]
  return out


def _clip_item(key, row, root, opts):
  video = row.get(opts.video_column)
  audio = row.get(opts.audio_column) or None
  fields = _clip_fields(row, opts)
  if not video or any(v is None for v in fields.values()):
    return {"key": key, "error": ("missing column", str(row)[:80])}
  return {"key": key, "video": os.path.join(root, str(video)),
          "audio": os.path.join(root, str(audio)) if audio else None,
          **fields}


def _check_clip_columns(names, opts, path):
  if opts.video_column not in names:
    raise sources.SourceError(
        f"ingest: {path} has no video column {opts.video_column!r} (it has "
        f"{list(names)[:10]}); name it with --video_column. Clip records "
        "hold video and audio: an audio file alone is not a clip.")
  if not {opts.label_column, opts.text_column, "question"} & set(names):
    raise sources.SourceError(
        f"ingest: {path} has no label column {opts.label_column!r}, caption "
        f"column {opts.text_column!r} or 'question' + 'answer' columns (it "
        f"has {list(names)[:10]}); name them with --label_column / "
        "--text_column.")


def _same_clip(item):
  return item["video"], item["audio"]


def _av_csv(path, opts, sep):
  [path] = sources.source_files(path, "file")
  with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
    header = next(csv.reader(f, delimiter=sep), [])
  _check_clip_columns(header, opts, path)
  root = sources.file_dir(path, opts)

  def rows():
    with open(path, newline="", encoding="utf-8",
              errors="surrogateescape") as f:
      for n, row in enumerate(csv.DictReader(f, delimiter=sep), start=2):
        yield _clip_item(f"line {n}", row, root, opts)
  return lambda: sources.group_rows(rows(), _same_clip)


def _av_jsonl(path, opts):
  [path] = sources.source_files(path, "file")
  first = sources.first_json_row(path)
  _check_clip_columns(first if isinstance(first, dict) else {}, opts, path)
  root = sources.file_dir(path, opts)

  def rows():
    for key, row, error in sources.json_rows(path):
      if error:
        yield {"key": key, "error": error}
      elif not isinstance(row, dict):
        yield {"key": key, "error": ("malformed row", str(row)[:80])}
      else:
        yield _clip_item(key, row, root, opts)
  return lambda: sources.group_rows(rows(), _same_clip)


def _av_webdataset(path, opts):
  tars = sources.source_files(path, "webdataset shard")

  def group_item(key, files):
    video = next((files[e] for e in VIDEO_EXTS if e in files), None)
    if video is None:
      return {"key": key, "error": ("no video", f"only {sorted(files)}")}
    meta = {}
    if "json" in files:
      try:
        meta = json.loads(files["json"])
      except ValueError as e:
        return {"key": key, "error": ("malformed json", str(e)[:80])}
      if not isinstance(meta, dict):
        return {"key": key, "error": ("malformed json", str(meta)[:80])}
    if "cls" in files:
      meta.setdefault(opts.label_column, files["cls"])
    if "txt" in files:
      meta.setdefault(opts.text_column, files["txt"])
    fields = _clip_fields(meta, opts)
    if not fields or any(v is None for v in fields.values()):
      return {"key": key, "error": ("no label", "no .cls / .txt and no "
                                    "label, caption or question in .json")}
    audio = next((files[e] for e in AUDIO_EXTS if e in files), None)
    return {"key": key, "video": video, "audio": audio, **fields}

  def items():
    for key, files in sources.tar_groups(tars):
      yield files if key is None else group_item(key, files)
  return items


def open_source(fmt: str, path: str, opts):
  """Checks `path` as a clip source of format `fmt`; returns its item
  stream's factory."""
  if fmt == "av_webdataset":
    return _av_webdataset(path, opts)
  if fmt in ("av_csv", "av_tsv"):
    sep = opts.sep or ("\t" if fmt == "av_tsv" or path.endswith(".tsv")
                       else ",")
    return _av_csv(path, opts, sep)
  if fmt == "av_jsonl":
    return _av_jsonl(path, opts)
  raise sources.SourceError(f"ingest: unknown clip format {fmt!r}; expected "
                            f"one of {FORMATS}.")


# ---------------------------------------------------------------- records
def clip_labels(stream, spec) -> Clips:
  """The label fields of a clip source (those of its first good item) and,
  when it has labels, the class names (every label of the first stream,
  the training split, sorted) and whether any clip there has several."""
  fields, names, multi = None, set(), False
  for item in stream():
    if "error" in item:
      continue
    if fields is None:
      fields = tuple(k for k in ("labels", "captions", "questions")
                     if k in item)
    if "labels" not in fields:
      break
    values = {str(v) if isinstance(v, (int, float)) else v
              for v in item.get("labels") or ()}
    good = {t for t, _ in map(texts_lib.text, values) if t is not None}
    names |= good
    multi |= len(good) > 1
  if fields is None:
    raise sources.SourceError("ingest: the source has no usable row (every "
                              "row is malformed or misses a column).")
  if "labels" in fields and not names:
    raise sources.SourceError("ingest: the training split has no labels to "
                              "build the class list from.")
  return Clips(spec, fields, tuple(sorted(names)), multi)


def label_ids(values, names):
  """(sorted distinct class ids or None when none is left, [reason of each
  label dropped]) of a clip's labels."""
  index = {n: i for i, n in enumerate(names)}
  ids, dropped = set(), []
  for v in values:
    text, why = texts_lib.text(str(v) if isinstance(v, (int, float)) else v)
    if text is None:
      dropped.append(why)
    elif text not in index:
      dropped.append("label not in vocabulary")
    else:
      ids.add(index[text])
  return (np.asarray(sorted(ids), np.int32) if ids else None), dropped


def clip_record(item, clips: Clips, answers, train: bool):
  """One clip item -> (record fields or None, its texts, its question count,
  [reason, or (reason, detail), of each thing dropped]); `answers` is the
  VQA `ingest_texts.Labels` when the source has questions. The labels and
  texts are checked before the files are decoded."""
  rec, texts, questions, dropped = {}, (), 0, []
  if "labels" in clips.fields:
    ids, why = label_ids(item.get("labels") or (), clips.labels)
    dropped += why
    if ids is None:
      return None, (), 0, dropped or ["no label"]
    rec["label"] = ids
  if "captions" in clips.fields:
    good = [texts_lib.text(c) for c in item.get("captions") or ()]
    caps = tuple(t for t, _ in good if t is not None)
    dropped += [w for _, w in good if w]
    if not caps:
      return None, (), 0, dropped or ["no text"]
    rec["caption"] = np.asarray(caps, dtype=object)
    texts += caps
  if "questions" in clips.fields:
    fields, why = texts_lib.vqa_fields(item.get("questions") or (), answers,
                                       train)
    dropped += why
    if fields is None:
      return None, (), 0, dropped or ["no text"]
    rec.update(fields)
    texts += tuple(fields["question"])
    questions = len(fields["question"])
  try:
    rec["video"], rec["audio"] = clips_lib.decode_clip(
        clips.spec, video=item["video"], audio=item.get("audio"))
  except clips_lib.ClipError as e:
    return None, (), 0, [(e.reason, e.detail)]
  return rec, texts, questions, dropped
