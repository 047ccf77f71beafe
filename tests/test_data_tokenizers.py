"""Word and SentencePiece tokenizers: fixed special ids, round trips,
padding/truncation against hand-written arrays, save/load."""
import io
import pickle

import numpy as np
import pytest
import sentencepiece as spm

from mmtx.data import tokenizers as T

CORPUS = ["what is the shape of the red object?",
          "is the blue object on the left or on the right?",
          "how many objects have the same shape as the gray object?",
          "a red circle at the top left, and a blue square.",
          "what color is the object closest to it?"] * 20


def test_special_ids_are_fixed():
  assert (T.PAD, T.BOS, T.EOS, T.MASK, T.SEP, T.UNK) == (0, 1, 2, 3, 4, 5)
  assert T.SPECIAL_TOKENS == ("<pad>", "<bos>", "<eos>", "<mask>", "<sep>", "<unk>")


def test_word_tokenizer_by_hand(tmp_path):
  tok = T.WordTokenizer.fit(["b a a ?", "a c"])
  # Counts a:3, b:1, c:1, ?:1 -> a first, then ties alphabetical.
  assert tok.words == ["a", "?", "b", "c"] and tok.vocab_size == 10
  assert tok.encode("A b, zz?") == [6, 8, T.UNK, T.UNK, 7]   # ',' and 'zz' unknown
  assert tok.decode([T.BOS, 6, 8, 7, T.EOS, 9, 9]) == "a b?"  # stops at eos
  assert tok.decode([6, T.SEP, 9, T.MASK]) == "a <sep> c <mask>"
  path = str(tmp_path / "words.json")
  tok.save(path)
  again = T.load_tokenizer(path)
  assert again.words == tok.words and again.encode("c a") == [9, 6]


def test_word_round_trip():
  tok = T.WordTokenizer.fit(CORPUS)
  for text in CORPUS[:5]:
    ids = tok.encode(text)
    assert min(ids) >= T.NUM_SPECIAL
    assert tok.decode(ids) == text


def test_pad_and_truncate_by_hand():
  ids, mask = T.pad_sequences([[7, 8, 9, 10], [7]], 5)
  np.testing.assert_array_equal(ids, [[1, 7, 8, 9, 2], [1, 7, 2, 0, 0]])
  np.testing.assert_array_equal(mask, ids != 0)
  ids, _ = T.pad_sequences([[7, 8, 9, 10]], 5, truncate="left")
  np.testing.assert_array_equal(ids, [[1, 8, 9, 10, 2]])
  ids, _ = T.pad_sequences([[7, 8, 9, 10]], 3, add_bos=False)
  np.testing.assert_array_equal(ids, [[7, 8, 2]])
  assert ids.dtype == np.int32
  with pytest.raises(ValueError, match="max_len"):
    T.pad_sequences([[7]], 2)
  tok = T.WordTokenizer(["hello", "world"])
  ids, mask = tok.encode_batch(["hello world", "world"], 6)
  np.testing.assert_array_equal(ids, [[1, 6, 7, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
  assert mask.dtype == bool and mask.sum() == 7


def test_sentencepiece_native_ids(tmp_path):
  tok = T.SentencePieceTokenizer.train(CORPUS, vocab_size=80)
  sp = tok.sp
  assert tok.offset == 0
  assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 5)
  assert sp.id_to_piece(3) == "<mask>" and sp.id_to_piece(4) == "<sep>"
  for text in CORPUS[:5]:
    ids = tok.encode(text)
    assert min(ids) >= T.NUM_SPECIAL or T.UNK in ids
    assert tok.decode(ids) == text
  ids, mask = tok.encode_batch(CORPUS[:2], 8)
  assert ids.shape == (2, 8) and (ids[:, 0] == T.BOS).all() and (ids[:, -1] == T.EOS).all()
  assert tok.decode(ids[0]) == T.SentencePieceTokenizer(tok.model_proto).sp.decode(
      tok.encode(CORPUS[0])[:6])
  path = str(tmp_path / "sp.model")
  tok.save(path)
  again = T.load_tokenizer(path)
  assert again.encode(CORPUS[1]) == tok.encode(CORPUS[1])
  assert pickle.loads(pickle.dumps(tok)).encode(CORPUS[2]) == tok.encode(CORPUS[2])


def test_sentencepiece_foreign_model_is_shifted():
  # A model with SentencePiece's default ids (unk=0, bos=1, eos=2, no pad).
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf,
                                 vocab_size=60, hard_vocab_limit=False, minloglevel=2)
  raw = spm.SentencePieceProcessor(model_proto=buf.getvalue())
  tok = T.SentencePieceTokenizer(buf.getvalue())
  assert tok.offset == 6 and tok.vocab_size == raw.vocab_size() + 6
  text = CORPUS[0]
  assert tok.encode(text) == [i + 6 for i in raw.encode(text)]
  assert tok.decode(tok.encode(text)) == text
  assert tok.encode("~")[-1] == T.UNK          # raw's unk (0) -> 5
  ids, _ = tok.encode_batch([text], 6)
  assert ids[0, 0] == T.BOS and ids[0, -1] == T.EOS
