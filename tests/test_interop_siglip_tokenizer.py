"""mmtx's SiglipTokenizer against transformers' SiglipTokenizer on the same
(small, trained here) SentencePiece model, id for id."""
import io
import pickle

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from mmtx.data import tokenizers as T  # noqa: E402

CORPUS = ["a photo of a cat", "a photo of a dog on the grass",
          "two red circles and a blue square", "the quick brown fox jumps",
          "café crème brûlée naïve", "日本語のテキスト", "numbers 123 456"] * 30
HARD = [
    "", "   ", "A Photo Of A CAT.", "a photo, of a dog!!! (wow) ...",
    "ΟΔΟΣ Σ final sigma", "İstanbul ǅ ß", "Crème  brûlée\tà\nla\r\nfrançaise",
    "café — “quoted” ‘text’ … 😀 👍🏽", "日本語の　テキスト",
    "special </s> inside and <unk> too", "ends with eos </s>", "</S> <UNK>",
    "lead ▁ underscore ▁▁ and _ underscore", "\u00a0nbsp\u2003em spaces ",
    "fullwidth ＡＢＣ１２３ ligature ﬁ", "x" * 200,
    " ".join(["a long caption that goes on"] * 20),
]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=120,
      model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
      minloglevel=2)
  path = tmp_path_factory.mktemp("sp") / "spiece.model"
  path.write_bytes(buf.getvalue())
  return str(path)


@pytest.mark.parametrize("max_len", [64, 8, 2])
def test_ids_equal_transformers_siglip_tokenizer(model_file, max_len):
  ref = transformers.SiglipTokenizer(vocab_file=model_file)
  want = ref(HARD, padding="max_length", truncation=True, max_length=max_len)
  tok = T.SiglipTokenizer.load(model_file)
  ids, mask = tok.encode_batch(HARD, max_len)
  for text, got, exp in zip(HARD, ids, want["input_ids"]):
    np.testing.assert_array_equal(got, exp, err_msg=repr(text))
  np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"], bool))
  for text in HARD:
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False), \
        repr(text)
  again = pickle.loads(pickle.dumps(tok))
  assert again.encode(HARD[2]) == tok.encode(HARD[2])
