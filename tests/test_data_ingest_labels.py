"""Class labels for zero-shot evaluation on a user's image-text data: an
image-caption source with a --label_column column (webdataset: KEY.cls)
gives records a 'label' int32 [K], ids into the metadata's 'labels' (the
training split's class names, sorted), as clips have, which
`--config.zero_shot.label=label.0` reads; rows without a label, or with one
the training split lacks, are skipped and counted. A catalog dataset's label
feature passes through `catalog.Fields.label`."""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmtx import data
from mmtx.data import catalog
from mmtx.data import ingest


def _png(i: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _records(name, ddir, split="train"):
  _, info = data.get_dataset(name, split, "caption", batch_size=1,
                             data_dir=ddir, shard=(0, 1), tokenizer=None,
                             image_size=8)
  n = info.metadata["ingest"]["records"][split]
  return ([np.asarray(info.record(i)["label"]).tolist() for i in range(n)],
          info.metadata)


ROWS = [("0.png", "a dark square", "dog"), ("1.png", "a square", "cat"),
        ("1.png", "the same square", "cat"), ("2.png", "no class", ""),
        ("3.png", "a light square", "bird"), ("3.png", "again", "dog")]


def test_csv_and_jsonl_label_columns(tmp_path):
  for i in range(5):
    (tmp_path / f"{i}.png").write_bytes(_png(i))
  (tmp_path / "train.csv").write_text(
      "filepath,title,cls\n" + "".join(f"{a},{b},{c}\n" for a, b, c in ROWS))
  (tmp_path / "test.csv").write_text(
      "filepath,title,cls\n4.png,a square,fish\n1.png,a square,cat\n")
  (tmp_path / "train.jsonl").write_text("".join(
      json.dumps({"filepath": a, "title": b, "cls": c or None}) + "\n"
      for a, b, c in ROWS))
  for fmt, splits in (("csv", "train=train.csv,test=test.csv"),
                      ("jsonl", "train=train.jsonl")):
    ddir = str(tmp_path / f"out_{fmt}")
    summary = ingest.ingest(fmt, str(tmp_path), "labelled",
                            splits=ingest._parse_splits(splits),  # pylint: disable=protected-access
                            label_column="cls", data_dir=ddir, workers=0,
                            verbose=False)
    assert summary["skipped"]["train"] == {"no label": 1}, fmt
    labels, meta = _records("labelled", ddir)
    # bird, cat, dog: 0.png dog; 1.png cat (one label for its two rows);
    # 3.png bird and dog.
    assert meta["labels"] == ["bird", "cat", "dog"] and meta["multi_label"]
    assert labels == [[2], [1], [0, 2]], fmt
  assert summary is not None
  csv_summary = ingest.ingest("csv", str(tmp_path), "again",
                              splits={"train": "train.csv",
                                      "test": "test.csv"},
                              label_column="cls", data_dir=str(tmp_path / "b"),
                              workers=0, verbose=False)
  assert csv_summary["skipped"]["test"] == {"label not in vocabulary": 1}
  assert _records("again", str(tmp_path / "b"), "test")[0] == [[1]]

  # Without a label column the records have no 'label' and no class list.
  ddir = str(tmp_path / "plain")
  ingest.ingest("csv", str(tmp_path / "train.csv"), "plain", data_dir=ddir,
                workers=0, verbose=False)
  _, info = data.get_dataset("plain", "train", "caption", batch_size=1,
                             data_dir=ddir, shard=(0, 1), tokenizer=None,
                             image_size=8)
  assert "label" not in info.record(0) and "labels" not in info.metadata


def test_webdataset_cls_members(tmp_path):
  path = tmp_path / "shard-000.tar"
  with tarfile.open(path, "w") as tar:
    for i, label in enumerate((b"3", b"1", None)):
      files = {"png": _png(i), "txt": f"square {i}".encode()}
      if label is not None:
        files["cls"] = label
      for ext, blob in files.items():
        member = tarfile.TarInfo(f"{i:04d}.{ext}")
        member.size = len(blob)
        tar.addfile(member, io.BytesIO(blob))
  ddir = str(tmp_path / "out")
  summary = ingest.ingest("webdataset", str(path), "wds", data_dir=ddir,
                          workers=0, verbose=False)
  assert summary["skipped"]["train"] == {"no label": 1}
  labels, meta = _records("wds", ddir)
  assert meta["labels"] == ["1", "3"] and not meta["multi_label"]
  assert labels == [[1], [0]]


def test_parquet_label_column(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  pq.write_table(pa.table({"image": [_png(i) for i in range(3)],
                           "text": ["a", "b", "c"], "label": [4, None, 0]}),
                 str(tmp_path / "t.parquet"))
  ddir = str(tmp_path / "out")
  summary = ingest.ingest("parquet", str(tmp_path / "t.parquet"), "pq",
                          data_dir=ddir, workers=0, verbose=False)
  assert summary["skipped"]["train"] == {"no label": 1}
  labels, meta = _records("pq", ddir)
  assert meta["labels"] == ["0", "4"] and labels == [[1], [0]]


def test_catalog_label_feature():
  example = {"image": np.zeros((4, 6, 3), np.uint8), "text": "a cat",
             "label": np.int64(7)}
  fields = catalog.Fields(label="label")
  np.testing.assert_array_equal(
      catalog.to_record(example, fields, 4, 0)["label"], [7])
  assert "label" not in catalog.to_record(example, catalog.Fields(), 4, 0)
  with pytest.raises(ValueError, match="label feature 'text'"):
    catalog.to_record(example, catalog.Fields(label="text"), 4, 0)
