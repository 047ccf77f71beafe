"""The grain pipeline: views, determinism, host sharding, resume from a
saved iterator state, eval padding, error messages, device placement, and
catalog datasets through tfds.testing.mock_data."""
import json
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmtx import data
from mmtx.data import build as build_lib
from mmtx.data import catalog
from mmtx.data import sort_of_clevr as soc
from mmtx.data import views

NAME = "sort_of_clevr/tiny"   # 64 train / 16 validation / 16 test / 32 test_large


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  data.ensure_built(NAME, d, verbose=False)
  return d


def _get(data_dir, split="train", view="vqa", **kw):
  kw.setdefault("batch_size", 8)
  kw.setdefault("shard", (0, 1))
  return data.get_dataset(NAME, split, view, data_dir=data_dir, **kw)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# -------------------------------------------------------------- views
def test_vqa_batches_match_the_records(data_dir):
  it, info = _get(data_dir, "test", shuffle=False, max_len=20)
  assert info.num_examples == 16 * 30 and info.answers == soc.ANSWERS
  assert info.qtypes == soc.QTYPES and info.steps_per_epoch == 60
  batch = next(it)
  assert batch["image"].shape == (8, 75, 75, 3) and batch["image"].dtype == np.float32
  assert batch["question"].shape == (8, 20) and batch["question"].dtype == np.int32
  for key in ("answer", "qtype", "qsubtype", "index"):
    assert batch[key].shape == (8,) and batch[key].dtype == np.int32
  assert batch["question_encoding"].shape == (8, 18)
  rec = info.record(0)
  # Unshuffled: the first 8 examples are questions 0..7 of record 0.
  np.testing.assert_array_equal(batch["index"], 0)
  np.testing.assert_array_equal(batch["answer"], rec["answer"][:8])
  np.testing.assert_array_equal(batch["qtype"], rec["qtype"][:8])
  np.testing.assert_allclose(batch["image"][0], rec["image"] / 127.5 - 1, atol=1e-6)
  tok = info.tokenizer
  for j in range(8):
    assert tok.decode(batch["question"][j]) == rec["question"][j].decode()
    assert (batch["question"][j] != 0).tolist() == batch["question_mask"][j].tolist()
    assert batch["question"][j, 0] == data.BOS


def test_dialogue_history_uses_previous_turns(data_dir):
  it, info = _get(data_dir, "test", "dialogue", shuffle=False, max_len=96)
  batch = next(it)
  rec = info.record(0)
  tok = info.tokenizer
  np.testing.assert_array_equal(batch["turn"][:4], [0, 1, 2, 3])
  np.testing.assert_array_equal(batch["answer"][:8], rec["dialogue_answer"].reshape(-1))
  q = [s.decode() for s in rec["dialogue_question"][0]]
  a = [soc.ANSWERS[x] for x in rec["dialogue_answer"][0]]
  want = f"{q[0]} <sep> {a[0]} <sep> {q[1]} <sep> {a[1]} <sep> {q[2]}"
  assert tok.decode(batch["history"][2]) == want
  # The history is cut from the left: the current question always survives.
  it, _ = _get(data_dir, "test", "dialogue", shuffle=False, max_len=16)
  short = next(it)["history"][3]
  assert short[0] == data.BOS and tok.decode(short).endswith(q[3])


def test_caption_and_contrastive_views(data_dir):
  it, info = _get(data_dir, "test", "caption", shuffle=False, max_len=64)
  batch = next(it)
  assert info.num_examples == 16 and set(batch) == {"image", "text", "text_mask",
                                                    "index", "valid"}
  first = [info.record(int(i))["caption"][0].decode() for i in batch["index"]]
  assert [info.tokenizer.decode(t) for t in batch["text"]] == first
  # Training draws a caption per example: several templates show up.
  it, info = _get(data_dir, "train", "contrastive", batch_size=32, max_len=64)
  batch = next(it)
  texts = {info.tokenizer.decode(t) for t in batch["text"]}
  captions = {c.decode() for i in batch["index"] for c in info.record(int(i))["caption"]}
  assert texts <= captions
  assert len({t.split()[0] for t in texts}) > 1
  # 'caption_set': the drawn caption's fingerprint first, then the record's
  # other captions', -1 padding; fingerprints of equal token rows are equal
  # and a CRC-32 (zlib's, of the little-endian int32 non-pad ids) otherwise.
  sets = batch["caption_set"]
  assert sets.shape == (32, views.CAPTION_SET) and sets.dtype == np.int32
  for row, i in enumerate(batch["index"]):
    caps = [c.decode() for c in info.record(int(i))["caption"]]
    ids, _ = info.tokenizer.encode_batch(caps, 64)
    want = [zlib.crc32(np.asarray([t for t in r if t], "<i4").tobytes())
            & 0x7FFFFFFF for r in ids]
    drawn = caps.index(info.tokenizer.decode(batch["text"][row]))
    assert sets[row, 0] == want[drawn]
    assert sorted(sets[row, :len(caps)]) == sorted(want)
    assert (sets[row, len(caps):] == -1).all()


# --------------------------------------------------------- determinism
def test_same_seed_same_batches_different_seed_differs(data_dir):
  a = _take(_get(data_dir, seed=3)[0], 3)
  b = _take(_get(data_dir, seed=3)[0], 3)
  c = _take(_get(data_dir, seed=4)[0], 3)
  assert all(_same(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a[0]["index"], c[0]["index"])


def _keys(batch):
  """(record, question) identity of every valid example in a vqa batch."""
  return [(int(i), bytes(q.tobytes())) for i, q, v in
          zip(batch["index"], batch["question_encoding"], batch["valid"]) if v]


def test_eval_shards_are_disjoint_and_cover_the_split(data_dir):
  whole = [k for b in _get(data_dir, "test", shuffle=False)[0] for k in _keys(b)]
  assert len(whole) == 480
  seen, steps = [], set()
  for index in range(3):
    it, info = _get(data_dir, "test", shard=(index, 3), batch_size=16)
    batches = list(it)
    steps.add((len(batches), info.steps_per_epoch))
    assert all(b["valid"].shape == (16,) for b in batches)   # padded, full
    seen.append([k for b in batches for k in _keys(b)])
  assert steps == {(10, 10)}                        # every host: same step count
  flat = [k for s in seen for k in s]
  assert len(flat) == 480 and sorted(flat) == sorted(whole)


def test_train_shards_are_disjoint_per_epoch(data_dir):
  per_host = []
  for index in range(3):
    it, info = _get(data_dir, "train", "caption", shard=(index, 3), batch_size=7)
    assert info.examples_per_shard == 64 // 3 and info.steps_per_epoch == 3
    batches = _take(it, 3)
    per_host.append([int(i) for b in batches for i in b["index"]])
  flat = [i for h in per_host for i in h]
  assert len(flat) == len(set(flat)) == 63          # 64 - 64 % 3, no overlap


def test_epochs_are_reshuffled(data_dir):
  it, _ = _get(data_dir, "train", "caption", batch_size=16)
  epoch1 = np.concatenate([b["index"] for b in _take(it, 4)])
  epoch2 = np.concatenate([b["index"] for b in _take(it, 4)])
  assert sorted(epoch1) == sorted(epoch2) == list(range(64))
  assert not np.array_equal(epoch1, epoch2)


def test_resume_from_saved_state(data_dir):
  # 64 images / batch 24: batches 3..5 cross an epoch boundary.
  it, _ = _get(data_dir, "train", "caption", batch_size=24, augment=True)
  _take(it, 2)
  state = json.loads(json.dumps(it.get_state()))   # as a checkpoint stores it
  expected = _take(it, 4)
  again, _ = _get(data_dir, "train", "caption", batch_size=24, augment=True)
  again.set_state(state)
  for got, want in zip(_take(again, 4), expected):
    assert _same(got, want)


def test_to_device_single_device(data_dir):
  import jax
  from jax.sharding import Mesh
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  batch = next(_get(data_dir)[0])
  arrays = data.to_device(batch, data.batch_sharding(mesh))
  assert set(arrays) == set(batch)
  np.testing.assert_array_equal(np.asarray(arrays["question"]), batch["question"])


def test_to_device_shards_the_batch_over_data_and_fsdp():
  script = textwrap.dedent("""
    import numpy as np, jax
    from jax.sharding import Mesh
    from mmtx import data
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "fsdp"))
    batch = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3),
             "y": np.arange(8, dtype=np.int32), "s": np.array(["a"] * 8)}
    out = data.to_device(batch, data.batch_sharding(mesh))
    assert set(out) == {"x", "y"}
    for shard in out["x"].addressable_shards:
      np.testing.assert_array_equal(shard.data, batch["x"][shard.index])
      assert shard.data.shape == (2, 3)
    try:
      data.to_device({"z": np.zeros(6)}, data.batch_sharding(mesh))
    except ValueError as e:
      assert "multiple of 4" in str(e), e
    else:
      raise AssertionError("no error")
    print("ok")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, text=True,
                       capture_output=True, timeout=120)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# --------------------------------------------------------------- errors
def test_missing_dataset_names_the_build_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m mmtx.data sort_of_clevr/tiny --data_dir"):
    data.get_dataset(NAME, "train", "vqa", batch_size=4, data_dir=str(tmp_path),
                     build=False)


def test_bad_arguments():
  with pytest.raises(ValueError, match="view"):
    data.get_dataset(NAME, "train", "segmentation", batch_size=4)
  with pytest.raises(ValueError, match="shard index"):
    data.get_dataset(NAME, "train", "vqa", batch_size=4, shard=(2, 2))


def _spec(**kw):
  kw = dict(view="vqa", tokenizer=data.WordTokenizer(["a"]), max_len=8,
            image_shape=(75, 75, 3), answers=soc.ANSWERS, dataset="sort_of_clevr") | kw
  return views.ViewSpec(**kw)


def _record(**kw):
  return {"id": b"train_00042", "image": np.zeros((75, 75, 3), np.uint8),
          "question": np.array([b"a"]), "answer": np.array([1], np.int32),
          "qtype": np.array([0], np.int32), "caption": np.array([b"a"])} | kw


def test_bad_records_name_their_id():
  views.make_example(_spec(), _record(), 42, 0, None)   # a good one passes
  with pytest.raises(ValueError, match=r"train_00042.*image has shape \(64, 64, 3\)"):
    views.make_example(_spec(), _record(image=np.zeros((64, 64, 3), np.uint8)), 42, 0, None)
  with pytest.raises(ValueError, match="train_00042.*answer id 19 is outside"):
    views.make_example(_spec(), _record(answer=np.array([19], np.int32)), 42, 0, None)
  with pytest.raises(ValueError, match="train_00042.*example 3"):
    views.make_example(_spec(), _record(), 42, 3, None)


class CorruptClevr(soc.SortOfClevr):
  """Sort-of-CLEVR whose record 5 has an answer outside the vocabulary."""

  def _generate_examples(self, split, num_images):
    for key, record in super()._generate_examples(split, num_images):
      if key == f"{split}_00005":
        record["answer"] = record["answer"].copy()
        record["answer"][3] = 99
      yield key, record


def test_corrupt_record_in_the_pipeline(tmp_path, monkeypatch):
  monkeypatch.setitem(build_lib.BUILDERS, "corrupt_clevr", CorruptClevr)
  with pytest.raises(ValueError, match="'test_00005'.*answer id 99"):
    it, _ = data.get_dataset("corrupt_clevr/tiny", "test", "vqa", batch_size=16,
                             data_dir=str(tmp_path), shard=(0, 1))
    for _ in it:
      pass


# -------------------------------------------------------------- catalog
def test_resize_matches_jax_image_resize():
  import jax
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, size=(9, 13, 3)).astype(np.uint8)
  for h, w in ((20, 30), (5, 6), (9, 4)):
    want = jax.image.resize(img.astype(np.float32), (h, w, 3), "bilinear",
                            antialias=False)
    np.testing.assert_allclose(catalog.resize_bilinear(img, h, w), want, atol=1e-3)


def test_catalog_to_record_by_hand():
  fields = catalog.CATALOG_FIELDS["coco_captions"]
  ex = {"image": np.full((40, 80, 3), 7, np.uint8), "image/id": 123,
        "captions": {"id": np.array([1, 2]),
                     "text": np.array([b"a dog.", b"a brown dog."], dtype=object)}}
  rec = catalog.to_record(ex, fields, 16, 0)
  assert rec["id"] == "123" and rec["image"].shape == (16, 16, 3)
  assert (rec["image"] == 7).all() and list(rec["caption"]) == ["a dog.", "a brown dog."]
  gray = dict(ex, image=np.arange(400, dtype=np.uint8).reshape(20, 20))
  rec = catalog.to_record(gray, fields, 20, 0)
  np.testing.assert_array_equal(rec["image"][..., 0], rec["image"][..., 2])
  with pytest.raises(ValueError, match="record 123.*'captions/text'"):
    catalog.to_record({"image": ex["image"], "image/id": 123}, fields, 16, 0)
  with pytest.raises(ValueError, match="record 123.*dtype float32"):
    catalog.to_record(dict(ex, image=np.zeros((4, 4, 3), np.float32)), fields, 16, 0)


class FakeCocoCaptions(tfds.core.GeneratorBasedBuilder):
  """coco_captions' feature layout (the real builder needs TensorFlow)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    f = tfds.features
    return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
        "image": f.Image(shape=(None, None, 3)), "image/id": np.int64,
        "captions": f.Sequence({"id": np.int64, "text": f.Text()})}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    yield from ()


def test_catalog_dataset_through_mock_data(tmp_path):
  fields = catalog.Fields(image="image", text="captions/text", id="image/id")
  tok = data.WordTokenizer([chr(c) for c in range(ord("a"), ord("k"))])
  with tfds.testing.mock_data(num_examples=10,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    it, info = data.get_dataset("fake_coco_captions", "train", "contrastive",
                                batch_size=4, tokenizer=tok, fields=fields,
                                image_size=24, data_dir=str(tmp_path),
                                shard=(0, 1), max_len=12)
    batches = _take(it, 3)
  assert info.num_examples == 10 and info.answers is None
  for b in batches:
    assert b["image"].shape == (4, 24, 24, 3) and b["text"].shape == (4, 12)
    assert b["image"].min() >= -1 and b["image"].max() <= 1
    assert (b["text"][:, 0] == data.BOS).all()


def test_augmentation_is_a_light_affine_jitter(data_dir):
  plain = next(_get(data_dir, "train", "caption", seed=5)[0])
  jitter = next(_get(data_dir, "train", "caption", seed=5, augment=True)[0])
  np.testing.assert_array_equal(plain["index"], jitter["index"])
  np.testing.assert_array_equal(plain["text"], jitter["text"])
  for x, y in zip(plain["image"], jitter["image"]):
    x, y = x.reshape(-1).astype(np.float64), y.reshape(-1).astype(np.float64)
    inside = np.abs(y) < 0.999                    # away from the clipping
    slope, offset = np.polyfit(x[inside], y[inside], 1)
    assert 0.9 <= slope <= 1.1 and -0.1 <= offset <= 0.1
    assert not np.allclose(slope, 1) or not np.allclose(offset, 0)


def test_worker_processes_give_the_same_batches_and_resume(data_dir):
  ref = _take(_get(data_dir, "train", "caption", batch_size=24, augment=True)[0], 5)
  it, _ = _get(data_dir, "train", "caption", batch_size=24, augment=True,
               num_workers=2)
  got = _take(it, 2)
  state = it.get_state()
  got += _take(it, 3)
  assert all(_same(a, b) for a, b in zip(got, ref))
  again, _ = _get(data_dir, "train", "caption", batch_size=24, augment=True,
                  num_workers=2)
  again.set_state(state)
  assert all(_same(a, b) for a, b in zip(_take(again, 3), ref[2:]))
  it.close()
  again.close()


def test_unknown_split_lists_the_splits(data_dir):
  with pytest.raises(ValueError, match=r"no split 'val'.*'test', 'test_large', 'train', 'validation'"):
    _get(data_dir, "val")
  it, info = _get(data_dir, "test[:4]", shuffle=False)     # a TFDS slice
  assert info.num_records == 4 and info.num_examples == 120


def test_view_without_its_features(tmp_path, monkeypatch):
  monkeypatch.setenv("MMTX_DATA_DIR", str(tmp_path))
  assert data.default_data_dir() == str(tmp_path)
  with pytest.raises(ValueError, match=r"easy_vqa has no \['dialogue_question'"):
    data.get_dataset("easy_vqa", "test", "dialogue", batch_size=4, shard=(0, 1))


def test_orbax_checkpoint_of_the_iterator(data_dir, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  it, _ = _get(data_dir)
  _take(it, 3)
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",),
                               item_handlers={"data": grain.checkpoint.CheckpointHandler()})
  mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  want = _take(it, 2)
  again, _ = _get(data_dir)
  mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(again)))
  assert all(_same(a, b) for a, b in zip(_take(again, 2), want))


# ------------------------------------------- several questions per image
def test_grouped_vqa_holds_the_records_questions(data_dir):
  # Unshuffled: example i is record i with its first Q questions, in order.
  it, info = _get(data_dir, "test", shuffle=False, max_len=20,
                  questions_per_image=12, batch_size=4)
  assert info.num_examples == 16 and info.steps_per_epoch == 4
  batch = next(it)
  assert batch["question"].shape == (4, 12, 20)
  assert batch["question_mask"].shape == (4, 12, 20)
  for key in ("answer", "qtype", "qsubtype"):
    assert batch[key].shape == (4, 12) and batch[key].dtype == np.int32
  assert batch["question_valid"].all() and batch["image"].shape == (4, 75, 75, 3)
  assert batch["question_encoding"].shape == (4, 12, 18)
  tok = info.tokenizer
  for b in range(4):
    rec = info.record(b)
    assert batch["index"][b] == b
    np.testing.assert_array_equal(batch["answer"][b], rec["answer"][:12])
    np.testing.assert_array_equal(batch["qsubtype"][b], rec["qsubtype"][:12])
    np.testing.assert_array_equal(batch["question_encoding"][b],
                                  rec["question_encoding"][:12])
    for j in range(12):
      assert tok.decode(batch["question"][b, j]) == rec["question"][j].decode()


def test_grouped_vqa_training_draws_distinct_questions_and_pads(data_dir):
  it, info = _get(data_dir, "train", questions_per_image=8, max_len=20)
  batch = next(it)
  tok = info.tokenizer
  for b in range(8):
    rec = info.record(int(batch["index"][b]))
    texts = [q.decode() for q in rec["question"]]
    got = [tok.decode(q) for q in batch["question"][b]]
    picks = [texts.index(t) for t in got]   # each one of the record's own
    # Drawn without replacement (a scene can hold the same question twice).
    assert all(got.count(t) <= texts.count(t) for t in got)
    np.testing.assert_array_equal(batch["answer"][b], rec["answer"][picks])
  # More slots than the 30 questions: the rest is padding, marked invalid.
  it, _ = _get(data_dir, "test", shuffle=False, questions_per_image=32,
               batch_size=2, max_len=20)
  batch = next(it)
  np.testing.assert_array_equal(batch["question_valid"].sum(1), [30, 30])
  assert not batch["question"][:, 30:].any() and not batch["answer"][:, 30:].any()


def test_grouped_vqa_resumes_and_rejects_other_views(data_dir):
  it, _ = _get(data_dir, "train", questions_per_image=5, batch_size=24)
  _take(it, 2)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 3)
  again, _ = _get(data_dir, "train", questions_per_image=5, batch_size=24)
  again.set_state(state)
  for got, want in zip(_take(again, 3), expected):
    assert _same(got, want)
  with pytest.raises(ValueError, match="questions_per_image=5 needs view 'vqa'"):
    _get(data_dir, "train", "caption", questions_per_image=5)


def test_grouped_dialogue_holds_the_ungrouped_turns(data_dir):
  """A dialogue group of an image is its turns as the one-per-turn view
  gives them (the same history, answer and turn, in (dialogue, turn) order
  unshuffled), padded with invalid rows past the image's 2 x 4 turns."""
  one, info = _get(data_dir, "test", "dialogue", shuffle=False, max_len=64,
                   batch_size=8)
  grouped, ginfo = _get(data_dir, "test", "dialogue", shuffle=False,
                        max_len=64, batch_size=2, questions_per_image=10)
  assert ginfo.num_examples == 16 and info.num_examples == 128
  turns = _take(one, 2)                     # 16 turns = the first 2 images
  batch = next(grouped)
  assert batch["history"].shape == (2, 10, 64)
  np.testing.assert_array_equal(batch["question_valid"].sum(1), [8, 8])
  for b in range(2):
    t = turns[b]
    for k in ("history", "history_mask", "answer", "turn"):
      np.testing.assert_array_equal(batch[k][b, :8], t[k], err_msg=k)
    assert not batch["history"][b, 8:].any() and not batch["answer"][b, 8:].any()
  np.testing.assert_array_equal(batch["turn"][0, :8], [0, 1, 2, 3] * 2)
  # Training: every drawn row is one of the image's own turns, none twice.
  it, _ = _get(data_dir, "train", "dialogue", max_len=64, questions_per_image=5)
  batch = next(it)
  full, _ = _get(data_dir, "train", "dialogue", shuffle=False, max_len=64,
                 batch_size=8)
  by_image = {}
  for ex in _take(full, 8):                 # images 0-7, 8 turns each
    for i in range(8):
      by_image.setdefault(int(ex["index"][i]), []).append(
          (ex["history"][i].tobytes(), int(ex["answer"][i])))
  for b in range(8):
    own = by_image.get(int(batch["index"][b]))
    if own is None:
      continue
    got = [(batch["history"][b, j].tobytes(), int(batch["answer"][b, j]))
           for j in range(5)]
    assert all(g in own for g in got) and len(set(got)) == 5


def test_decoded_record_cache_gives_the_same_batches(data_dir):
  """cache_mb keeps decoded records in memory after their first read; the
  batches of several epochs (64 images / 8 per batch = 8 per epoch) equal
  those read from disk every time, for grouped VQA and for captions."""
  for view, kw in (("vqa", dict(questions_per_image=4)), ("caption", {})):
    cached, info = _get(data_dir, view=view, cache_mb=64, **kw)
    plain, _ = _get(data_dir, view=view, cache_mb=0, **kw)
    assert all(_same(a, b) for a, b in zip(_take(cached, 20), _take(plain, 20)))
  # The cache is there (and read-only: a view writing into a record would
  # change later epochs), and absent when the split exceeds cache_mb.
  it, info = _get(data_dir, cache_mb=64, questions_per_image=4)
  _take(it, 9)                                  # a whole epoch and one batch
  assert len(info.source._records) == 64       # noqa: SLF001
  rec = info.source[3]
  assert info.source[3] is rec and not rec["image"].flags.writeable
  with pytest.raises(ValueError, match="read-only"):
    rec["image"][0, 0, 0] = 1
  _, small = _get(data_dir, cache_mb=0.01)   # 64 x ~17 KB > 10 KB
  assert not hasattr(small.source, "_records")


def test_record_size_counts_strings():
  """The cache-size estimate: array bytes + string lengths, also inside
  object arrays and nested dicts (hand-counted)."""
  from mmtx.data import pipeline
  rec = {"id": "abc",                                        # 3
         "image": np.zeros((2, 2, 3), np.uint8),            # 12
         "question": np.array(["ab", "cdef"], dtype=object),  # 2 ptr + 6
         "objects": {"shape": np.zeros(4, np.int32)}}       # 16
  ptr = np.array([None]).nbytes
  assert pipeline._record_nbytes(rec) == 3 + 12 + 2 * ptr + 6 + 16  # noqa: SLF001
