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
        f.write(json.dumps({"filepath": f"{split}/{i}.png", "title": cs}) + "\n")
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


def _batches(name, data_dir, split, task, words, n, **kw):
  it, info = data.get_dataset(name, split, task, batch_size=8, seed=3,
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
      names = lambda i, b: [(i.qtypes[t], i.qsubtypes[t][s]) for t, s in  # noqa: E731
                            zip(b["qtype"].ravel(), b["qsubtype"].ravel())]
      assert names(got_info, g) == names(info, w)
      ids = g["answer_ids"]
      want_ids = np.where(w.get("question_valid", True), w["answer"], -2)
      np.testing.assert_array_equal(ids, np.repeat(want_ids[..., None], 10, -1))
