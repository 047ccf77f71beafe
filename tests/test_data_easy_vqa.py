"""easy-VQA builder against the easy-vqa package's own files and API, and the
PNG reader against PNGs written here with every row filter."""
import collections
import struct
import zlib

import numpy as np
import pytest

import easy_vqa as pkg
from mmtx.data import easy_vqa


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  b = easy_vqa.EasyVqa(data_dir=str(tmp_path_factory.mktemp("easy_vqa")))
  b.download_and_prepare()
  return b


def test_counts_match_the_package(builder):
  for split, get_q, get_ims in (
      ("train", pkg.get_train_questions, pkg.get_train_image_paths),
      ("test", pkg.get_test_questions, pkg.get_test_image_paths)):
    texts, answers, image_ids = get_q()
    source = builder.as_data_source(split)
    assert len(source) == len(get_ims()) == len(set(image_ids))
    records = [source[i] for i in range(len(source))]
    assert sum(len(r["question"]) for r in records) == len(texts)
    # Question by question: same text and answer for each image.
    want = collections.defaultdict(list)
    for t, a, i in zip(texts, answers, image_ids):
      want[i].append((t, a))
    vocab = pkg.get_answers()
    for r in records[:200]:
      got = [(q.decode(), vocab[a]) for q, a in zip(r["question"], r["answer"])]
      assert got == want[int(r["image_id"])]
  sizes = [len(builder.as_data_source(s)) for s in ("train", "test")]
  assert sizes == [4000, 1000]
  assert builder.info.metadata["answers"] == pkg.get_answers()
  assert len(pkg.get_answers()) == 13


def test_images_show_the_answered_color(builder):
  # "what color is ..." answered 'blue' -> the most saturated pixels are blue.
  rgb = {"red": 0, "green": 1, "blue": 2}
  vocab = pkg.get_answers()
  checked = 0
  source = builder.as_data_source("test")
  for i in range(300):
    r = source[i]
    colors = {vocab[a] for a in r["answer"]} & set(rgb)
    if not colors:
      continue
    img = r["image"].astype(int)
    sat = img.max(-1) - img.min(-1)
    shape_px = img[sat > 150]
    assert len(shape_px) > 20, r["id"]
    assert np.argmax(shape_px.mean(0)) == rgb[colors.pop()], r["id"]
    checked += 1
  assert checked > 20


def test_captions_and_qtypes(builder):
  r = builder.as_data_source("train")[0]
  # Image 0 of train: "what is the blue shape?" -> rectangle.
  assert r["id"] == b"train_00000"
  assert r["caption"][0] == b"a blue rectangle."
  vocab = pkg.get_answers()
  for a, t in zip(r["answer"], r["qtype"]):
    kind = ("shape" if vocab[a] in ("circle", "rectangle", "triangle") else
            "yes/no" if vocab[a] in ("yes", "no") else "color")
    assert easy_vqa.QTYPES[t] == kind


def test_infer_attributes_by_hand():
  qa = [("is there not a red shape?", "yes"),          # not red
        ("does the image contain a circle?", "no"),    # not a circle
        ("is there a triangle in the image?", "yes"),  # a triangle
        ("is a blue shape present?", "no")]
  assert easy_vqa.infer_attributes(qa) == {"shape": "triangle", "color": None}
  qa = [("what color is the rectangle?", "teal")]
  assert easy_vqa.infer_attributes(qa) == {"shape": "rectangle", "color": "teal"}
  assert easy_vqa.make_captions(None, "teal")[0] == "a teal shape."


# ------------------------------------------------------------ PNG reader
def _write_png(path, img, filters):
  """A PNG encoder written for the test: applies filter `filters[y]` to row y."""
  h, w, c = img.shape
  bpp = c
  raw = bytearray()
  prev = [0] * (w * c)
  for y in range(h):
    row = img[y].reshape(-1).tolist()
    f = filters[y]
    out = []
    for i, x in enumerate(row):
      a = row[i - bpp] if i >= bpp else 0
      b = prev[i]
      cc = prev[i - bpp] if i >= bpp else 0
      if f == 0: pred = 0
      elif f == 1: pred = a
      elif f == 2: pred = b
      elif f == 3: pred = (a + b) // 2
      else:
        p = a + b - cc
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
        pred = a if (pa <= pb and pa <= pc) else b if pb <= pc else cc
      out.append((x - pred) % 256)
    raw += bytes([f] + out)
    prev = row
  def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body +
            struct.pack(">I", zlib.crc32(kind + body)))
  color = {1: 0, 3: 2, 4: 6}[c]
  header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
  data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
          chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))
  with open(path, "wb") as fh:
    fh.write(data)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_read_png_all_filters(tmp_path, channels):
  rng = np.random.default_rng(channels)
  img = rng.integers(0, 256, size=(10, 7, channels), dtype=np.uint8)
  path = str(tmp_path / "x.png")
  _write_png(path, img, filters=[0, 1, 2, 3, 4, 4, 3, 2, 1, 0])
  got = easy_vqa.read_png(path)
  want = np.repeat(img, 3, -1) if channels == 1 else img[..., :3]
  np.testing.assert_array_equal(got, want)


def test_read_png_rejects_corruption(tmp_path):
  path = str(tmp_path / "x.png")
  _write_png(path, np.zeros((2, 2, 3), np.uint8), [0, 0])
  data = bytearray(open(path, "rb").read())
  data[20] ^= 1                                    # inside IHDR -> CRC fails
  open(path, "wb").write(bytes(data))
  with pytest.raises(ValueError, match="CRC"):
    easy_vqa.read_png(path)
