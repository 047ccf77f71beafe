"""Every task's `evaluate` recomputed: a stub model whose output for each
(image, text) is known (eval_stub.py) runs through the task's own eval path
on a split whose last batch is part padding, and each reported metric is
recomputed with numpy from the split's records (eval_cases.py). The same
cases run on two processes' shards in test_two_processes_shards_report_the_same_metrics."""
import json
import os
import re

import pytest

import eval_cases
import eval_stub

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("data")
  from mmtx import data as data_lib
  data_lib.ensure_built(eval_stub.DATASET, str(path))
  data_lib.ensure_built(eval_cases.AV_DATASET, str(path))
  return path


def _check(got, want):
  """Same metric names; same values (ratios of counts: to float64 rounding,
  or float32 where the eval sums in float32, as pretrain's MLM counts)."""
  want = {k: v for k, v in want.items() if not k.startswith("_")}
  assert sorted(got) == sorted(want)
  for k in want:
    tol = 1e-6 if k.endswith("mlm_accuracy") else 1e-9
    assert got[k] == pytest.approx(want[k], rel=tol, abs=1e-9), k


def _nontrivial(want, *keys):
  """The case is built so that these metrics are neither 0 nor 1: a bug
  that drops or miscounts rows moves them."""
  for k in keys:
    assert 0.0 < want[k] < 1.0, (k, want[k])


@pytest.fixture(scope="module")
def mesh():
  from mmtx import sharding
  return sharding.make_mesh()


def test_vqa_accuracy_per_type_and_subtype(data_dir, mesh):
  got, table = eval_cases.evaluate("vqa", data_dir, mesh)
  want = eval_cases.reference("vqa", data_dir)
  _nontrivial(want, "accuracy", "accuracy/rel/closest", "test/accuracy")
  # 3 types x 3 subtypes each, on both splits.
  assert len([k for k in want if k.count("/") == 2
              and not k.startswith("test/")]) == 9
  _check(got, want)
  assert "450" in table and "480" in table


def test_dialogue_accuracy_and_mrr_per_turn(data_dir, mesh):
  got, table = eval_cases.evaluate("dialogue", data_dir, mesh)
  want = eval_cases.reference("dialogue", data_dir)
  _nontrivial(want, "accuracy", "mrr", "accuracy/turn_4", "mrr/turn_1")
  assert {f"mrr/turn_{t}" for t in range(1, 5)} <= set(want)
  _check(got, want)
  assert re.search(r"\| all\s+\|.*\| 120\s+\|", table), table


def test_contrastive_recall_both_ways_and_zero_shot(data_dir, mesh):
  got, table = eval_cases.evaluate("contrastive", data_dir, mesh)
  want = eval_cases.reference("contrastive", data_dir)
  _nontrivial(want, "i2t_r1", "t2i_r1", "t2i_r5", "zero_shot/top1")
  assert want["i2t_r1"] != want["t2i_r1"]
  _check(got, want)
  assert "15 images, 75 captions" in table


def test_caption_bleu_cider_and_recall_through_the_task(data_dir, mesh):
  pytest.importorskip("pycocoevalcap")
  got, table = eval_cases.evaluate("caption", data_dir, mesh)
  want = eval_cases.reference("caption", data_dir)
  _nontrivial(want, "bleu_1", "bleu_4", "i2t_r1")
  assert want["cider"] > 0
  want = {k: v for k, v in want.items()}
  for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider"):
    assert got.pop(k) == pytest.approx(want.pop(k), abs=1e-6), k
  _check(got, want)
  assert "15 images, 75 references" in table


def test_pretrain_itm_mlm_and_recall(data_dir, mesh):
  got, table = eval_cases.evaluate("pretrain", data_dir, mesh)
  want = eval_cases.reference("pretrain", data_dir)
  _nontrivial(want, "itm_accuracy/positive", "itm_accuracy/negative",
              "mlm_accuracy", "i2t_r1")
  n_pos, n_neg, n_mlm = want["_counts"]
  # Not every pair's next row is a valid negative: chunk ends and the
  # duplicate captions of this split are skipped.
  assert n_pos == 75 and 0 < n_neg < n_pos
  _check(got, want)
  assert re.search(rf"on mismatched pairs\s+\|\s+\S+\s+\|\s+{n_neg}\s", table)
  assert re.search(rf"masked tokens\)\s+\|\s+\S+\s+\|\s+{int(n_mlm)}\s", table)


def test_av_event_map_and_top1(data_dir, mesh):
  """Multi-label events: mAP (against scikit-learn) and top-1 over the 15
  clips, the last batch part padding."""
  got, tables = eval_cases.evaluate("av_event", data_dir, mesh)
  want = eval_cases.reference("av_event", data_dir)
  _nontrivial(want, "accuracy", "mAP")
  _check(got, want)
  assert f"top-1 {100 * want['accuracy']:.2f}% (15 clips)" in tables


def test_two_processes_shards_report_the_same_metrics(data_dir, tmp_path):
  """Each process reads half of every eval batch (process 1's shard of the
  odd splits ends in a padding example): both report every metric equal to
  the one-process numpy reference."""
  from multiprocess_util import run_processes
  runs = run_processes(os.path.join(HERE, "two_process_eval_check.py"),
                       [data_dir, tmp_path, *eval_cases.CASES])
  for i, (rc, out) in enumerate(runs):
    assert rc == 0, out[-3000:]
    assert f"PROCESS {i} of 2 DONE" in out, out[-2000:]
  for i in range(2):
    got = json.loads((tmp_path / f"eval_{i}.json").read_text())
    for name in eval_cases.CASES:
      want = eval_cases.reference(name, data_dir)
      if name == "caption":
        for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider"):
          assert got[name].pop(k) == pytest.approx(want.pop(k), abs=1e-6), k
      _check(got[name], want)


def test_pretrain_itm_negative_of_the_same_image_never_counts(mesh):
  """An image with 20 captions alone in its eval batch: every pair's ITM
  negative (the next row of its chunk) shows the same image, so none
  counts - also for captions 15-18, whose next caption lies beyond the 16
  fingerprints of the caption set and only the same-image test excludes.
  Another image with 3 captions: same, and its last row's next row is
  padding. So the ITM accuracy is the positives' alone."""
  import types
  import numpy as np
  from mmtx.data import tokenizers
  from mmtx.tasks import get_task
  caps = [[f"caption {w} of the first image" for w in
           ("one two three four five six seven eight nine ten eleven "
            "twelve thirteen fourteen fifteen sixteen seventeen eighteen "
            "nineteen twenty").split()],
          ["a second image", "the second image", "one more image"]]
  tok = tokenizers.WordTokenizer.fit([c for cs in caps for c in cs])
  rs = np.random.RandomState(0)
  u8 = rs.randint(0, 256, (2, 6, 6, 3)).astype(np.uint8)
  info = types.SimpleNamespace(
      name="two_images", split="test", tokenizer=tok, image_shape=(6, 6, 3),
      record=lambda i: {"caption": caps[i]})
  batches = [{"image": np.zeros((4, 6, 6, 3), np.float32),
              "index": np.zeros(4, np.int32), "valid": np.arange(4) < 1}
             for _ in range(2)]
  for i, b in enumerate(batches):
    b["image"][0] = u8[i] / 127.5 - 1.0
    b["index"][0] = i
  cfg = eval_stub.config("pretrain", "", ("test",), 4)
  w = eval_stub.hash_weights((6, 6, 3), eval_stub.MAX_LEN)
  ids = [tok.encode_batch(c, eval_stub.MAX_LEN)[0] for c in caps]
  pair_keys = [eval_stub.np_keys(np.repeat(u8[i][None], len(ids[i]), 0),
                                 ids[i], w) for i in range(2)]
  params = eval_stub.embedding_params(w, u8, pair_keys, vocab=tok.vocab_size,
                                      mlm_guess=[i[0] for i in ids])
  task = get_task("pretrain")(cfg, info, model=eval_stub.Stub("fusion"))
  task.eval_iterator = lambda split: (iter(batches), info)
  got, table = task.evaluate(params, mesh)
  pos = eval_stub.np_itm_pred(np.concatenate(pair_keys)) == 1
  assert 0 < pos.mean() < 1
  assert got["itm_accuracy/positive"] == pytest.approx(pos.mean())
  assert got["itm_accuracy"] == pytest.approx(pos.mean())
  assert got["itm_accuracy/negative"] == 0.0
  assert re.search(r"on mismatched pairs\s+\|\s+\S+\s+\|\s+0\s", table), table
