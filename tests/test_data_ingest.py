"""`python -m mmtx.data ingest`: every format on generated files.

The references are independent of the ingest code: the built-in
Sort-of-CLEVR builder's batches (the equivalence test: its images written
as PNG files, its captions and questions in each format), the source rows
the tests write, and `mmtx.metrics.vqa_accuracy` on answer strings."""
import collections
import csv
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmtx import data
from mmtx import metrics
from mmtx.data import build as build_lib
from mmtx.data import images
from mmtx.data import ingest
from mmtx.data import ingest_sources
from mmtx.data import sort_of_clevr as soc

NAME = "sort_of_clevr/tiny"   # 64 train / 16 test images
SPLITS = ("train", "test")
CAPTION_FORMATS = ("csv", "tsv", "jsonl", "coco", "webdataset", "parquet")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  data.ensure_built(NAME, d, verbose=False)
  return d


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def _text(x):
  return x.decode() if isinstance(x, bytes) else str(x)


@pytest.fixture(scope="module")
def export(data_dir, tmp_path_factory):
  """The built-in dataset written out: PNG files plus, per format, the files
  naming them with the captions (or questions). Returns {format: {split:
  path relative to the export folder}} and the folder."""
  root = str(tmp_path_factory.mktemp("export"))
  builder = build_lib.get_builder(NAME, data_dir)
  out = collections.defaultdict(dict)
  for split in SPLITS:
    source = builder.as_data_source(split)
    recs = [source[i] for i in range(len(source))]
    os.makedirs(os.path.join(root, split))
    pngs = []
    for i, r in enumerate(recs):
      pngs.append(_png(r["image"]))
      with open(os.path.join(root, split, f"{i}.png"), "wb") as f:
        f.write(pngs[-1])
    caps = [[_text(c) for c in r["caption"]] for r in recs]
    rows = [(f"{split}/{i}.png", c) for i, cs in enumerate(caps) for c in cs]
    for fmt, sep in (("csv", ","), ("tsv", "\t")):
      path = f"{split}.{fmt}"
      with open(os.path.join(root, path), "w", newline="") as f:
        w = csv.writer(f, delimiter=sep)
        w.writerow(["filepath", "title"])
        w.writerows(rows)
      out[fmt][split] = path
    with open(os.path.join(root, f"{split}.jsonl"), "w") as f:
      for i, cs in enumerate(caps):
        row = {"filepath": f"{split}/{i}.png", "title": cs}
        f.write(json.dumps(row) + "\n")
    out["jsonl"][split] = f"{split}.jsonl"
    coco = {"images": [{"id": 100 + i, "file_name": f"{i}.png"}
                       for i in range(len(recs))],
            "annotations": [{"image_id": 100 + i, "id": 7 * i + j,
                             "caption": c}
                            for i, cs in enumerate(caps)
                            for j, c in enumerate(cs)]}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"captions_{split}.json"),
              "w") as f:
      json.dump(coco, f)
    out["coco"][split] = f"annotations/captions_{split}.json"
    shards = 2   # webdataset: two tar shards of consecutive records
    per = -(-len(recs) // shards)
    for s in range(shards):
      with tarfile.open(os.path.join(root, f"{split}-{s:03d}.tar"), "w") as t:
        for i in range(s * per, min(len(recs), (s + 1) * per)):
          for name, payload in ((f"{i:05d}.png", pngs[i]),
                                (f"{i:05d}.json",
                                 json.dumps({"captions": caps[i]}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            t.addfile(info, io.BytesIO(payload))
    out["webdataset"][split] = f"{split}-{{000..{shards - 1:03d}}}.tar"
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    pq.write_table(pa.table({"image": pngs, "text": caps}),
                   os.path.join(root, f"{split}.parquet"), row_group_size=16)
    out["parquet"][split] = f"{split}.parquet"
    # VQA v2 style: questions + annotations (10 answers each) + images.
    qs, anns = [], []
    for i, r in enumerate(recs):
      for j, q in enumerate(r["question"]):
        qid = 1000 * i + j
        t, s = int(r["qtype"][j]), int(r["qsubtype"][j])
        qs.append({"image_id": i, "question": _text(q), "question_id": qid})
        anns.append({"question_id": qid, "image_id": i,
                     "answer_type": soc.QTYPES[t],
                     "question_type": soc.QSUBTYPES[t][s],
                     "answers": [{"answer": soc.ANSWERS[r["answer"][j]],
                                  "answer_id": k + 1} for k in range(10)]})
    with open(os.path.join(root, f"v2_OpenEnded_mscoco_{split}_questions.json"),
              "w") as f:
      json.dump({"data_subtype": split, "questions": qs}, f)
    with open(os.path.join(root, f"v2_mscoco_{split}_annotations.json"),
              "w") as f:
      json.dump({"annotations": anns}, f)
    out["vqa"][split] = f"v2_OpenEnded_mscoco_{split}_questions.json"
  with open(os.path.join(root, "answers.txt"), "w") as f:
    f.write("\n".join(soc.ANSWERS) + "\n")
  return dict(out), root


def _ingest(export, fmt, tmp_path, **kw):
  sources, root = export
  splits = dict(sources[fmt])
  kw.setdefault("workers", 0)
  if fmt == "vqa":
    kw.update(answers_file=os.path.join(root, "answers.txt"),
              image_pattern="{image_id}.png")
  ddir = str(tmp_path / "ingested")
  summary = ingest.ingest(fmt, root, "mine", splits=splits, data_dir=ddir,
                          image_size=soc.IMAGE_SIZE, verbose=False, **kw)
  return ddir, summary


def _batches(name, data_dir, split, view, words, n, **kw):
  it, info = data.get_dataset(name, split, view, batch_size=8, seed=3,
                              data_dir=data_dir, shard=(0, 1), tokenizer=words,
                              max_len=24, **kw)
  return [next(it) for _ in range(n or info.steps_per_epoch)], info


# -------------------------------------------------------- equivalence
@pytest.mark.parametrize("fmt", CAPTION_FORMATS)
def test_caption_formats_give_the_builtin_batches(fmt, export, data_dir,
                                                  tmp_path):
  """The same batches, bit for bit, as the built-in builder: a shuffled
  training stream (random caption per example) and a full test pass."""
  ddir, summary = _ingest(export, fmt, tmp_path)
  assert summary["records"] == {"train": 64, "test": 16}
  assert summary["skipped"] == {"train": {}, "test": {}}
  words = os.path.join(build_lib.get_builder(NAME, data_dir).data_dir,
                       build_lib.WORDS_FILE)
  for split, n in (("train", 3), ("test", 0)):
    want, info = _batches(NAME, data_dir, split, "contrastive", words, n)
    got, got_info = _batches("mine", ddir, split, "contrastive", words, n)
    assert got_info.num_examples == info.num_examples
    for w, g in zip(want, got):
      assert w.keys() == g.keys()
      for k in w:
        np.testing.assert_array_equal(g[k], w[k], err_msg=f"{split} {k}")


@pytest.mark.parametrize("questions_per_image", [0, 4])
def test_vqa_format_gives_the_builtin_batches(questions_per_image, export,
                                              data_dir, tmp_path):
  """VQA v2 files of the same questions: every batch key the built-in view
  has (but 'question_encoding', a Sort-of-CLEVR feature no format carries)
  bit for bit; qtype / qsubtype ids name the same types ('answer_type' /
  'question_type'), and the ten 'answer_ids' are the answer."""
  ddir, summary = _ingest(export, "vqa", tmp_path)
  assert summary["records"] == {"train": 64, "test": 16}
  words = os.path.join(build_lib.get_builder(NAME, data_dir).data_dir,
                       build_lib.WORDS_FILE)
  for split, n in (("train", 3), ("test", 0)):
    qpi = questions_per_image if split == "train" else 0
    want, info = _batches(NAME, data_dir, split, "vqa", words, n,
                          questions_per_image=qpi)
    got, got_info = _batches("mine", ddir, split, "vqa", words, n,
                             questions_per_image=qpi)
    assert got_info.answers == info.answers == soc.ANSWERS
    assert got_info.num_examples == info.num_examples
    for w, g in zip(want, got):
      assert set(g) == set(w) - {"question_encoding"} | {"answer_ids"}
      for k in set(w) - {"question_encoding", "qtype", "qsubtype"}:
        np.testing.assert_array_equal(g[k], w[k], err_msg=f"{split} {k}")
      def names(i, b):
        return [(i.qtypes[t], i.qsubtypes[t][s])
                for t, s in zip(b["qtype"].ravel(), b["qsubtype"].ravel())]
      assert names(got_info, g) == names(info, w)
      ids = g["answer_ids"]
      want_ids = np.where(w.get("question_valid", True), w["answer"], -2)
      np.testing.assert_array_equal(ids, np.repeat(want_ids[..., None], 10, -1))


# ------------------------------------------------------------ bad input
def _encoded(fmt, seed, size=(24, 32)):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format=fmt, **(
      {"lossless": True} if fmt == "WEBP" else {}))
  return buf.getvalue()


def test_bad_rows_are_skipped_counted_and_named(tmp_path):
  """A CSV whose rows are good JPEG / PNG / WebP pairs and every kind of bad
  row: the good ones are kept with their bytes unchanged, each bad one is
  counted under its reason and the first are named, in the metadata too."""
  img = tmp_path / "img"
  img.mkdir()
  good = {}
  for i, fmt in enumerate(("JPEG", "PNG", "WEBP", "JPEG")):
    name = f"ok{i}.{fmt.lower()}"
    good[name] = _encoded(fmt, i)
    (img / name).write_bytes(good[name])
  (img / "cut.jpeg").write_bytes(good["ok0.jpeg"][:len(good["ok0.jpeg"]) // 2])
  (img / "notimage.png").write_bytes(b"this is not an image")
  lines = [b"filepath,title",
           b"img/ok0.jpeg,a first caption",
           b"img/gone.jpg,a missing file",
           b"img/ok1.png,a second caption",
           b"img/cut.jpeg,a truncated jpeg",
           b"img/notimage.png,not an image",
           b"img/ok2.webp,   ",
           b"img/ok2.webp,\xff\xfe latin-1 bytes \xe9",
           b"img/ok3.jpeg",
           b"img/ok2.webp,a third caption",
           b"img/ok3.jpeg,a fourth caption"]
  (tmp_path / "pairs.csv").write_bytes(b"\n".join(lines) + b"\n")
  ddir = str(tmp_path / "out")
  summary = ingest.ingest("csv", str(tmp_path / "pairs.csv"), "pairs",
                          data_dir=ddir, workers=0, verbose=False)
  want_skipped = {"missing file": 1, "truncated image": 1,
                  "unreadable image": 1, "empty text": 1,
                  "non-UTF-8 text": 1, "missing column": 1}
  assert summary["skipped"]["train"] == want_skipped
  named = {r: k for r, k, _ in summary["skipped_examples"]["train"]}
  assert named["missing file"] == "line 3"
  assert named["missing column"] == "line 9"
  # The consecutive ok2.webp rows are one image whose one good caption stays.
  assert summary["records"]["train"] == 4
  _, info = data.get_dataset("pairs", "train", "caption", batch_size=2,
                             data_dir=ddir, shard=(0, 1), tokenizer=None,
                             image_size=16)
  assert info.metadata["ingest"]["skipped"]["train"] == want_skipped
  want = [("ok0.jpeg", ["a first caption"]), ("ok1.png", ["a second caption"]),
          ("ok2.webp", ["a third caption"]), ("ok3.jpeg", ["a fourth caption"])]
  for i, (name, caps) in enumerate(want):
    rec = info.record(i)
    assert rec["image"] == good[name]   # the source's bytes, not re-encoded
    assert [_text(c) for c in rec["caption"]] == caps


def test_bad_rows_in_other_formats(tmp_path):
  """webdataset: a key without caption, a truncated PNG and a truncated tar
  shard; JSONL: a non-UTF-8 line, a malformed line, a row without the image
  key; parquet (HF datasets' {'bytes', 'path'} image struct): a null
  image."""
  png = _encoded("PNG", 0)
  with tarfile.open(tmp_path / "a-0.tar", "w") as t:
    for name, payload in (("k1.png", png), ("k1.txt", b"one"),
                          ("k2.png", png), ("k3.png", png[:-30]),
                          ("k3.txt", b"three"), ("k4.png", png),
                          ("k4.json", b'{"caption": "four"}')):
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      t.addfile(info, io.BytesIO(payload))
  whole = (tmp_path / "a-0.tar").read_bytes()
  (tmp_path / "a-1.tar").write_bytes(whole[:len(whole) // 2 + 100])
  s = ingest.ingest("webdataset", str(tmp_path / "a-{0..1}.tar"), "wds",
                    data_dir=str(tmp_path / "o"), workers=0, verbose=False)
  # The cut shard: k1 and k2 before the cut, then the shard's error.
  assert s["skipped"]["train"] == {"no caption": 2, "truncated image": 1,
                                   "corrupt tar shard": 1}
  assert s["records"]["train"] == 3   # k1, k4; k1 again from the cut shard
  (tmp_path / "i.png").write_bytes(png)
  (tmp_path / "p.jsonl").write_bytes(
      b'{"filepath": "i.png", "title": "ok"}\n'
      b'{"filepath": "i.png", "title": "caf\xe9"}\n{"filepath": \n'
      b'{"title": "no image"}\n{"filepath": "i.png", "title": ["a", "b"]}\n')
  s = ingest.ingest("jsonl", str(tmp_path / "p.jsonl"), "js",
                    data_dir=str(tmp_path / "o"), workers=0, verbose=False)
  assert s["skipped"]["train"] == {"non-UTF-8 text": 1, "malformed row": 1,
                                   "missing column": 1}
  assert s["records"]["train"] == 1   # the two good rows name one image
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pq.write_table(pa.table({
      "image": [{"bytes": png, "path": "x.png"}, {"bytes": None, "path": "y"},
                {"bytes": png, "path": "z.png"}],
      "text": ["first", "second", "third"]}), tmp_path / "d.parquet")
  s = ingest.ingest("parquet", str(tmp_path / "d.parquet"), "pq",
                    data_dir=str(tmp_path / "o"), workers=0, verbose=False)
  assert s["skipped"]["train"] == {"missing column": 1}
  _, info = data.get_dataset("pq", "train", "caption", batch_size=1,
                             data_dir=str(tmp_path / "o"), shard=(0, 1))
  assert [_text(info.record(i)["caption"][0]) for i in range(2)] == [
      "first", "third"]


def test_a_source_wrong_as_a_whole_is_one_error_before_any_work(tmp_path):
  (tmp_path / "i.png").write_bytes(_encoded("PNG", 0))
  (tmp_path / "ok.csv").write_text("filepath,title\ni.png,a caption\n")
  (tmp_path / "cols.csv").write_text("path,caption\ni.png,a caption\n")
  (tmp_path / "gone.csv").write_text(
      "filepath,title\n" + "".join(f"x{i}.png,c\n" for i in range(40)))
  ddir = str(tmp_path / "o")
  cases = [("csv", str(tmp_path / "nope.csv"), "no such file"),
           ("webdataset", str(tmp_path / "s-{000..003}.tar"),
            "no such webdataset shard"),
           ("csv", str(tmp_path / "cols.csv"), "no column 'filepath'"),
           ("parquet", str(tmp_path / "ok.csv"), "not a parquet file"),
           ("coco", str(tmp_path / "ok.csv"), "not a JSON file"),
           ("csv", str(tmp_path / "gone.csv"), "none of the first 32 rows"),
           ("tar", str(tmp_path / "ok.csv"), "unknown format")]
  for fmt, src, message in cases:
    with pytest.raises(ingest_sources.SourceError, match=message):
      ingest.ingest(fmt, src, "mine", data_dir=ddir, workers=0, verbose=False)
  assert not os.path.exists(ddir)   # nothing was written
  ingest.ingest("csv", str(tmp_path / "ok.csv"), "mine", data_dir=ddir,
                workers=0, verbose=False)
  s = ingest.ingest("csv", str(tmp_path / "cols.csv"), "cols", data_dir=ddir,
                    workers=0, verbose=False, image_column="path",
                    text_column="caption")   # the columns named by flags
  assert s["records"] == {"train": 1}
  with pytest.raises(ingest_sources.SourceError, match="--overwrite"):
    ingest.ingest("csv", str(tmp_path / "ok.csv"), "mine", data_dir=ddir,
                  workers=0, verbose=False)


# ------------------------------------------------------------------ VQA v2
def test_vqa_v2_vocabulary_and_official_accuracy(tmp_path):
  """The answer vocabulary is the top-K normalised human answers of the
  training split; a training question with no answer in it is dropped and
  counted, a validation one is kept (answer -1); the stored answer ids give
  `metrics.vqa_question_accuracy` of the human answer strings for every
  prediction."""
  from mmtx.tasks.vqa import vqa_soft_accuracy  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  pool = ["yes", "Yes", "no", "two", "2", "2.", "red", "a red", "blue",
          "three", "green"]
  human = {}
  for split, subtype, n_images in (("train", "train2014", 6),
                                   ("val", "val2014", 3)):
    os.makedirs(tmp_path / subtype)
    qs, anns = [], []
    for i in range(n_images):
      image_id = 10 * i + (split == "val")
      (tmp_path / subtype / f"COCO_{subtype}_{image_id:012d}.jpg").write_bytes(
          _encoded("JPEG", image_id, (8, 8)))
      for j in range(3):
        qid = 100 * image_id + j
        if j == 2 and i == 0:    # no human answer in the top 3
          answers = ["purple"] * 6 + ["seven"] * 4
        else:
          answers = list(rng.choice(pool, 10, p=[.2, .1, .15, .1, .1, .05,
                                                 .1, .05, .05, .05, .05]))
        human[(split, image_id, j)] = answers
        qs.append({"image_id": image_id, "question": f"question {j}?",
                   "question_id": qid})
        anns.append({"question_id": qid, "image_id": image_id,
                     "answer_type": ("yes/no", "number", "other")[j],
                     "question_type": f"type {j % 2}",
                     "answers": [{"answer": a} for a in answers]})
    (tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(
        json.dumps({"data_subtype": subtype, "questions": qs}))
    (tmp_path / f"v2_mscoco_{subtype}_annotations.json").write_text(
        json.dumps({"annotations": anns}))
  ddir = str(tmp_path / "out")
  summary = ingest.ingest(
      "vqa", str(tmp_path), "vqa2", data_dir=ddir, workers=0, verbose=False,
      top_k=3, splits={"train": "v2_OpenEnded_mscoco_train2014_questions.json",
                       "val": "v2_OpenEnded_mscoco_val2014_questions.json"})
  counts = collections.Counter(
      metrics.vqa_normalize_answer(a) for (s, _, _), answers in human.items()
      if s == "train" for a in answers)
  top = [a for a, _ in counts.most_common(3)]
  assert counts.most_common(4)[2][1] > counts.most_common(4)[3][1]  # no tie
  assert summary["skipped"] == {"train": {"answer not in vocabulary": 1},
                                "val": {}}
  it, info = data.get_dataset("vqa2", "val", "vqa", batch_size=9,
                              data_dir=ddir, shard=(0, 1))
  assert list(info.answers) == top
  assert info.qtypes == ("yes/no", "number", "other")
  batch = next(it)
  assert batch["valid"].all()
  for pred in range(3):
    got = np.asarray(vqa_soft_accuracy(np.full(9, pred), batch["answer_ids"]))
    for row in range(9):
      image_id = int(info.record(int(batch["index"][row]))["id"])
      want = metrics.vqa_question_accuracy(
          top[pred], human[("val", image_id, row % 3)])
      np.testing.assert_allclose(got[row], want, rtol=1e-6)
  for row in range(9):   # the label: the most frequent known answer
    image_id = int(info.record(int(batch["index"][row]))["id"])
    known = collections.Counter(
        metrics.vqa_normalize_answer(a)
        for a in human[("val", image_id, row % 3)]
        if metrics.vqa_normalize_answer(a) in top)
    want = top.index(known.most_common(1)[0][0]) if known else -1
    assert batch["answer"][row] == want


# ----------------------------------------------------- CLI and workers
def test_cli_with_worker_processes_writes_the_same_records(export, tmp_path):
  """`python -m mmtx.data ingest` with 2 worker processes writes the records
  of the in-process run, in the source's order, and prints the summary."""
  sources, root = export
  split_arg = ",".join(f"{k}={v}" for k, v in sources["csv"].items())
  cli = str(tmp_path / "cli")
  out = subprocess.run(
      [sys.executable, "-m", "mmtx.data", "ingest", "csv", root, "--name",
       "mine", "--split", split_arg, "--data_dir", cli, "--workers", "2",
       "--image_size", "75"], capture_output=True, text=True, timeout=300,
      check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "train: 64 records" in out.stdout and "test: 16 records" in out.stdout
  local, _ = _ingest(export, "csv", tmp_path, workers=0)
  for split in SPLITS:
    a = ingest.open_builder("mine", cli).as_data_source(split)
    b = ingest.open_builder("mine", local).as_data_source(split)
    assert len(a) == len(b)
    for i in range(len(a)):
      ra, rb = a[i], b[i]
      assert ra["id"] == rb["id"] and ra["image"] == rb["image"]
      np.testing.assert_array_equal(ra["caption"], rb["caption"])
  bad = subprocess.run(
      [sys.executable, "-m", "mmtx.data", "ingest", "csv",
       str(tmp_path / "nope.csv"), "--name", "x", "--data_dir", cli],
      capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode == 2 and "no such file" in bad.stderr
  assert "Traceback" not in bad.stderr


# ------------------------------------------------- decode and augment
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """12 JPEG 'photos' of 40x30 with captions, half saying left or right;
  ingested with --image_size 16."""
  root = tmp_path_factory.mktemp("photos")
  rows = []
  for i in range(12):
    (root / f"{i}.jpg").write_bytes(_encoded("JPEG", i, (30, 40)))
    side = ("a dog on the left", "the right cat")[i % 2]
    rows.append(f"{i}.jpg\t{side if i % 4 < 2 else 'a dog and a cat'}")
  (root / "p.tsv").write_text("filepath\ttitle\n" + "\n".join(rows) + "\n")
  ddir = str(root / "out")
  ingest.ingest("tsv", str(root / "p.tsv"), "photos", data_dir=ddir,
                workers=0, image_size=16, verbose=False)
  return ddir, root


def test_eval_view_is_the_center_square_resized_and_normalised(photos):
  ddir, root = photos
  for norm in ("minus_one_one", "clip"):
    it, _ = data.get_dataset("photos", "train", "caption", batch_size=12,
                             shuffle=False, data_dir=ddir, shard=(0, 1),
                             normalize=norm)
    batch = next(it)
    assert batch["image"].shape == (12, 16, 16, 3)
    for row in range(12):
      pil = Image.open(root / f"{row}.jpg").convert("RGB")
      # 40 x 30: the center square is columns 5..35, all 30 rows.
      ref = np.asarray(pil.resize((16, 16), Image.Resampling.BILINEAR,
                                  box=(5, 0, 35, 30)), np.float64)
      if norm == "clip":
        mean = np.array([0.48145466, 0.4578275, 0.40821073])
        std = np.array([0.26862954, 0.26130258, 0.27577711])
        ref = (ref / 255 - mean) / std
      else:
        ref = ref / 127.5 - 1
      np.testing.assert_allclose(batch["image"][row], ref, atol=1e-5)


def test_training_crops_are_seeded_by_position_and_resume(photos):
  ddir, _ = photos

  def stream(seed, **kw):
    it, _ = data.get_dataset("photos", "train", "contrastive", batch_size=4,
                             seed=seed, augment=True, hflip=True,
                             data_dir=ddir, shard=(0, 1), **kw)
    return it

  a, b, c = stream(0), stream(0, num_threads=1), stream(1)
  first = [next(a) for _ in range(4)]
  again = [next(b) for _ in range(4)]
  other = [next(c) for _ in range(4)]
  for x, y in zip(first, again):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(first[0]["image"], other[0]["image"])
  it = stream(0)
  next(it), next(it)
  state = it.get_state()
  resumed = stream(0)
  resumed.set_state(state)
  for want in first[2:]:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  # A training crop is not the eval view's center square.
  ev, _ = data.get_dataset("photos", "train", "contrastive", batch_size=12,
                           shuffle=False, data_dir=ddir, shard=(0, 1))
  center = next(ev)["image"]
  batch = first[0]
  assert not any(np.allclose(batch["image"][r], center[batch["index"][r]])
                 for r in range(4))


def test_flip_only_where_no_text_says_left_or_right():
  """With the crop fixed to the whole (square) image, a training view is
  the image or its mirror: never the mirror for a record whose question,
  answer or caption says left or right; both for one that does not."""
  from mmtx.data import views  # pylint: disable=g-import-not-at-top
  square = _encoded("PNG", 0, (16, 16))
  pixels = images.decode(square) / 127.5 - 1
  policy = images.Policy(size=16, crop_scale=(1.0, 1.0),
                         crop_ratio=(1.0, 1.0), hflip=True)
  tok = data.WordTokenizer.fit(["x"])
  cases = [("caption", {"caption": np.array([b"a dog", b"the LEFT cat"],
                                             dtype=object)}, False),
           ("caption", {"caption": np.array([b"a dog", b"bright leftovers"],
                                             dtype=object)}, True),
           ("vqa", {"question": np.array([b"what is it?"], dtype=object),
                    "answer": np.array([1], np.int32),
                    "qtype": np.array([0], np.int32)}, False),
           ("vqa", {"question": np.array([b"what is it?"], dtype=object),
                    "answer": np.array([0], np.int32),
                    "qtype": np.array([0], np.int32)}, True)]
  for view, fields, flips in cases:
    spec = views.ViewSpec(view=view, tokenizer=tok, max_len=8,
                          image_shape=(16, 16, 3), answers=("dog", "right"),
                          augment=True, image_policy=policy)
    seen = set()
    for seed in range(24):
      ex = views.make_example(spec, dict(fields, id="r", image=square), 0, 0,
                              np.random.default_rng(seed))
      if np.allclose(ex["image"], pixels, atol=1e-6):
        seen.add("same")
      elif np.allclose(ex["image"], pixels[:, ::-1], atol=1e-6):
        seen.add("mirror")
      else:
        seen.add("other")
    assert seen == ({"same", "mirror"} if flips else {"same"}), (fields, seen)


def test_random_box_stays_in_its_area_and_ratio_ranges():
  rng = np.random.default_rng(0)
  for _ in range(200):
    w, h = int(rng.integers(20, 300)), int(rng.integers(20, 300))
    l, t, r, b = images.random_box(w, h, rng, (0.3, 0.9), (0.75, 4 / 3))
    assert 0 <= l < r <= w and 0 <= t < b <= h
    if (r - l, b - t) != (min(w, h),) * 2:    # not the fallback square
      assert 0.3 * w * h - w - h <= (r - l) * (b - t) <= 0.9 * w * h + w + h
      assert 0.75 - 0.1 <= (r - l) / (b - t) <= 4 / 3 + 0.1


def test_large_jpeg_decodes_at_reduced_scale_close_to_full_decode():
  """A 512x384 JPEG cropped to 96: decoded at reduced DCT scale, the input
  stays within a few levels of the full decode's center square (PIL)."""
  y, x = np.mgrid[0:384, 0:512]
  pixels = np.stack([128 + 100 * np.sin(x / 30), 128 + 100 * np.cos(y / 25),
                     (x + y) % 256], -1).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
  got = images.preprocess(buf.getvalue(), images.Policy(size=96), None)
  full = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
  ref = np.asarray(full.resize((96, 96), Image.Resampling.BILINEAR,
                               box=(64, 0, 448, 384)), np.float64) / 127.5 - 1
  assert got.shape == (96, 96, 3)
  assert np.abs(got - ref).mean() < 0.02   # ~2.5 of 255 levels


@pytest.mark.slow
def test_image_benchmark_quick(tmp_path, capsys):
  """experiments/benchmarks/image_input.py end to end on 200 pairs: every
  row of its table is printed with positive rates (no timing asserted)."""
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..",
                                  "experiments", "benchmarks"))
  import image_input  # pylint: disable=g-import-not-at-top
  rows = image_input.run(image_input.argparse.Namespace(
      pairs=200, per_shard=50, workers=1, batches=2, batch_size=16,
      rounds=1, out=str(tmp_path)))
  assert [r[0] for r in rows] == [0, 1]
  assert all(min(mm) > 0 and min(peer) > 0 for _, mm, peer in rows)
  out = capsys.readouterr().out
  assert "ingest, 1 worker(s): 200 pairs" in out
  assert "| mmtx / peer per core |" in out


def test_a_cut_shard_is_named_when_read(tmp_path):
  """array_record reads a shard cut before its footer as empty records: the
  pipeline names the shard, the record and the ingest command instead."""
  rows = []
  for i in range(40):
    (tmp_path / f"{i}.png").write_bytes(_encoded("PNG", i, (8, 8)))
    rows.append(f"{i}.png,caption {i}")
  (tmp_path / "p.csv").write_text("filepath,title\n" + "\n".join(rows) + "\n")
  ddir = str(tmp_path / "out")
  ingest.ingest("csv", str(tmp_path / "p.csv"), "cut", data_dir=ddir,
                workers=0, verbose=False)
  [shard] = [f for f in os.listdir(ingest.dataset_dir("cut", ddir))
             if ".array_record-" in f]
  path = os.path.join(ingest.dataset_dir("cut", ddir), shard)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(OSError, match=f"record 0 of cut split 'train' from "
                     f".*{shard}.*python -m mmtx.data ingest csv"):
    it, _ = data.get_dataset("cut", "train", "caption", batch_size=8,
                             data_dir=ddir, shard=(0, 1), cache_mb=0)
    next(it)


def test_max_side_shrinks_only_larger_images(tmp_path):
  """--max_side 50: a 100x60 JPEG and PNG are stored at 50x30 in their own
  format (close to a PIL resize of the source), a 40x24 one byte for
  byte as it was."""
  sources = {"big.jpg": _encoded("JPEG", 0, (60, 100)),
             "big.png": _encoded("PNG", 1, (60, 100)),
             "small.png": _encoded("PNG", 2, (24, 40))}
  for name, payload in sources.items():
    (tmp_path / name).write_bytes(payload)
  (tmp_path / "p.csv").write_text(
      "filepath,title\n" + "".join(f"{n},caption of {n}\n" for n in sources))
  ddir = str(tmp_path / "out")
  ingest.ingest("csv", str(tmp_path / "p.csv"), "small", data_dir=ddir,
                workers=0, max_side=50, verbose=False)
  src = ingest.open_builder("small", ddir).as_data_source("train")
  stored = {_text(src[i]["caption"][0]).split()[-1]: src[i]["image"]
            for i in range(len(src))}
  assert stored["small.png"] == sources["small.png"]
  for name, fmt in (("big.jpg", "JPEG"), ("big.png", "PNG")):
    image = Image.open(io.BytesIO(stored[name]))
    assert image.format == fmt and image.size == (50, 30)
    ref = Image.open(io.BytesIO(sources[name])).convert("RGB").resize(
        (50, 30), Image.Resampling.BICUBIC)
    diff = np.abs(np.asarray(image.convert("RGB"), np.float64)
                  - np.asarray(ref, np.float64))
    assert diff.mean() < (1e-9 if fmt == "PNG" else 12)


def test_builtin_datasets_take_the_model_normalisation(data_dir):
  """normalize='imagenet' on a built-in dataset: the record's pixels by the
  ImageNet constants; with augment, the same jitter as minus_one_one,
  mapped from [-1, 1] to those constants."""
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])

  def first(**kw):
    it, info = data.get_dataset(NAME, "train", "caption", batch_size=4,
                                seed=5, data_dir=data_dir, shard=(0, 1), **kw)
    return next(it), info

  batch, info = first(normalize="imagenet", shuffle=False)
  for row in range(4):
    rec = info.record(int(batch["index"][row]))
    np.testing.assert_allclose(batch["image"][row],
                               (rec["image"] / 255 - mean) / std, atol=1e-5)
  jittered, _ = first(augment=True)
  renormed, _ = first(augment=True, normalize="imagenet")
  np.testing.assert_allclose(renormed["image"],
                             ((jittered["image"] + 1) / 2 - mean) / std,
                             atol=1e-5)
