"""Text tokenizers behind one interface: a word-level vocabulary built from a
dataset's text, SentencePiece (Kudo & Richardson 2018), and CLIP's byte-level
BPE (Radford et al. 2021, the vocabulary of released CLIP checkpoints).

Special ids are the same for the word and SentencePiece tokenizers:
  pad=0, bos=1, eos=2, mask=3, sep=4, unk=5;
`ClipBpeTokenizer` keeps CLIP's own ids (start/end of text 49406/49407, pad 0)
so imported CLIP weights see the ids they were trained on.
`encode(text) -> list[int]` gives the content ids only; `encode_batch` adds
bos/eos, truncates and pads to `[batch, max_len]` int32 ids (0 = pad) with a
bool mask (True = token).
"""
from __future__ import annotations

import collections
import gzip
import html
import io
import json
import re
import string
from typing import Iterable, Sequence

import numpy as np

PAD, BOS, EOS, MASK, SEP, UNK = 0, 1, 2, 3, 4, 5
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<mask>", "<sep>", "<unk>")
NUM_SPECIAL = len(SPECIAL_TOKENS)


class Tokenizer:
  """Base interface. Subclasses define `vocab_size`, `encode`, `_piece`/`decode`
  and, where they differ from BOS / EOS, the ids `encode_batch` starts and
  ends a text with (`bos_id` None: the tokenizer has no start token)."""

  vocab_size: int
  bos_id: int | None = BOS
  eos_id: int = EOS

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
                  truncate: str = "right", bos_id: int = BOS,
                  eos_id: int = EOS) -> tuple[np.ndarray, np.ndarray]:
  """Adds bos/eos, truncates and pads to int32 `[batch, max_len]` + bool mask.

  Truncation drops content tokens, never bos/eos: 'right' keeps the first
  tokens (questions, captions), 'left' keeps the last ones (dialogue history).
  The mask is True on the first len(sequence) positions (a content id may be
  0 in CLIP's vocabulary, so the mask is not `ids != 0`).
  """
  if truncate not in ("right", "left"):
    raise ValueError(f"pad_sequences: truncate must be 'right' or 'left', got "
                     f"{truncate!r}.")
  room = max_len - int(add_bos) - int(add_eos)
  if room < 1:
    raise ValueError(f"pad_sequences: max_len={max_len} leaves no room for "
                     "text after bos/eos; use max_len >= 3.")
  ids = np.zeros((len(seqs), max_len), np.int32)
  mask = np.zeros((len(seqs), max_len), bool)
  for row, seq in enumerate(seqs):
    seq = list(seq)
    seq = seq[:room] if truncate == "right" else seq[max(0, len(seq) - room):]
    seq = [bos_id] * add_bos + seq + [eos_id] * add_eos
    ids[row, :len(seq)] = seq
    mask[row, :len(seq)] = True
  return ids, mask


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


# ---------------------------------------------------------------- CLIP BPE
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Byte-level BPE: 256 byte symbols, the same with the end-of-word mark, the
# merges, then <start_of_text> and <end_of_text> (49152 + 256 ids in all).
_CLIP_NUM_MERGES = 49152 - 256 - 2
_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
# Pieces: a special token, an English contraction, a run of letters, one
# digit, or a run of anything else that is not whitespace (matched after the
# text is lower-cased; IGNORECASE only matters for "'ſ", as in the original).
_CLIP_PIECES = ("|".join(_CLIP_SPECIALS) +
                r"|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+")


def _byte_symbols() -> dict[int, str]:
  """One printable character per byte value: printable Latin-1 bytes stand
  for themselves, the others (whitespace, controls) for chr(256 + k) in byte
  order, so BPE symbols never contain whitespace. The dict's order is the
  vocabulary's: the printable bytes first, then the others."""
  keep = [b for b in range(256)
          if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
  others = [b for b in range(256) if b not in keep]
  symbols = {b: chr(b) for b in keep}
  symbols.update({b: chr(256 + k) for k, b in enumerate(others)})
  return symbols


def default_clip_bpe_path() -> str:
  """The vocabulary file that ships inside the open_clip package, found
  without importing it (`pip install open_clip_torch`)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"ClipBpeTokenizer: no bpe_path given and open_clip is not installed "
        f"to find {CLIP_BPE_FILE} in. Pass bpe_path= to the file (it ships in "
        f"the open_clip_torch and openai/CLIP packages; Hugging Face CLIP "
        f"repositories' merges.txt holds the same merges).")
  return os.path.join(list(spec.submodule_search_locations)[0], CLIP_BPE_FILE)


class ClipBpeTokenizer(Tokenizer):
  """CLIP's lower-cased byte-level BPE; `encode_batch(texts, max_len)[0]`
  equals `open_clip.tokenize(texts, context_length=max_len)`.

  Text is cleaned as CLIP does (ftfy.fix_text, HTML entities unescaped
  twice, whitespace runs collapsed, lower-cased), split into pieces, and each
  piece's UTF-8 bytes are merged by rank. `bpe_path`: the merges file,
  gzipped (`bpe_simple_vocab_16e6.txt.gz`) or plain (`merges.txt`); default:
  the copy inside an installed open_clip. Needs the `ftfy` and `regex`
  packages. Ids: '!' is 0 (so the mask, not `ids != 0`, marks the padding),
  start/end of text are `bos_id`=49406 / `eos_id`=49407.
  """

  def __init__(self, bpe_path: str | None = None):
    try:
      import ftfy  # pylint: disable=g-import-not-at-top
      import regex  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("ClipBpeTokenizer needs the ftfy and regex packages "
                        "(pip install ftfy regex).") from e
    self._fix_text = ftfy.fix_text
    self.bpe_path = bpe_path or default_clip_bpe_path()
    opener = gzip.open if self.bpe_path.endswith(".gz") else open
    with opener(self.bpe_path, "rb") as f:
      lines = f.read().decode("utf-8").split("\n")
    # Line 0 is a version header.
    merges = [tuple(line.split()) for line in lines[1:1 + _CLIP_NUM_MERGES]]
    if len(merges) != _CLIP_NUM_MERGES or any(len(m) != 2 for m in merges):
      raise ValueError(f"ClipBpeTokenizer: {self.bpe_path} does not hold "
                       f"{_CLIP_NUM_MERGES} merges ('a b' per line after a "
                       f"header line).")
    self._bytes = _byte_symbols()
    base = list(self._bytes.values())
    symbols = base + [b + "</w>" for b in base]
    symbols += [a + b for a, b in merges] + list(_CLIP_SPECIALS)
    self._ids = {sym: i for i, sym in enumerate(symbols)}
    self._symbols = symbols
    self._ranks = {m: r for r, m in enumerate(merges)}
    self._pieces = regex.compile(_CLIP_PIECES, regex.IGNORECASE)
    self._cache: dict[str, list[int]] = {}
    self.vocab_size = len(symbols)
    self.bos_id, self.eos_id = self._ids[_CLIP_SPECIALS[0]], self._ids[
        _CLIP_SPECIALS[1]]

  def __getstate__(self):             # picklable for grain worker processes
    return {"bpe_path": self.bpe_path}

  def __setstate__(self, state):
    self.__init__(state["bpe_path"])

  def clean(self, text: str) -> str:
    text = html.unescape(html.unescape(self._fix_text(text))).strip()
    return " ".join(text.split()).lower()

  def _merge(self, piece: str) -> list[int]:
    """BPE of one piece: merge the adjacent pair of lowest rank (every
    occurrence, left to right) until no pair has a rank."""
    if piece in self._cache:
      return self._cache[piece]
    word = "".join(self._bytes[b] for b in piece.encode("utf-8"))
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
      ranked = [self._ranks.get(p) for p in zip(parts, parts[1:])]
      best = min((r for r in ranked if r is not None), default=None)
      if best is None:
        break
      pair = (parts[ranked.index(best)], parts[ranked.index(best) + 1])
      merged, i = [], 0
      while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    ids = [self._ids[p] for p in parts]
    if len(self._cache) < 100_000:
      self._cache[piece] = ids
    return ids

  def encode(self, text: str) -> list[int]:
    out = []
    for piece in self._pieces.findall(self.clean(text)):
      if piece in _CLIP_SPECIALS:
        out.append(self._ids[piece])
      else:
        out.extend(self._merge(piece))
    return out

  def encode_batch(self, texts: Sequence[str], max_len: int, *,
                   add_bos: bool = True, add_eos: bool = True,
                   truncate: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """ids int32 `[batch, max_len]` (start, tokens, end, then 0s; a text too
    long loses its last tokens but keeps the end token) and the bool mask."""
    return pad_sequences([self.encode(t) for t in texts], max_len,
                         add_bos=add_bos, add_eos=add_eos, truncate=truncate,
                         bos_id=self.bos_id, eos_id=self.eos_id)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids between start and end of text (end-of-word marks
    become spaces)."""
    symbols = []
    for i in (int(i) for i in ids):
      if i == self.eos_id:
        break
      if i != self.bos_id and 0 <= i < self.vocab_size:
        symbols.append(self._symbols[i])
    byte_of = {s: b for b, s in self._bytes.items()}
    data = bytearray()
    for ch in "".join(symbols).replace("</w>", " "):
      data.extend(b" " if ch == " " else bytes([byte_of[ch]]))
    return data.decode("utf-8", errors="replace").strip()


# ------------------------------------------------------ SigLIP SentencePiece
class SiglipTokenizer(Tokenizer):
  """SigLIP's text pipeline over a SentencePiece model:
  `encode_batch(texts, max_len)[0]` equals transformers'
  `SiglipTokenizer(model_file)(texts, padding='max_length', truncation=True,
  max_length=max_len).input_ids`.

  Text is lower-cased character by character, split around the special
  pieces '</s>' and '<unk>' (whitespace next to them dropped), ASCII
  punctuation removed, whitespace runs collapsed, and encoded as one
  word-initial piece sequence. Rows end with '</s>' (`eos_id`) and are padded
  with it, as SigLIP was trained; the ids keep the model's own numbering.
  """

  SPECIALS = ("</s>", "<unk>")
  bos_id = None

  def __init__(self, model_proto: bytes, *, lower: bool = True):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
    self.model_proto, self.lower = bytes(model_proto), lower
    proto = sentencepiece_model_pb2.ModelProto.FromString(self.model_proto)
    # Pieces never get an implicit leading '▁': encode() adds it itself.
    proto.normalizer_spec.add_dummy_prefix = False
    self.sp = spm.SentencePieceProcessor(
        model_proto=proto.SerializeToString())
    self.eos_id = self.sp.piece_to_id("</s>")
    self.pad_id = self.eos_id
    self.vocab_size = self.sp.vocab_size()
    # Text is encoded after '<unk>' so that its leading '▁' survives
    # SentencePiece's whitespace trimming; these pieces are dropped again.
    self._prefix = len(self.sp.encode("<unk>", out_type=str))
    self._split = re.compile("(" + "|".join(map(re.escape, self.SPECIALS))
                             + ")")
    self._punctuation = str.maketrans("", "", string.punctuation)

  def __getstate__(self):             # picklable for grain worker processes
    return {"model_proto": self.model_proto, "lower": self.lower}

  def __setstate__(self, state):
    self.__init__(state["model_proto"], lower=state["lower"])

  @classmethod
  def load(cls, path: str, **kwargs) -> "SiglipTokenizer":
    with open(path, "rb") as f:
      return cls(f.read(), **kwargs)

  def _pieces(self, chunk: str) -> list[str]:
    chunk = re.sub(r"\s+", " ", chunk.translate(self._punctuation)).strip()
    return self.sp.encode("<unk>" + chunk, out_type=str)[self._prefix:]

  def encode(self, text: str) -> list[int]:
    text = "\u2581" + text.replace("\u2581", " ")
    if self.lower:
      text = "".join(c.lower() for c in text)
    chunks = self._split.split(text)
    for i, chunk in enumerate(chunks):
      if chunk in self.SPECIALS:
        if i > 0:
          chunks[i - 1] = chunks[i - 1].rstrip()
        if i + 1 < len(chunks):
          chunks[i + 1] = chunks[i + 1].lstrip()
    pieces = []
    for i, chunk in enumerate(chunks):
      if i % 2:  # re.split puts the separators at odd indices
        pieces.append(chunk)
      elif chunk:
        pieces.extend(self._pieces(chunk))
    if len(pieces) > 1 and pieces[0] == "\u2581" and pieces[1] in self.SPECIALS:
      pieces = pieces[1:]
    return [self.sp.piece_to_id(p) for p in pieces]

  def encode_batch(self, texts: Sequence[str], max_len: int, *,
                   add_bos: bool = False, add_eos: bool = True,
                   truncate: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """ids int32 `[batch, max_len]`: at most max_len - 1 tokens, then
    '</s>' unless the last kept token is one, then '</s>' padding; and the
    bool mask of the tokens before the padding."""
    if add_bos or truncate != "right" or max_len < 2:
      raise ValueError("SiglipTokenizer.encode_batch: SigLIP texts have no "
                       "bos, keep their first tokens and need max_len >= 2.")
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    for row, text in enumerate(texts):
      seq = self.encode(text)[:max_len - 1]
      if add_eos and (not seq or seq[-1] != self.eos_id):
        seq.append(self.eos_id)
      ids[row, :len(seq)] = seq
      mask[row, :len(seq)] = True
    return ids, mask

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids before the first '</s>'."""
    out = []
    for i in (int(i) for i in ids):
      if i == self.eos_id:
        break
      out.append(i)
    return self.sp.decode(out)


def load_tokenizer(path: str) -> Tokenizer:
  """A saved word vocabulary (.json), a SentencePiece model (.model), or a
  released model's own tokenizer: 'clip' (`ClipBpeTokenizer` with open_clip's
  vocabulary), 'clip:MERGES' (with that merges file) or 'siglip:MODEL'
  (`SiglipTokenizer` on that SentencePiece model)."""
  kind, sep, arg = path.partition(":")
  if kind == "clip":
    return ClipBpeTokenizer(arg or None)
  if kind == "siglip" and sep:
    return SiglipTokenizer.load(arg)
  if path.endswith(".json"):
    return WordTokenizer.load(path)
  if path.endswith(".model"):
    return SentencePieceTokenizer.load(path)
  raise ValueError(f"load_tokenizer: {path} is neither a .json word vocabulary "
                   "nor a SentencePiece .model file, 'clip[:MERGES]' or "
                   "'siglip:MODEL'.")
