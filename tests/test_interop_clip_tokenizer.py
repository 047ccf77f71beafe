"""ClipBpeTokenizer against open_clip.tokenize, token for token."""
import gzip
import pickle

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")

from mmtx.data import tokenizers as T  # noqa: E402

HARD = [
    "",
    "   ",
    "a photo of a cat.",
    "A PHOTO OF A DOG!!! (wow)",
    "hello!",                                   # '!' is id 0 in CLIP's vocab
    "Crème brûlée à la française, naïve café, Ærøskøbing, Straße",
    "e\u0301 decomposed accent vs \u00e9 composed",
    "Ça va? ¿Qué tal? ¡Olé!",
    "日本語のテキストと中文文本，한국어 텍스트",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم שלום עולם",
    "नमस्ते दुनिया, ภาษาไทย",
    "emoji 😀😃😄 👩‍👩‍👧‍👦 🇫🇷 ❤️ 👍🏽",
    "HTML &amp; entities &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;x&#39; &amp;amp;",
    "&lt;start_of_text&gt; and <end_of_text> inside the text",
    "punctuation runs ...,,,;;;!!!???---___***~~~ ''' \"\"\" ()[]{}<>",
    "contractions: it's, don't, we're, they've, I'm, we'll, he'd, 'S 'ſ",
    "numbers 1234567890 3.14159 1,000,000 2nd 42nd ½ ² Ⅻ ٣",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em\u3000ideographic spaces",
    "curly “quotes” and ‘apostrophes’ – dashes — … ellipsis",
    "mojibake: CafÃ© â€œquotedâ€\x9d",
    "fullwidth ＡＢＣ１２３ and ligatures ﬁ ﬂ",
    "control\x00chars\x07and\x1bzero\u200bwidth\u200djoiners",
    "url https://example.com/a_b-c?d=e&f=g#h @user #hashtag",
    "x" * 300,
    " ".join(["a very long caption that goes on and on"] * 30),
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "MiXeD cAsE wOrDs İstanbul ǅ ﬀ",
]


@pytest.fixture(scope="module")
def tok():
  return T.ClipBpeTokenizer()


@pytest.mark.parametrize("max_len", [77, 16, 5])
def test_ids_equal_open_clip_tokenize(tok, max_len):
  want = open_clip.tokenize(HARD, context_length=max_len).numpy()
  ids, mask = tok.encode_batch(HARD, max_len)
  assert ids.dtype == np.int32 and ids.shape == (len(HARD), max_len)
  for text, got, ref in zip(HARD, ids, want):
    np.testing.assert_array_equal(got, ref, err_msg=repr(text))
  # Truncated rows keep the end token last; the mask covers start..end, also
  # where a content id is 0 ('!').
  lengths = mask.sum(axis=1)
  assert (ids[np.arange(len(HARD)), lengths - 1] == tok.eos_id).all()
  assert (ids[:, 0] == tok.bos_id).all()


def test_ids_equal_open_clip_encoder_and_decoder(tok):
  ref = open_clip.tokenizer._tokenizer  # pylint: disable=protected-access
  assert tok.vocab_size == ref.vocab_size == 49408
  assert (tok.bos_id, tok.eos_id) == (ref.sot_token_id, ref.eot_token_id)
  for text in HARD:
    ids = tok.encode(text)
    assert ids == ref.encode(text), repr(text)
    if tok.bos_id not in ids and tok.eos_id not in ids:  # decode stops there
      assert tok.decode(ids) == ref.decode(ids).strip(), repr(text)


def test_plain_merges_file_and_errors(tok, tmp_path):
  lines = gzip.open(tok.bpe_path).read().decode("utf-8")
  path = tmp_path / "merges.txt"
  path.write_text(lines, encoding="utf-8")
  plain = T.ClipBpeTokenizer(str(path))
  np.testing.assert_array_equal(plain.encode_batch(HARD, 20)[0],
                                tok.encode_batch(HARD, 20)[0])
  again = pickle.loads(pickle.dumps(plain))  # grain workers pickle it
  assert again.encode(HARD[5]) == tok.encode(HARD[5])
  short = tmp_path / "short.txt"
  short.write_text("#version\na b\n", encoding="utf-8")
  with pytest.raises(ValueError, match="merges"):
    T.ClipBpeTokenizer(str(short))
