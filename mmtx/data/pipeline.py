"""The input pipeline: grain over TFDS array_record data sources.

  it, info = get_dataset('sort_of_clevr', 'train', 'vqa', batch_size=64, seed=0)
  batch = next(it)                       # dict of numpy arrays, see views.py
  batch = to_device(batch, batch_sharding(mesh))
  state = it.get_state()                 # save with the checkpoint
  it, _ = get_dataset(... same args ...); it.set_state(state)   # resume

Order of operations, per host: the split's examples (one per question for
'vqa', per image for 'caption'/'contrastive', per turn for 'dialogue') are
shuffled with `seed` (a new permutation each epoch, the same on every host),
preprocessed (random choices seeded by `seed` and the example's global
position), then host `index` of `count` takes every `count`-th one. Training
(`repeat=True`) drops the `n % count` leftovers of each epoch so all hosts
take equal steps; evaluation pads each host's share to the same length with
examples whose 'valid' is False, and pads the last batch the same way, so
every batch is full and every host runs the same number of batches.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable

import grain
import jax
import numpy as np


from mmtx.data import build as build_lib
from mmtx.data import catalog
from mmtx.data import images as images_lib
from mmtx.data import ingest as ingest_lib
from mmtx.data import tokenizers as tok_lib
from mmtx.data import views
from mmtx.sharding import batch_sharding, to_device  # noqa: F401 (re-exported)


@dataclasses.dataclass
class DataInfo:
  """What a trainer needs to know about the stream `get_dataset` returns."""
  name: str
  split: str
  view: str
  num_examples: int          # examples of `view` in the split (one epoch)
  num_records: int           # records (images) in the split
  shard: tuple[int, int]     # (index, count)
  examples_per_shard: int    # per epoch on this host, padding included
  batch_size: int            # per host
  steps_per_epoch: int       # batches per epoch on this host
  tokenizer: Any
  max_len: int
  image_shape: tuple[int, int, int]
  answers: tuple[str, ...] | None
  qtypes: tuple[str, ...] | None
  qsubtypes: tuple[tuple[str, ...], ...] | None
  metadata: dict
  source: Any = dataclasses.field(repr=False)
  to_record: Callable[[Any, int], dict] = dataclasses.field(repr=False)

  def record(self, index: int) -> dict:
    """Record `index` of the split in the record schema (views.py), e.g. to
    fetch every reference caption of a batch's 'index' for evaluation."""
    return self.to_record(self.source[index], index)


def _identity(record, index):
  del index
  return record


@dataclasses.dataclass(frozen=True)
class _CatalogRecord:
  fields: catalog.Fields
  image_size: int

  def __call__(self, example, index):
    return catalog.to_record(example, self.fields, self.image_size, index)


class _Example(grain.transforms.RandomMap):
  """Global example index (-1 = padding) -> example dict."""

  def __init__(self, source, to_record, spec, starts, per_record):
    self.source, self.to_record, self.spec = source, to_record, spec
    self.starts, self.per_record = starts, per_record

  def random_map(self, element, rng):
    i = int(element)
    valid = i >= 0
    i = max(i, 0)
    if self.per_record is not None:
      rec, unit = divmod(i, self.per_record)
    else:
      rec = int(np.searchsorted(self.starts, i, side="right")) - 1
      unit = i - int(self.starts[rec])
    record = self.to_record(self.source[rec], rec)
    ex = views.make_example(self.spec, record, rec, unit, rng)
    ex["valid"] = np.bool_(valid)
    return ex


class _DecodedRecords:
  """A random-access source of decoded records (`to_record(source[i], i)`)
  that keeps each record after its first read, so later epochs skip the
  TFDS deserialisation (on the default Sort-of-CLEVR job that was ~60 % of
  the input pipeline's CPU time). Cached arrays are read-only: a view that
  wrote into a record would corrupt later epochs, so it raises instead."""

  def __init__(self, source, to_record):
    self.source, self.to_record = source, to_record
    self._records = {}

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    index = int(index)
    record = self._records.get(index)
    if record is None:
      record = self.keep(index, self.to_record(self.source[index], index))
    return record

  def keep(self, index: int, record):
    """Caches an already decoded record (read-only from now on)."""
    for v in record.values():
      if isinstance(v, np.ndarray):
        v.flags.writeable = False
    self._records[int(index)] = record
    return record


def _record_nbytes(record) -> int:
  """Bytes of a decoded record, counting the strings of object arrays (the
  questions and captions) by their length, not the pointer size."""
  total = 0
  for v in record.values():
    if isinstance(v, (str, bytes)):
      total += len(v)
    elif isinstance(v, dict):
      total += _record_nbytes(v)
    else:
      a = np.asarray(v)
      total += a.nbytes
      if a.dtype == object:
        total += sum(len(x) for x in a.ravel() if isinstance(x, (str, bytes)))
  return total


class _PadIndex(grain.transforms.Map):
  """Position j -> example index of `order` (a MapDataset), or -1 past `n`."""

  def __init__(self, order, n):
    self.order, self.n = order, n

  def map(self, element):
    j = int(element)
    return self.order[j] if j < self.n else -1


class _PadBatch(grain.transforms.Map):
  """Pads a short last batch to `batch_size` with 'valid' = False rows."""

  def __init__(self, batch_size):
    self.batch_size = batch_size

  def map(self, element):
    b = len(element["valid"])
    if b == self.batch_size:
      return element
    pad = self.batch_size - b
    return {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
            for k, v in element.items()}


class _FileSource:
  """A TFDS array_record data source whose read errors name the file: a
  truncated or overwritten shard otherwise fails with a bare Riegeli message."""

  def __init__(self, source, name, split, hint):
    self.source, self.name, self.split, self.hint = source, name, split, hint

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    try:
      record = self.source[index]
    except IndexError:
      raise
    except Exception as e:  # noqa: BLE001 - any failure to read or decode
      raise self._error(index, f"{type(e).__name__}: {str(e)[:300]}") from None
    if isinstance(record, dict) and record and all(
        v is None for v in record.values()):
      # A shard cut before its footer reads as empty records, not an error.
      raise self._error(index, "an empty record")
    return record

  def _error(self, index, what: str) -> OSError:
    return OSError(
        f"mmtx.data: cannot read record {int(index)} of {self.name} split "
        f"{self.split!r} from {self._file(index)} ({what}). The file is "
        f"damaged (truncated or overwritten): delete the dataset's directory "
        f"and rebuild it with `{self.hint}`.")

  def _file(self, index) -> str:
    """The shard holding record `index` (array_record's own bookkeeping)."""
    inner = getattr(self.source, "data_source", None)
    try:
      reader, _ = inner._reader_idx_and_position(int(index))  # noqa: SLF001
      return str(inner._read_instructions[reader].filename)  # noqa: SLF001
    except Exception:  # noqa: BLE001 - another source: name every file
      return str(getattr(inner, "_paths", "its files"))


def _unit_layout(view, split, source, metadata, to_record,
                 questions_per_image=0):
  """(starts, per_record, num_examples) of the flat example index."""
  n = len(source)
  if view in ("caption", "contrastive", "label") or questions_per_image:
    return None, 1, n
  if view == "vqa" and "questions_per_image" in metadata:
    per = int(metadata["questions_per_image"])
    return None, per, n * per
  if view == "dialogue" and "dialogues_per_image" in metadata:
    per = int(metadata["dialogues_per_image"]) * int(metadata["dialogue_turns"])
    return None, per, n * per
  counts = metadata.get("question_counts", {}).get(split) if view == "vqa" else None
  if counts is None or len(counts) != n:   # e.g. a sliced split: count them
    counts = [views.units_per_record(view, to_record(source[i], i)) for i in range(n)]
  starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  return starts[:-1], None, int(starts[-1])


def _open_source(name, split, data_dir, build, fields, image_size):
  """(source, to_record, image_shape, metadata, rebuild hint, builder or None)."""
  base, _ = build_lib.split_name(name)
  data_dir = data_dir or build_lib.default_data_dir()
  if base in build_lib.BUILDERS:
    if build:
      builder = build_lib.ensure_built(name, data_dir)
    else:
      builder = build_lib.get_builder(name, data_dir)
      if not build_lib.is_built(builder):
        raise FileNotFoundError(
            f"mmtx.data: {name} is not built in {data_dir}. Build it with "
            f"`{build_lib.build_command(name, data_dir)}` or "
            f"mmtx.data.ensure_built({name!r}, {data_dir!r}), or pass "
            "build=True.")
    splits = sorted(builder.info.splits.keys())
    if split.partition("[")[0] not in splits:
      raise ValueError(f"mmtx.data: {name} has no split {split!r}; it has "
                       f"{splits} (a TFDS slice like 'train[:10%]' also works).")
    source = _FileSource(builder.as_data_source(split), name, split,
                         build_lib.build_command(name, data_dir))
    features = builder.info.features
    shape = tuple(features["image" if "image" in features else "video"].shape)
    if image_size and image_size != shape[-3]:
      raise ValueError(f"mmtx.data: {name} has {shape[-3]}x{shape[-2]} "
                       f"images, which are not resized; data.image_size="
                       f"{image_size} needs a catalog or ingested dataset "
                       f"(python -m mmtx.data ingest ...), or 0.")
    return (source, _identity, shape, dict(builder.info.metadata),
            build_lib.build_command(name, data_dir), builder)
  if ingest_lib.is_ingested(name, data_dir):
    return _open_ingested(name, split, data_dir, image_size)
  fields = fields or catalog.CATALOG_FIELDS.get(base)
  if fields is None:
    known = sorted(build_lib.BUILDERS) + sorted(catalog.CATALOG_FIELDS)
    close = difflib.get_close_matches(base, known, n=1, cutoff=0.6)
    raise ValueError(
        f"mmtx.data: unknown dataset {name!r}" +
        (f"; did you mean {close[0]!r}?" if close else ".") +
        f" Known: {known}, and those written by `python -m mmtx.data ingest "
        f"FORMAT SRC --name NAME` into {data_dir}. Another TFDS catalog "
        "dataset needs fields=catalog.Fields(image=..., text=..., id=...) "
        "naming its image and text features.")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  cmd = f"tfds build {name} --file_format=array_record --data_dir {data_dir}"
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir,
                              download=False)
  except Exception as e:  # TFDS raises several types for "not there"
    raise FileNotFoundError(
        f"mmtx.data: cannot open TFDS dataset {name!r} split {split!r} in "
        f"{data_dir} ({type(e).__name__}: {e}). Build it in array_record "
        f"format with `{cmd}` (needs TensorFlow and the dataset's download "
        "access).") from e
  image_size = image_size or 224
  to_record = _CatalogRecord(fields, image_size)
  return source, to_record, (image_size, image_size, 3), {}, cmd, None


def _open_ingested(name, split, data_dir, image_size):
  """`_open_source` for a dataset `python -m mmtx.data ingest` wrote: its
  records hold encoded images, cropped to `image_size` (default: the
  dataset's --image_size) in the view, or decoded clips of the size they
  were written at."""
  builder = ingest_lib.open_builder(name, data_dir)
  hint = ingest_lib.rerun_command(builder.info.metadata, name)
  splits = sorted(builder.info.splits.keys())
  if split.partition("[")[0] not in splits:
    raise ValueError(f"mmtx.data: {name} has no split {split!r}; it has "
                     f"{splits} (a TFDS slice like 'train[:10%]' also works).")
  source = _FileSource(builder.as_data_source(split), name, split, hint)
  meta = dict(builder.info.metadata)
  size = int(image_size or meta["image_size"])
  shape = (size, size, 3)
  if "frames" in meta:   # clips: 'video' [frames, size, size, 3]
    if size != meta["image_size"]:
      raise ValueError(f"mmtx.data: {name} holds clips of "
                       f"{meta['image_size']}x{meta['image_size']} frames, "
                       f"not {size}; leave data.image_size 0 or ingest them "
                       f"again with --image_size {size}.")
    shape = (int(meta["frames"]),) + shape
  return source, _identity, shape, meta, hint, builder


def get_dataset(name: str, split: str, view: str, *, batch_size: int,
                seed: int = 0, tokenizer=None, max_len: int = 32,
                shuffle: bool | None = None, repeat: bool | None = None,
                drop_remainder: bool | None = None, augment: bool = False,
                data_dir: str | None = None,
                shard: tuple[int, int] | None = None, build: bool = True,
                fields: catalog.Fields | None = None,
                image_size: int | None = None, normalize: str = "minus_one_one",
                hflip: bool = False,
                num_threads: int | None = None, prefetch: int = 16,
                num_workers: int = 0, questions_per_image: int = 0,
                cache_mb: float = 1024):
  """A checkpointable iterator of batches, and a `DataInfo`.

  Args:
    name: 'sort_of_clevr' (or 'sort_of_clevr/tiny'), 'easy_vqa', a dataset
      `python -m mmtx.data ingest` wrote into `data_dir`, or a TFDS catalog
      dataset with an image and a text feature (see `fields`).
    split: a split name ('train', 'test', 'test_large') or TFDS slice.
    view: 'vqa', 'caption', 'contrastive', 'dialogue' or 'label': how a
      record becomes examples (views.py lists the batch keys of each).
    batch_size: examples per batch on this host.
    seed: shuffling and augmentation seed, in [0, 2**32).
    tokenizer: a `tokenizers.Tokenizer`, a path to a saved one (.json word
      vocabulary or SentencePiece .model), or None for the dataset's word
      vocabulary (mmtx's own and ingested datasets only).
    max_len: token length L of 'question' / 'text' / 'history'.
    shuffle, repeat, drop_remainder: default to True for a split whose name
      starts with 'train' (`repeat` and `drop_remainder` default to `shuffle`).
    augment: light photometric jitter (views.augment_image); for ingested
      datasets (encoded images) a random resized crop (images.py).
    data_dir: default `$MMTX_DATA_DIR` or ~/tensorflow_datasets.
    shard: (index, count) of this host; default (jax.process_index(),
      jax.process_count()).
    build: build mmtx's own datasets on first use; if False a missing one is
      a FileNotFoundError naming the build command.
    fields: catalog datasets only: the feature names (`catalog.Fields`,
      default from `catalog.CATALOG_FIELDS`).
    image_size: catalog and ingested datasets: the square size images are
      cropped to (default 224; ingested: the dataset's --image_size);
      mmtx's own datasets: None or their size (they are not resized).
    normalize: the model's input normalisation, a key of
      `images.NORMALIZATIONS` ('minus_one_one': x / 127.5 - 1, 'clip',
      'imagenet').
    hflip: ingested datasets, with `augment`: flip images horizontally with
      probability 1/2 unless a text of the record says left or right
      (images.flip_safe).
    num_threads, prefetch: grain's reading threads per process (default 8,
      or 2 with worker processes) and its buffer, in batches.
    num_workers: grain worker processes (0 = preprocess in this process).
      The batches are the same for any num_threads / num_workers; an
      iterator state restores only into the same num_workers.
    questions_per_image: 'vqa' and 'dialogue'. 0: one example per question
      (dialogue turn). Q > 0: one example per image holding Q of its
      questions (turns) ([Q, L] tokens, [Q] answers and 'question_valid';
      views.py), so a model encodes each image once for Q questions; an
      epoch is then one pass over the images.
    cache_mb: keep decoded records in memory (per process, filled as they
      are first read) when the split's estimated size (the first record's
      bytes x records) is at most this many MB; 0 = never. The batches are
      the same either way.

  Returns:
    (iterator, info): `iterator` yields dicts of numpy arrays and has
    `get_state()` / `set_state(state)`; `info` is a `DataInfo`.
  """
  if view not in views.VIEWS:
    raise ValueError(f"get_dataset: view must be one of {views.VIEWS}, got "
                     f"{view!r}.")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"get_dataset: batch_size must be a positive int, got "
                     f"{batch_size!r}.")
  if not 0 <= seed < 2 ** 32:
    raise ValueError(f"get_dataset: seed must be in [0, 2**32), got {seed}.")
  index, count = shard if shard is not None else (jax.process_index(),
                                                  jax.process_count())
  if not 0 <= index < count:
    raise ValueError(f"get_dataset: shard index {index} is not in [0, {count}).")
  shuffle = split.startswith("train") if shuffle is None else shuffle
  repeat = shuffle if repeat is None else repeat
  drop_remainder = repeat if drop_remainder is None else drop_remainder

  source, to_record, image_shape, metadata, hint, builder = _open_source(
      name, split, data_dir, build, fields, image_size)
  if tokenizer is None:
    if builder is None:
      raise ValueError(f"get_dataset: {name!r} has no built-in vocabulary; "
                       "pass tokenizer= (tokenizers.WordTokenizer.fit(texts), "
                       "tokenizers.SentencePieceTokenizer.load(path), or a path).")
    tokenizer = build_lib.word_tokenizer(builder)
  elif isinstance(tokenizer, str):
    tokenizer = tok_lib.load_tokenizer(tokenizer)
  answers = tuple(metadata["answers"]) if "answers" in metadata else None
  spec = views.ViewSpec(view=view, tokenizer=tokenizer, max_len=max_len,
                        image_shape=image_shape, answers=answers,
                        augment=augment, random_text=shuffle, dataset=name,
                        rebuild_hint=hint,
                        questions_per_image=questions_per_image,
                        normalize=normalize,
                        image_policy=images_lib.Policy(
                            size=image_shape[0], normalize=normalize,
                            hflip=hflip)
                        if metadata.get("image_encoding") == "encoded"
                        else None,
                        labels=(tuple(metadata["labels"])
                                if "labels" in metadata else None))
  if len(source) == 0:
    raise ValueError(f"get_dataset: {name} split {split!r} is empty.")
  first = to_record(source[0], 0)
  if cache_mb and _record_nbytes(first) * len(source) <= cache_mb * 2 ** 20:
    source, to_record = _DecodedRecords(source, to_record), _identity
    source.keep(0, first)  # decoded once, for the size estimate
  missing = [f for f in views.REQUIRED_FIELDS[view] if f not in first]
  if missing:
    raise ValueError(f"get_dataset: {name} has no {missing} feature(s), which "
                     f"view {view!r} needs; its records have {sorted(first)}.")
  starts, per_record, n = _unit_layout(view, split, source, metadata, to_record,
                                       questions_per_image)
  if n < count:
    raise ValueError(f"get_dataset: {name} {split} has {n} {view} examples, "
                     f"fewer than the {count} hosts sharing it.")

  order = grain.MapDataset.range(n)
  if shuffle:
    order = order.shuffle(seed=seed)
  example = _Example(source, to_record, spec, starts, per_record)
  if repeat:
    per_shard = n // count
    ds = order.random_map(example, seed=seed)
    ds = ds.slice(slice(index, per_shard * count, count)).repeat()
  else:
    per_shard = math.ceil(n / count)
    ds = grain.MapDataset.range(per_shard * count).map(_PadIndex(order, n))
    ds = ds.random_map(example, seed=seed)[index::count]
  # Batching the random-access dataset makes a batch the unit of work: the
  # reading threads and the worker processes (each takes every
  # num_workers-th batch) build whole batches, and grain puts them back in
  # order, so the batches never depend on num_threads or num_workers.
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if not drop_remainder:
    ds = ds.map(_PadBatch(batch_size))
  if num_threads is None:
    num_threads = 2 if num_workers else 8
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=prefetch))
  if num_workers:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():   # grain reads its flags in the workers
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  steps = (per_shard // batch_size if drop_remainder
           else math.ceil(per_shard / batch_size))
  info = DataInfo(
      name=name, split=split, view=view, num_examples=n, num_records=len(source),
      shard=(index, count), examples_per_shard=per_shard, batch_size=batch_size,
      steps_per_epoch=steps, tokenizer=tokenizer, max_len=max_len,
      image_shape=image_shape, answers=answers,
      qtypes=tuple(metadata["qtypes"]) if "qtypes" in metadata else None,
      qsubtypes=(tuple(tuple(s) for s in metadata["qsubtypes"])
                 if "qsubtypes" in metadata else None),
      metadata=metadata, source=source, to_record=to_record)
  return iter(ds), info
