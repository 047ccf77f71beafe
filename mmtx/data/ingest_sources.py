"""Readers of the source formats `python -m mmtx.data ingest` takes.

`open_source(fmt, path, opts)` checks the source as a whole (the files
exist, the columns / keys are there) and raises `SourceError` before any
work; its result is a function that streams the source's items in order:

  {'key': str, 'image': bytes} or {'key': str, 'path': str}  (the image),
  'captions': [str | bytes, ...]      (caption formats), or
  'questions': [{'question', 'answers' [str], 'answer_type',
                 'question_type'}, ...]                      ('vqa'),
  'labels': [class name or id, ...] when the caption source has a
  --label_column column / key (webdataset: also a KEY.cls member),
  or {'key': str, 'error': (reason, detail)} for a row that is wrong.

The audio-visual clip formats' readers (ingest_clips.py) use the helpers
here.

Consecutive rows (CSV / TSV / JSONL / parquet) naming the same image (clip)
make one item with all their captions, questions and labels (COCO-style
files with one row per caption; AudioSet-style files with one row per
label); a COCO or VQA image holds every caption / question of it.
"""
from __future__ import annotations

import collections
import csv
import glob
import json
import os
import re
import tarfile

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FORMATS = ("webdataset", "csv", "tsv", "jsonl", "coco", "vqa", "parquet")


class SourceError(ValueError):
  """A source that is wrong as a whole (nothing is written)."""


def expand_braces(pattern: str) -> list[str]:
  """'a-{000..002}.tar' -> ['a-000.tar', 'a-001.tar', 'a-002.tar'] (zero
  padding kept); '{x,y}' lists alternatives; several braces multiply."""
  m = re.search(r"\{([^{}]*)\}", pattern)
  if not m:
    return [pattern]
  head, tail, body = pattern[:m.start()], pattern[m.end():], m.group(1)
  r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if r:
    lo, hi = r.group(1), r.group(2)
    width = len(lo) if lo.startswith("0") else 0
    parts = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    parts = body.split(",")
  return [p for part in parts for p in expand_braces(head + part + tail)]


def source_files(pattern: str, what: str) -> list[str]:
  """The files of a brace pattern, glob or directory; all must exist."""
  if os.path.isdir(pattern):
    return sorted(os.path.join(pattern, f) for f in os.listdir(pattern)
                  if not f.startswith("."))
  if any(c in pattern for c in "*?["):
    paths = sorted(glob.glob(pattern))
  else:
    paths = expand_braces(pattern)
  missing = [p for p in paths if not os.path.isfile(p)]
  if not paths or missing:
    raise SourceError(f"ingest: no such {what}: {(missing or [pattern])[0]}"
                      + (f" (and {len(missing) - 1} more of {len(paths)})"
                         if len(missing) > 1 else "") + ".")
  return paths


def group_rows(rows, same=lambda item: item["path"]):
  """Merges consecutive items naming the same image or clip (`same`): their
  captions, questions and labels."""
  last = None
  for item in rows:
    if "error" in item:
      yield item
      continue
    if last is not None and same(last) == same(item):
      for k in ("captions", "questions", "labels"):
        if k in item:
          last[k] = last.get(k, []) + item[k]
      continue
    if last is not None:
      yield last
    last = item
  if last is not None:
    yield last


def as_list(value):
  """A caption field: a string or a list of strings."""
  if isinstance(value, (list, tuple)):
    return list(value)
  return [value]


# ------------------------------------------------------------- webdataset
def _webdataset(path, opts):
  tars = source_files(path, "webdataset shard")

  def group_item(key, files):
    image = next((files[e] for e in IMAGE_EXTS if e in files), None)
    if image is None:
      return {"key": key, "error": ("no image", f"only {sorted(files)}")}
    captions, meta = [], None
    if "json" in files:
      try:
        meta = json.loads(files["json"])
      except ValueError as e:
        return {"key": key, "error": ("malformed json", str(e)[:80])}
      for k in (opts.text_column, "captions", "caption", "text"):
        if isinstance(meta, dict) and meta.get(k):
          captions = as_list(meta[k])
          break
    if not captions and "txt" in files:
      captions = [files["txt"]]
    if not captions:
      return {"key": key, "error": ("no caption", "no .txt and no caption "
                                    "in .json")}
    item = {"key": key, "image": image, "captions": captions}
    col = opts.label_column
    if "cls" in files:
      item["labels"] = [files["cls"]]
    elif col and isinstance(meta, dict) and col in meta:
      item["labels"] = as_list(meta[col])
    return item

  def items():
    for key, files in tar_groups(tars):
      yield files if key is None else group_item(key, files)
  return items


def tar_groups(tars):
  """(KEY, {ext: bytes}) per group of consecutive members sharing a KEY
  (the path up to the first '.'; KEY is 'shard:key'), or (None, an error
  item) for a shard that is cut or corrupt."""
  for tar in tars:
    key, files = None, {}
    try:
      with tarfile.open(tar, "r|*") as stream:
        for member in stream:
          if not member.isfile():
            continue
          name = member.name
          base = os.path.basename(name)
          stem, _, ext = base.partition(".")
          k = os.path.join(os.path.dirname(name), stem)
          if k != key and key is not None:
            yield f"{os.path.basename(tar)}:{key}", files
            files = {}
          key = k
          data = stream.extractfile(member).read()
          if len(data) != member.size:
            raise EOFError(f"{name} is cut at {len(data)} of "
                           f"{member.size} bytes")
          files[ext.lower()] = data
        end = stream.offset
      if not _ends_tar(tar, end):
        raise EOFError(f"no end-of-archive marker at byte {end}: the "
                       "file is cut")
    except (tarfile.TarError, OSError, EOFError) as e:
      yield None, {"key": os.path.basename(tar),
                   "error": ("corrupt tar shard", f"{type(e).__name__}: {e}")}
      files = {}   # the last key may have lost files to the cut
    if key is not None and files:
      yield f"{os.path.basename(tar)}:{key}", files


def _ends_tar(path: str, offset: int) -> bool:
  """Whether the two zero blocks that end a tar archive follow `offset` (a
  tar cut at a member boundary otherwise reads as a shorter one)."""
  with open(path, "rb") as f:
    f.seek(offset)
    tail = f.read(1024)
  return len(tail) == 1024 and not any(tail)


# ----------------------------------------------------------- csv / jsonl
def file_dir(path, opts):
  return opts.images or os.path.dirname(os.path.abspath(path))


def _with_labels(item, row, column):
  """`item` with 'labels' from `row[column]` (a class name or id, or a
  list of them; empty when the cell is) when `column` is one of the
  source's columns, else as it is."""
  if column:
    v = row.get(column)
    item["labels"] = [] if v in (None, "") else as_list(v)
  return item


def _csv(path, opts, sep):
  [path] = source_files(path, "file")
  with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
    header = next(csv.reader(f, delimiter=sep), [])
  img_col, txt_col = opts.image_column, opts.text_column
  absent = [c for c in (img_col, txt_col) if c not in header]
  if absent:
    raise SourceError(
        f"ingest: {path} has no column {absent[0]!r} (its header is "
        f"{header[:10]}, separator {sep!r}). Name the columns with "
        "--image_column / --text_column (default: open_clip's 'filepath' "
        "and 'title'), or the separator with --sep.")
  label_col = opts.label_column if opts.label_column in header else ""
  root = file_dir(path, opts)

  def rows():
    with open(path, newline="", encoding="utf-8",
              errors="surrogateescape") as f:
      for n, row in enumerate(csv.DictReader(f, delimiter=sep), start=2):
        key = f"line {n}"
        if row.get(img_col) in (None, "") or row.get(txt_col) is None:
          yield {"key": key, "error": ("missing column", f"{row}"[:80])}
          continue
        yield _with_labels({"key": key,
                            "path": os.path.join(root, row[img_col]),
                            "captions": [row[txt_col]]}, row, label_col)
  return lambda: group_rows(rows())


def _jsonl(path, opts):
  [path] = source_files(path, "file")
  img_col, txt_col = opts.image_column, opts.text_column
  first = first_json_row(path)
  if not (isinstance(first, dict) and img_col in first and txt_col in first):
    has = sorted(first)[:10] if isinstance(first, dict) else repr(first)
    raise SourceError(
        f"ingest: {path}: the first row has no key {img_col!r} / "
        f"{txt_col!r} (it has {has}); name them with --image_column / "
        "--text_column.")
  label_col = opts.label_column if opts.label_column in first else ""
  root = file_dir(path, opts)

  def rows():
    for key, row, error in json_rows(path):
      if error:
        yield {"key": key, "error": error}
      elif not isinstance(row, dict) or not row.get(img_col) or row.get(
          txt_col) is None:
        yield {"key": key, "error": ("missing column", str(row)[:80])}
      else:
        yield _with_labels({"key": key,
                            "path": os.path.join(root, str(row[img_col])),
                            "captions": as_list(row[txt_col])}, row,
                           label_col)
  return lambda: group_rows(rows())


def first_json_row(path):
  """The first non-blank line of the JSON-lines file `path`, parsed; a
  SourceError before any work when it is not JSON."""
  with open(path, "rb") as f:
    first = next((line for line in f if line.strip()), b"")
  try:
    return json.loads(first)
  except ValueError as e:
    raise SourceError(f"ingest: the first line of {path} is not JSON "
                      f"({e}).") from None


def json_rows(path):
  """(key, row, error) for each non-blank line of the JSON-lines file
  `path`: key 'line N', row the parsed value, error None or the (reason,
  detail) of a line that is not UTF-8 JSON (row None then)."""
  with open(path, "rb") as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      key = f"line {n}"
      try:
        yield key, json.loads(line.decode("utf-8")), None
      except UnicodeDecodeError:
        yield key, None, ("non-UTF-8 text", "")
      except ValueError as e:
        yield key, None, ("malformed row", str(e)[:80])


# ------------------------------------------------------------------ COCO
def _load_json(path, keys, what):
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise SourceError(f"ingest: {path} is not a JSON file ({e}).") from None
  absent = [k for k in keys if not isinstance(obj, dict) or k not in obj]
  if absent:
    raise SourceError(f"ingest: {path} is not {what}: it has no "
                      f"{absent[0]!r} key.")
  return obj


def _coco(path, opts):
  [path] = source_files(path, "file")
  obj = _load_json(path, ("images", "annotations"),
                   "a COCO captions file (captions_*.json)")
  root = opts.images
  if not root:   # annotations/captions_val2017.json -> val2017/
    m = re.search(r"captions_(\w+)\.json$", path)
    here = os.path.dirname(os.path.abspath(path))
    guesses = [os.path.join(d, m.group(1)) for d in
               (here, os.path.dirname(here))] if m else []
    root = next((g for g in guesses if os.path.isdir(g)), here)
  captions = collections.defaultdict(list)
  for a in obj["annotations"]:
    captions[a.get("image_id")].append(a.get("caption"))

  def items():
    for image in obj["images"]:
      key = str(image.get("id"))
      if "file_name" not in image:
        yield {"key": key, "error": ("missing column", "no file_name")}
        continue
      caps = captions.get(image.get("id"))
      if not caps:
        yield {"key": key, "error": ("no caption", image["file_name"])}
        continue
      yield {"key": key, "path": os.path.join(root, image["file_name"]),
             "captions": caps}
  return items


# ------------------------------------------------------------------- VQA
def vqa_annotations_path(questions_path: str) -> str:
  """VQA v2's pairing: v2_OpenEnded_mscoco_X_questions.json ->
  v2_mscoco_X_annotations.json, beside it or in a sibling 'Annotations'."""
  here, base = os.path.split(os.path.abspath(questions_path))
  name = base.replace("OpenEnded_", "").replace("questions", "annotations")
  for d in (here, os.path.join(os.path.dirname(here), "Annotations"),
            os.path.join(os.path.dirname(here), "annotations")):
    if os.path.isfile(os.path.join(d, name)):
      return os.path.join(d, name)
  return os.path.join(here, name)


def _vqa(path, opts):
  [path] = source_files(path, "file")
  qs = _load_json(path, ("questions",), "a VQA questions file")
  ann_path = vqa_annotations_path(path)
  if not os.path.isfile(ann_path):
    raise SourceError(f"ingest: no annotations for {path}: expected "
                      f"{ann_path} (VQA v2 names them v2_mscoco_SPLIT_"
                      "annotations.json).")
  ann = _load_json(ann_path, ("annotations",), "a VQA annotations file")
  by_qid = {a.get("question_id"): a for a in ann["annotations"]}
  subtype = qs.get("data_subtype", "")
  root = opts.images or os.path.dirname(os.path.abspath(path))
  pattern = opts.image_pattern
  order, per_image = [], collections.defaultdict(list)
  for q in qs["questions"]:
    if q.get("image_id") not in per_image:
      order.append(q.get("image_id"))
    per_image[q.get("image_id")].append(q)

  def items():
    for image_id in order:
      key = str(image_id)
      questions = []
      for q in per_image[image_id]:
        a = by_qid.get(q.get("question_id"))
        if a is None or not a.get("answers") or "question" not in q:
          yield {"key": f"question {q.get('question_id')}",
                 "error": ("no annotation", f"image {image_id}")}
          continue
        questions.append({
            "question": q["question"],
            "answers": [x.get("answer", "") for x in a["answers"]],
            "answer_type": a.get("answer_type", "all"),
            "question_type": a.get("question_type", "all")})
      if not questions:
        continue
      name = pattern.format(image_id=image_id, data_subtype=subtype)
      full = os.path.join(root, subtype, name)
      if not os.path.isfile(full):
        full = os.path.join(root, name)
      yield {"key": key, "path": full, "questions": questions}
  return items


# --------------------------------------------------------------- parquet
def _parquet(path, opts):
  paths = [p for p in source_files(path, "parquet file")
           if p.endswith(".parquet") or not os.path.isdir(path)]
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SourceError("ingest: reading parquet needs pyarrow "
                      "(`pip install pyarrow`).") from e
  img_col, txt_col = opts.image_column, opts.text_column
  for p in paths:
    try:
      names = pq.ParquetFile(p).schema_arrow.names
    except Exception as e:  # noqa: BLE001 - pyarrow's many error types
      raise SourceError(f"ingest: {p} is not a parquet file ({e}).") from None
    absent = [c for c in (img_col, txt_col) if c not in names]
    if absent:
      raise SourceError(
          f"ingest: {p} has no column {absent[0]!r} (it has {names[:10]}); "
          "name the image-bytes and text columns with --image_column / "
          "--text_column.")
  label_col = opts.label_column if opts.label_column in names else ""
  columns = [img_col, txt_col] + ([label_col] if label_col else [])

  def items():
    for p in paths:
      f = pq.ParquetFile(p)
      n = 0
      for batch in f.iter_batches(batch_size=256, columns=columns):
        cols = [batch.column(c).to_pylist() for c in columns]
        for image, text, *label in zip(*cols):
          key = f"{os.path.basename(p)}:{n}"
          n += 1
          if isinstance(image, dict):   # HF datasets' Image: {bytes, path}
            image = image.get("bytes")
          if not image or text is None:
            yield {"key": key, "error": ("missing column", "empty "
                                         + ("image" if not image else "text"))}
            continue
          yield _with_labels(
              {"key": key, "image": bytes(image), "captions": as_list(text)},
              {label_col: label[0] if label else None}, label_col)
  return items


def open_source(fmt: str, path: str, opts):
  """Checks `path` as a source of format `fmt`; returns its item stream's
  factory (see the module docstring)."""
  if fmt == "webdataset":
    return _webdataset(path, opts)
  if fmt in ("csv", "tsv"):
    sep = opts.sep or ("\t" if fmt == "tsv" or path.endswith(".tsv") else ",")
    return _csv(path, opts, sep)
  if fmt == "jsonl":
    return _jsonl(path, opts)
  if fmt == "coco":
    return _coco(path, opts)
  if fmt == "vqa":
    return _vqa(path, opts)
  if fmt == "parquet":
    return _parquet(path, opts)
  raise SourceError(f"ingest: unknown format {fmt!r}; expected one of "
                    f"{FORMATS}.")
