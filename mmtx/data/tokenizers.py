"""Text tokenizers behind one interface: a word-level vocabulary built from a
dataset's text, and SentencePiece (Kudo & Richardson 2018).

Special ids are the same for every tokenizer:
  pad=0, bos=1, eos=2, mask=3, sep=4, unk=5.
`encode(text) -> list[int]` gives the content ids only; `encode_batch` adds
bos/eos, truncates and pads to `[batch, max_len]` int32 ids (0 = pad) with a
bool mask (True = token).
"""
from __future__ import annotations

import collections
import io
import json
import re
from typing import Iterable, Sequence

import numpy as np

PAD, BOS, EOS, MASK, SEP, UNK = 0, 1, 2, 3, 4, 5
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<mask>", "<sep>", "<unk>")
NUM_SPECIAL = len(SPECIAL_TOKENS)


class Tokenizer:
  """Base interface. Subclasses define `vocab_size`, `encode`, `_piece`/`decode`."""

  vocab_size: int

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def decode(self, ids: Iterable[int]) -> str:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str], max_len: int, *,
                   add_bos: bool = True, add_eos: bool = True,
                   truncate: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """Token ids int32 `[batch, max_len]` (0 = pad) and mask bool `[batch, max_len]`."""
    return pad_sequences([self.encode(t) for t in texts], max_len,
                         add_bos=add_bos, add_eos=add_eos, truncate=truncate)

  def _strip(self, ids: Iterable[int]) -> list[int]:
    """Ids up to the first eos, without pad/bos."""
    out = []
    for i in (int(i) for i in ids):
      if i == EOS:
        break
      if i not in (PAD, BOS):
        out.append(i)
    return out


def pad_sequences(seqs: Sequence[Sequence[int]], max_len: int, *,
                  add_bos: bool = True, add_eos: bool = True,
                  truncate: str = "right") -> tuple[np.ndarray, np.ndarray]:
  """Adds bos/eos, truncates and pads to int32 `[batch, max_len]` + bool mask.

  Truncation drops content tokens, never bos/eos: 'right' keeps the first
  tokens (questions, captions), 'left' keeps the last ones (dialogue history).
  """
  if truncate not in ("right", "left"):
    raise ValueError(f"pad_sequences: truncate must be 'right' or 'left', got "
                     f"{truncate!r}.")
  room = max_len - int(add_bos) - int(add_eos)
  if room < 1:
    raise ValueError(f"pad_sequences: max_len={max_len} leaves no room for "
                     "text after bos/eos; use max_len >= 3.")
  ids = np.zeros((len(seqs), max_len), np.int32)
  for row, seq in enumerate(seqs):
    seq = list(seq)
    seq = seq[:room] if truncate == "right" else seq[max(0, len(seq) - room):]
    seq = [BOS] * add_bos + seq + [EOS] * add_eos
    ids[row, :len(seq)] = seq
  return ids, ids != PAD


# ------------------------------------------------------------------ words
_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_NO_SPACE_BEFORE = set(".,?!;:")


def split_words(text: str) -> list[str]:
  """Lowercased words and single punctuation marks: "Is it red?" -> [is, it, red, ?]."""
  return _WORD_RE.findall(text.lower())


class WordTokenizer(Tokenizer):
  """Whole-word vocabulary; word k of `words` has id 6 + k, others are unk."""

  def __init__(self, words: Sequence[str]):
    words = list(words)
    if len(set(words)) != len(words):
      raise ValueError("WordTokenizer: the word list has duplicates.")
    clash = set(words) & set(SPECIAL_TOKENS)
    if clash:
      raise ValueError(f"WordTokenizer: {sorted(clash)} are special tokens and "
                       "cannot be words.")
    self.words = words
    self._ids = {w: NUM_SPECIAL + i for i, w in enumerate(words)}
    self.vocab_size = NUM_SPECIAL + len(words)

  @classmethod
  def fit(cls, texts: Iterable[str], *, min_count: int = 1,
          max_size: int | None = None) -> "WordTokenizer":
    """Vocabulary of words seen >= `min_count` times, most frequent first
    (ties alphabetical), at most `max_size` words."""
    counts = collections.Counter()
    for text in texts:
      counts.update(split_words(text))
    words = sorted((w for w, c in counts.items() if c >= min_count),
                   key=lambda w: (-counts[w], w))
    return cls(words[:max_size])

  def encode(self, text: str) -> list[int]:
    return [self._ids.get(w, UNK) for w in split_words(text)]

  def decode(self, ids: Iterable[int]) -> str:
    text = ""
    for i in self._strip(ids):
      word = (SPECIAL_TOKENS[i] if i < NUM_SPECIAL
              else self.words[i - NUM_SPECIAL] if i < self.vocab_size
              else SPECIAL_TOKENS[UNK])
      sep = "" if not text or word in _NO_SPACE_BEFORE else " "
      text += sep + word
    return text

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump({"type": "word", "special": list(SPECIAL_TOKENS),
                 "words": self.words}, f)

  @classmethod
  def load(cls, path: str) -> "WordTokenizer":
    with open(path) as f:
      data = json.load(f)
    if data.get("type") != "word" or data.get("special") != list(SPECIAL_TOKENS):
      raise ValueError(f"WordTokenizer.load: {path} is not a word vocabulary "
                       "saved by WordTokenizer.save.")
    return cls(data["words"])


# ---------------------------------------------------------- SentencePiece
class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model with mmtx's special ids.

  A model trained by `train` has them natively (ids pass through). Any other
  model (e.g. a T5 or LLaMA `.model`) is shifted: piece p gets id 6 + p, and
  its own unknown piece maps to unk=5.
  """

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.model_proto = bytes(model_proto)
    self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    sp = self.sp
    native = (sp.vocab_size() > NUM_SPECIAL and sp.pad_id() == PAD
              and sp.bos_id() == BOS and sp.eos_id() == EOS
              and sp.unk_id() == UNK and sp.id_to_piece(MASK) == "<mask>"
              and sp.id_to_piece(SEP) == "<sep>")
    self.offset = 0 if native else NUM_SPECIAL
    self.vocab_size = sp.vocab_size() + self.offset

  def __getstate__(self):             # picklable for grain worker processes
    return {"model_proto": self.model_proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"])

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, *,
            model_type: str = "unigram", character_coverage: float = 1.0,
            hard_vocab_limit: bool = False) -> "SentencePieceTokenizer":
    """Trains in memory. `hard_vocab_limit=False` lets a small corpus end with
    fewer pieces than `vocab_size` instead of failing."""
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=model,
        vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage,
        hard_vocab_limit=hard_vocab_limit,
        pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
        control_symbols=["<mask>", "<sep>"], minloglevel=2)
    return cls(model.getvalue())

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    with open(path, "rb") as f:
      return cls(f.read())

  def save(self, path: str) -> None:
    with open(path, "wb") as f:
      f.write(self.model_proto)

  def encode(self, text: str) -> list[int]:
    ids = self.sp.encode(text, out_type=int)
    if not self.offset:
      return ids
    unk = self.sp.unk_id()
    return [UNK if i == unk else i + self.offset for i in ids]

  def decode(self, ids: Iterable[int]) -> str:
    # Runs of ordinary pieces are decoded by SentencePiece; mask/sep/unk
    # become their names.
    parts, run = [], []
    for i in self._strip(ids):
      if i < NUM_SPECIAL or i >= self.vocab_size:
        if run:
          parts.append(self.sp.decode(run))
          run = []
        parts.append(SPECIAL_TOKENS[i if i < NUM_SPECIAL else UNK])
      else:
        run.append(i - self.offset)
    if run:
      parts.append(self.sp.decode(run))
    return " ".join(parts)


def load_tokenizer(path: str) -> Tokenizer:
  """A saved word vocabulary (.json) or a SentencePiece model (.model)."""
  if path.endswith(".json"):
    return WordTokenizer.load(path)
  if path.endswith(".model"):
    return SentencePieceTokenizer.load(path)
  raise ValueError(f"load_tokenizer: {path} is neither a .json word vocabulary "
                   "nor a SentencePiece .model file.")
