"""Where datasets live and how mmtx's own ones get built.

  python -m mmtx.data sort_of_clevr [--data_dir DIR]
  python -m mmtx.data easy_vqa
  python -m mmtx.data av_scenes

The data directory is `$MMTX_DATA_DIR`, else `~/tensorflow_datasets`. A name
may carry a builder config: 'sort_of_clevr/tiny'. Building also fits the
dataset's word vocabulary on its train split and saves it next to the data
(`words.json`).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import time

from etils import epath

from mmtx.data import av_scenes
from mmtx.data import easy_vqa
from mmtx.data import sort_of_clevr
from mmtx.data import tokenizers

BUILDERS = {"sort_of_clevr": sort_of_clevr.SortOfClevr,
            "easy_vqa": easy_vqa.EasyVqa,
            "av_scenes": av_scenes.AvScenes}
WORDS_FILE = "words.json"
# Every text field of the record schema a word vocabulary is fitted on.
TEXT_FIELDS = ("question", "caption", "dialogue_question")


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get("MMTX_DATA_DIR", "~/tensorflow_datasets"))


def split_name(name: str) -> tuple[str, str | None]:
  """'sort_of_clevr/tiny' -> ('sort_of_clevr', 'tiny'); no config -> None."""
  base, _, config = name.partition("/")
  return base, config or None


def build_command(name: str, data_dir: str) -> str:
  return f"python -m mmtx.data {name} --data_dir {data_dir}"


def get_builder(name: str, data_dir: str | None = None):
  """The (possibly not yet built) builder of one of mmtx's own datasets."""
  base, config = split_name(name)
  if base not in BUILDERS:
    raise ValueError(f"mmtx.data: {name!r} is not one of mmtx's datasets "
                     f"{sorted(BUILDERS)}.")
  kwargs = {"config": config} if config else {}
  return BUILDERS[base](data_dir=data_dir or default_data_dir(), **kwargs)


def is_built(builder) -> bool:
  return epath.Path(builder.data_dir, "dataset_info.json").exists()


def ensure_built(name: str, data_dir: str | None = None, *, verbose: bool = True):
  """Builds `name` into `data_dir` unless it is there; returns the builder.

  Processes that start on the same data dir at once (two runs side by
  side, several workers of one host) take turns: one builds, the others wait
  for it and then read what it built.
  """
  builder = get_builder(name, data_dir)
  words = epath.Path(builder.data_dir, WORDS_FILE)
  if is_built(builder) and words.exists():
    return builder
  with _build_lock(builder):
    builder = get_builder(name, data_dir)   # another process may have built it
    if not is_built(builder):
      if verbose:
        print(f"mmtx.data: building {name} into {builder.data_dir} ...",
              flush=True)
      start = time.time()
      builder.download_and_prepare()
      if verbose:
        print(f"mmtx.data: built {name} in {time.time() - start:.1f} s.",
              flush=True)
    if not words.exists():
      tok = tokenizers.WordTokenizer.fit(
          train_texts(builder.as_data_source("train"), builder.info.metadata))
      tmp = epath.Path(str(words) + f".tmp{os.getpid()}")
      tok.save(str(tmp))
      tmp.rename(words)
      if verbose:
        print(f"mmtx.data: {len(tok.words)} words -> {words}", flush=True)
  return builder


@contextlib.contextmanager
def _build_lock(builder):
  """An exclusive lock (flock) on a file beside the dataset's version
  folder, held while it is built."""
  lock_dir = os.path.dirname(os.path.normpath(str(builder.data_dir)))
  os.makedirs(lock_dir, exist_ok=True)
  with open(os.path.join(lock_dir, ".mmtx_build.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def word_tokenizer(builder) -> tokenizers.WordTokenizer:
  """The word vocabulary saved by `ensure_built`."""
  return tokenizers.WordTokenizer.load(os.path.join(builder.data_dir, WORDS_FILE))


def train_texts(source, metadata):
  """All text of a split's records (questions, captions, dialogue turns) and
  the answer strings."""
  for answer in metadata.get("answers", ()):
    yield answer
  for i in range(len(source)):
    record = source[i]
    for field in TEXT_FIELDS:
      if field in record:
        for text in record[field].reshape(-1):
          yield text.decode() if isinstance(text, bytes) else str(text)


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m mmtx.data", description="Builds one of mmtx's datasets.")
  parser.add_argument("name", help=f"one of {sorted(BUILDERS)}, optionally "
                      "with a config: sort_of_clevr/tiny")
  parser.add_argument("--data_dir", default=None,
                      help="default: $MMTX_DATA_DIR or ~/tensorflow_datasets")
  args = parser.parse_args(argv)
  ensure_built(args.name, args.data_dir)
