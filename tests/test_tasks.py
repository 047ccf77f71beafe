"""Every task plugin end to end through the CLI on the tiny built-in data
(pretrain -> VQA fine-tuning included), and the pieces the tasks add:
history truncation, zero-shot classes, caption pairing, the label fraction
and FusionModel's 'contrastive' head."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtx import data as data_lib
from mmtx.data import BOS, EOS, SEP

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A few steps of tiny models: the runs check the plumbing, not the numbers.
TINY = ["--config.data.name=sort_of_clevr/tiny", "--config.total_steps=4",
        "--config.batch_size=8", "--config.log_every=2",
        "--config.eval_every=4", "--config.checkpoint_every=4",
        "--config.data.eval_batch_size=32", "--progress=false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One MMTX_DATA_DIR for the module: sort_of_clevr/tiny is built once."""
  path = tmp_path_factory.mktemp("data")
  data_lib.ensure_built("sort_of_clevr/tiny", str(path))
  return path


def _run(config, workdir, data_dir, *flags):
  env = dict(os.environ, MMTX_DATA_DIR=str(data_dir))
  out = subprocess.run(
      [sys.executable, "-m", "mmtx.main", f"--config={config}",
       f"--workdir={workdir}", *TINY, *flags], cwd=REPO, capture_output=True,
      text=True, timeout=600, env=env)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def _eval_row(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
  assert evals, rows
  return evals[-1]


def _in_unit(row, *keys):
  for k in keys:
    assert k in row, (k, sorted(row))
    assert 0.0 <= row[k] <= 1.0, (k, row[k])


# ----------------------------------------------------------------- e2e runs
def test_clip_sigmoid_trains_and_reports_retrieval_and_zero_shot(
    tmp_path, data_dir):
  out = _run("configs/clip.py:loss=sigmoid,width=32", tmp_path / "run",
             data_dir)
  row = _eval_row(tmp_path / "run")
  _in_unit(row, *(f"eval/{d}_r{k}" for d in ("i2t", "t2i")
                  for k in (1, 5, 10)), "eval/zero_shot/top1",
           "eval/zero_shot/top5")
  # 16 test images with 5 captions each: all captions are ranked.
  assert "16 images, 80 captions" in out
  assert "image -> text" in out and "zero-shot 'how many circles'" in out


def test_caption_beam_search_reports_bleu_cider_and_retrieval(
    tmp_path, data_dir):
  out = _run("configs/caption.py:decode=beam,width=32", tmp_path / "run",
             data_dir, "--config.decode.beam_size=2",
             "--config.data.max_len=24", "--config.model.text.max_len=24")
  row = _eval_row(tmp_path / "run")
  _in_unit(row, "eval/bleu_1", "eval/bleu_4", "eval/i2t_r1", "eval/t2i_r10")
  assert "eval/cider" in row   # its value: tests/test_eval_tasks.py
  assert "beam decoding, 16 images, 80 references" in out
  assert "BLEU-1" in out and "CIDEr-D" in out and "generated" in out


def test_dialogue_no_history_ablation_reports_accuracy_and_mrr_per_turn(
    tmp_path, data_dir):
  w = ["--config.model.image.width=32", "--config.model.text.width=32",
       "--config.model.fusion.dim=32", "--config.model.head_hidden=32"]
  out = _run("configs/dialogue.py:history=last", tmp_path / "run", data_dir,
             *w)
  row = _eval_row(tmp_path / "run")
  _in_unit(row, "eval/accuracy", "eval/mrr", "eval/accuracy/turn_1",
           "eval/mrr/turn_4")
  # MRR over 19 answers is at least 1/19 and at least the accuracy.
  assert row["eval/mrr"] >= max(row["eval/accuracy"], 1 / 19) - 1e-9
  assert "history=last" in out and "turn 4" in out


@pytest.fixture(scope="module", params=["vit", "conv"])
def pretrained(request, tmp_path_factory, data_dir):
  """(workdir, stdout, tower) of a tiny pretraining run with each image
  tower of configs/pretrain.py, shared by two tests."""
  wd = tmp_path_factory.mktemp(f"pretrain_{request.param}")
  return wd, _run(f"configs/pretrain.py:width=32,tower={request.param}", wd,
                  data_dir), request.param


def test_pretrain_reports_itm_mlm_and_retrieval(pretrained):
  wd, out, _ = pretrained
  row = _eval_row(wd)
  _in_unit(row, "eval/itm_accuracy", "eval/itm_accuracy/positive",
           "eval/itm_accuracy/negative", "eval/mlm_accuracy", "eval/i2t_r1",
           "eval/t2i_r5")
  assert "MLM accuracy" in out and "on mismatched pairs" in out
  assert sorted(os.listdir(wd / "checkpoints"))[-1] == "4"


def test_finetune_vqa_loads_the_pretrained_towers_and_fusion(
    pretrained, tmp_path, data_dir):
  wd, _, tower = pretrained
  out = _run(f"configs/finetune_vqa.py:width=32,tower={tower},pretrained={wd},"
             "labels=0.1", tmp_path / "run", data_dir,
             "--config.model.head_hidden=32")
  m = re.search(r"initialised (\d+) params from .*; (\d+) not in the "
                r"checkpoint \(fresh init\): (\[.*\])", out)
  assert m, out[-3000:]
  loaded, n_missing = int(m.group(1)), int(m.group(2))
  missing = sorted(eval(m.group(3)))  # noqa: S307 - a printed list of str
  # Only the new VQA head starts fresh; every tower / fusion param loads.
  assert missing == ["vqa_hidden/bias", "vqa_hidden/kernel", "vqa_out/bias",
                     "vqa_out/kernel"] and n_missing == 4
  assert loaded > 50
  assert "VQA accuracy" in out
  _in_unit(_eval_row(tmp_path / "run"), "eval/accuracy")


# ------------------------------------------------------------- unit tests
def test_last_question_keeps_only_the_tokens_after_the_last_sep():
  from mmtx.tasks.dialogue import last_question, select_history
  h = np.array([[BOS, 10, 11, SEP, 20, SEP, 12, 13, 14, EOS, 0, 0],
                [BOS, 10, 11, EOS, 0, 0, 0, 0, 0, 0, 0, 0],      # turn 1
                [BOS, 30, SEP, 31, SEP, 32, SEP, 33, SEP, 34, 35, EOS]])
  want = np.array([[BOS, 12, 13, 14, EOS, 0, 0, 0, 0, 0, 0, 0],
                   [BOS, 10, 11, EOS, 0, 0, 0, 0, 0, 0, 0, 0],
                   [BOS, 34, 35, EOS, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
  np.testing.assert_array_equal(last_question(h), want)
  got = jax.jit(last_question)(jnp.asarray(h, jnp.int32))
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(select_history(h, "full"), h)
  with pytest.raises(ValueError, match="config.data.history"):
    select_history(h, "none")


def test_last_question_of_real_histories_is_the_question_alone(data_dir):
  from mmtx.tasks.dialogue import last_question
  it, info = data_lib.get_dataset("sort_of_clevr/tiny", "test", "dialogue",
                                  batch_size=8, max_len=64,
                                  data_dir=str(data_dir))
  batch = next(it)
  got = last_question(batch["history"])
  turns = info.metadata["dialogue_turns"]
  for row in range(8):
    rec = info.record(int(batch["index"][row]))
    unit = row % (turns * info.metadata["dialogues_per_image"])
    d, t = divmod(unit, turns)
    assert t == batch["turn"][row]
    q = rec["dialogue_question"][d, t].decode()
    want, _ = info.tokenizer.encode_batch([q], 64)
    np.testing.assert_array_equal(got[row], want[0])


def _history_config(history):
  import ml_collections
  return ml_collections.ConfigDict({"data": {"history": history}})


def test_grouped_dialogue_loss_drops_the_history_of_every_row():
  """history='last' on a [B, Q, L] group: the model sees each row's last
  question, as the one-per-turn path (last_question on [B, L]) gives it."""
  from mmtx.tasks.dialogue import DialogueTask, last_question
  seen = {}

  class Recorder:
    def apply(self, variables, images, texts, **kw):
      seen["texts"] = np.asarray(texts)
      return {"vqa_logits": jnp.zeros(texts.shape[:2] + (3,))}, {}

  h = np.array([[[BOS, 10, SEP, 20, SEP, 12, EOS, 0],
                 [BOS, 10, EOS, 0, 0, 0, 0, 0]],
                [[BOS, 30, SEP, 31, SEP, 34, 35, EOS],
                 [BOS, 7, 8, SEP, 9, SEP, 6, EOS]]], np.int32)
  task = DialogueTask(_history_config("last"), model=Recorder())
  batch = {"image": np.zeros((2, 1, 1, 3)), "history": jnp.asarray(h),
           "answer": jnp.zeros((2, 2), jnp.int32),
           "question_valid": np.ones((2, 2), bool)}
  task.loss_fn({}, batch, None, True)
  assert seen["texts"].shape == (2, 2, 8)
  np.testing.assert_array_equal(seen["texts"].reshape(4, 8),
                                last_question(h.reshape(4, 8)))
  assert seen["texts"][1, 0, 1] == 34 and seen["texts"][0, 1, 1] == 10


def test_circle_count_classes_and_prompts():
  from mmtx.tasks.contrastive import circle_count_label, circle_count_prompts
  assert circle_count_label({"shape": np.array([0, 1, 0, 0, 1, 1])}) == 3
  assert circle_count_label({"shape": np.array([1, 1, 1, 1, 1, 1])}) == 0
  assert circle_count_label({"shape": np.zeros(6, np.int32)}) == 6
  p = circle_count_prompts(6)
  assert len(p) == 7 and all(len(c) == 2 for c in p)
  assert p[0] == ["there are no circles and six squares.",
                  "0 circles and 6 squares."]
  assert p[1] == ["there is one circle and five squares.",
                  "1 circle and 5 squares."]
  assert p[5][0] == "there are five circles and one square."
  with pytest.raises(ValueError, match="num_objects"):
    circle_count_prompts(0)


def test_contrastive_loss_names():
  from mmtx import losses
  from mmtx.tasks.common import contrastive_loss
  e = jnp.eye(3)
  assert contrastive_loss("softmax", e, e, 2.0, -1.0) == \
      losses.softmax_contrastive_loss(e, e, 2.0)
  assert contrastive_loss("sigmoid", e, e, 2.0, -1.0) == \
      losses.sigmoid_contrastive_loss(e, e, 2.0, -1.0)
  with pytest.raises(ValueError, match="config.model.loss"):
    contrastive_loss("hinge", e, e, 2.0, -1.0)


class _Chars:
  """A toy tokenizer: each character is one id (ord - 90)."""

  def encode_batch(self, texts, max_len):
    return data_lib.tokenizers.pad_sequences(
        [[ord(c) - 90 for c in t] for t in texts], max_len)


def test_pair_chunks_cover_every_caption_slot_major_and_pad():
  from mmtx.tasks.retrieval import pair_chunks
  images = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1)
  captions = [["a", "b"], ["c"], ["d", "e"]]
  chunks = list(pair_chunks(images, captions, _Chars(), 4, 4, first_image=7))
  assert len(chunks) == 2
  np.testing.assert_array_equal(chunks[0]["pair_image"], [7, 8, 9, 7])
  np.testing.assert_array_equal(chunks[1]["pair_image"], [9, -1, -1, -1])
  np.testing.assert_array_equal(chunks[0]["image"].ravel(), [0, 1, 2, 0])
  np.testing.assert_array_equal(chunks[1]["valid"], [True, False, False,
                                                     False])
  # Caption slot 0 of every image, then slot 1: a c d b | e.
  np.testing.assert_array_equal(chunks[0]["text"][:, 1],
                                [ord(c) - 90 for c in "acdb"])
  assert chunks[1]["text"][0, 1] == ord("e") - 90
  assert (chunks[1]["text"][1:] == 0).all()
  # Each row's image's caption fingerprints, the row's own first.
  fp = {c: data_lib.views.fingerprint(_Chars().encode_batch([c], 4)[0])[0]
        for c in "abcde"}
  want = [[fp["a"], fp["b"]], [fp["c"], -1], [fp["d"], fp["e"]],
          [fp["b"], fp["a"]]]
  np.testing.assert_array_equal(chunks[0]["caption_set"][:, :2], want)
  np.testing.assert_array_equal(chunks[1]["caption_set"][:, :2],
                                [[fp["e"], fp["d"]], [-1, -1], [-1, -1],
                                 [-1, -1]])
  assert (chunks[0]["caption_set"][:, 2:] == -1).all()
  assert len(set(fp.values())) == 5


def test_recall_uses_every_caption_of_an_image():
  from mmtx.tasks.retrieval import Pairs, recall
  # Two images; image 0 has captions 0, 2; image 1 has caption 1.
  img = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
  txt = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
  pairs = Pairs({"img_emb": img, "txt_emb": txt}, np.array([0, 1, 0]),
                np.array([5, 6]), [["x", "z"], ["y"]], [None, None])
  np.testing.assert_array_equal(pairs.first_pair, [0, 1])
  r = recall(pairs, ks=(1,))
  assert r == {"i2t_r1": 1.0, "t2i_r1": 1.0}


def test_train_fraction_slices_the_training_split(data_dir):
  from mmtx.tasks.common import train_split_with_fraction as f
  assert f("train", 1.0) == "train"
  assert f("train", 0.01) == "train[:1%]"
  assert f("train", 0.1) == "train[:10%]"
  for bad in (0.0, -0.5, 1.5):
    with pytest.raises(ValueError, match="config.data.train_fraction"):
      f("train", bad)
  with pytest.raises(ValueError, match="train_split"):
    f("train[:50%]", 0.1)
  _, info = data_lib.get_dataset("sort_of_clevr/tiny", f("train", 0.1), "vqa",
                                 batch_size=8, data_dir=str(data_dir))
  assert info.num_records == 6  # round(0.1 * 64)


def test_fusion_model_contrastive_head_and_unchanged_heads():
  import flax.linen as nn
  from mmtx.models.fusion_model import FusionModel
  cfg = dict(image=dict(patch_size=15, width=16, depth=1, mlp_dim=32,
                        num_heads=2),
             text=dict(vocab_size=20, width=16, depth=1, mlp_dim=32,
                       num_heads=2, max_len=8),
             fusion=dict(name="cross_attention", target="text", dim=16,
                         num_heads=2, num_layers=1, mlp_dim=32),
             heads=("itm",))
  x = jnp.zeros((2, 30, 30, 3))
  t = jnp.array([[1, 7, 8, 2, 0, 0, 0, 0], [1, 9, 2, 0, 0, 0, 0, 0]])
  init = lambda c: nn.meta.unbox(  # noqa: E731
      FusionModel(c).init(jax.random.key(0), x, t)["params"])
  # Without the new head the param tree is what it was.
  base = init(cfg)
  assert sorted(base) == ["CrossAttentionFusion_0", "img", "itm_head", "txt"]
  with pytest.raises(ValueError, match="config.embed_dim"):
    init(dict(cfg, heads=("contrastive",)))
  c2 = dict(cfg, heads=("itm", "contrastive"), embed_dim=8)
  params = init(c2)
  assert set(params) == set(base) | {"img_proj", "txt_proj", "logit_scale"}
  out, extras = FusionModel(c2).apply({"params": params}, x, t)
  assert out["img_emb"].shape == out["txt_emb"].shape == (2, 8)
  np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)
  # Each embedding is the L2-normalised projection of the masked mean of
  # its tower's tokens (float64 numpy reference).
  for name, mask in (("img", np.ones((2, 4))), ("txt", np.asarray(t != 0))):
    tok = np.asarray(extras[name]["tokens"], np.float64)
    m = mask.astype(np.float64)[..., None]
    proj = ((tok * m).sum(1) / m.sum(1)) @ np.asarray(
        params[f"{name}_proj"]["kernel"], np.float64)
    proj /= np.linalg.norm(proj, axis=1, keepdims=True)
    np.testing.assert_allclose(out[f"{name}_emb"], proj, atol=1e-5)


@pytest.mark.parametrize("text_query,fusion", [
    ("tokens", "cross_attention"), ("mean", "cross_attention"),
    ("mean", "additive"), ("mean", "gated_cross_attention"),
    ("mean", "concat")])
def test_fusion_model_several_questions_per_image_equal_one_by_one(
    text_query, fusion):
  """texts [B, Q, L] (image encoded once) == the same model applied to each
  (image, question) pair separately, for both ways the text enters; with
  'mean' and a strategy whose queries are independent, the Q questions share
  one pass over the image tokens (no repeat), otherwise the image tokens are
  repeated - both must give the per-pair result."""
  import flax.linen as nn
  from mmtx.models.fusion_model import FusionModel
  cfg = dict(image=dict(patch_size=5, width=16, depth=1, mlp_dim=32,
                        num_heads=2, stem_channels=(8,), posemb="sincos2d"),
             text=dict(vocab_size=20, width=16, depth=1, mlp_dim=32,
                       num_heads=2, max_len=6),
             fusion=dict(name=fusion, target="text", dim=16,
                         num_heads=2, num_layers=2, mlp_dim=32),
             heads=("vqa",), num_answers=5, head_hidden=8,
             text_query=text_query)
  if fusion == "concat":
    del cfg["fusion"]["target"]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 30, 30, 3)), jnp.float32)
  t = rng.integers(1, 20, size=(2, 3, 6))
  t[:, :, 4:] = 0
  t[1, 2, 2:] = 0
  t = jnp.asarray(t, jnp.int32)
  model = FusionModel(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(0), x, t[:, 0])["params"])
  # Perturb every parameter: at init the Flamingo gates are 0, which would
  # hide the image (and any mix-up of images) from the comparison.
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [
      p + 0.1 * jax.random.normal(k, p.shape, p.dtype)
      for p, k in zip(leaves, keys)])
  grouped, _ = model.apply({"params": params}, x, t)
  assert grouped["vqa_logits"].shape == (2, 3, 5)
  single, _ = model.apply({"params": params}, jnp.repeat(x, 3, axis=0),
                          t.reshape(6, 6))
  np.testing.assert_allclose(grouped["vqa_logits"].reshape(6, 5),
                             single["vqa_logits"], rtol=1e-5, atol=1e-5)
  if text_query == "mean":
    with pytest.raises(ValueError, match="text_query='tokens'"):
      FusionModel(dict(cfg, heads=("vqa", "mlm"))).init(
          jax.random.key(0), x, t[:, 0])
  with pytest.raises(ValueError, match="heads=\\('vqa',\\) only"):
    FusionModel(dict(cfg, heads=("vqa", "itm"))).init(jax.random.key(0), x, t)


def test_unique_texts_equal_every_row_in_value_and_gradient():
  """unique_texts=U encodes each distinct question once and gathers it
  back: logits and every gradient equal the model that encodes all rows
  (float64, relative 1e-9); with more than U distinct questions the logits
  are NaN, never wrong; and the VQA task refuses such a batch on the host,
  naming the flag, while passing the iterator's state through."""
  import flax.linen as nn
  from mmtx.models.fusion_model import FusionModel, distinct_rows
  from mmtx.tasks import vqa
  cfg = dict(image=dict(patch_size=5, width=16, depth=0, mlp_dim=32,
                        num_heads=2, stem_channels=(8,), posemb="sincos2d",
                        dtype="float64"),
             text=dict(vocab_size=20, width=16, depth=1, mlp_dim=32,
                       num_heads=2, max_len=6, dtype="float64"),
             fusion=dict(name="cross_attention", target="text", dim=16,
                         num_heads=2, num_layers=1, mlp_dim=32,
                         dtype="float64"),
             heads=("vqa",), num_answers=5, head_hidden=8, text_query="mean")
  rng = np.random.default_rng(0)
  vocab = rng.integers(1, 20, size=(7, 6))
  vocab[:, 4:] = 0
  vocab[2, 2:] = 0
  t = vocab[rng.integers(0, 7, size=(4, 9))]     # 36 rows, 7 distinct
  assert distinct_rows(t) == 7
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(4, 10, 10, 3)), jnp.float64)
    t = jnp.asarray(t, jnp.int32)
    every = FusionModel(cfg)
    shapes = nn.meta.unbox(jax.eval_shape(every.init, jax.random.key(0), x,
                                          t)["params"])
    tree = jax.tree.structure(shapes)
    params = jax.tree.map(lambda p: jnp.asarray(
        0.3 * rng.normal(size=p.shape)), shapes)   # random, float64

    def loss(model, params):
      logits = model.apply({"params": params}, x, t)[0]["vqa_logits"]
      return (jnp.tanh(logits) ** 2).sum(), logits

    (_, ref), ref_grad = jax.jit(jax.value_and_grad(
        lambda p: loss(every, p), has_aux=True))(params)
    for size in (7,):
      model = FusionModel(dict(cfg, unique_texts=size))
      assert jax.tree.structure(nn.meta.unbox(jax.eval_shape(
          model.init, jax.random.key(0), x, t)["params"])) == tree
      (_, got), grad = jax.jit(jax.value_and_grad(
          lambda p: loss(model, p), has_aux=True))(params)
      np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
      # The attention softmax runs in float32 in both, so gradients summed
      # over repeats before (here) or after (reference) it differ at
      # float32 rounding; a missed repeat would be off by a whole row's.
      scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_grad))
      for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6 * scale)
    over = FusionModel(dict(cfg, unique_texts=6))
    assert np.isnan(np.asarray(jax.jit(over.apply)({"params": params}, x, t)[
        0]["vqa_logits"])).all()
  with pytest.raises(ValueError, match="dropout_rate=0"):
    FusionModel(dict(cfg, unique_texts=8, text=dict(
        cfg["text"], dropout_rate=0.1))).init(jax.random.key(0), x, t)

  class Batches:   # a grain-like iterator with state
    def __init__(self, batches):
      self.batches, self.i = batches, 0

    def __next__(self):
      self.i += 1
      return self.batches[self.i - 1]

    def get_state(self):
      return {"i": self.i}

    def set_state(self, state):
      self.i = state["i"]

  import ml_collections
  config = ml_collections.ConfigDict({"data": {"name": "toy"},
                                      "model": {"unique_texts": 7}})
  task = vqa.VqaTask(config, model=object())
  it = task._checked(Batches([{"question": np.asarray(t)},
                              {"question": np.arange(16).reshape(8, 2)}]))
  assert next(it)["question"].shape == (4, 9, 6)
  assert it.get_state() == {"i": 1}
  with pytest.raises(ValueError, match="unique_texts=7.*8 distinct"):
    next(it)
  it.set_state({"i": 0})
  assert next(it)["question"].shape == (4, 9, 6)


@pytest.mark.parametrize("task", ["vqa", "dialogue"])
def test_loss_over_question_groups_skips_padding(task):
  """The grouped loss (VQA questions or dialogue turns per image) is the mean
  cross-entropy over valid rows only (float64 numpy reference)."""
  from mmtx.tasks import dialogue, vqa

  class Fixed:  # a "model" returning given logits
    def __init__(self, logits):
      self.logits = logits

    def apply(self, variables, images, texts, **kw):
      return {"vqa_logits": self.logits}, {}

  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 4, 5))
  answer = rng.integers(0, 5, size=(2, 4))
  valid = np.array([[1, 1, 0, 1], [1, 0, 0, 0]], bool)
  text_key = {"vqa": "question", "dialogue": "history"}[task]
  batch = {"image": np.zeros((2, 1, 1, 3)), text_key: np.ones((2, 4, 3), np.int32),
           "answer": jnp.asarray(answer, jnp.int32), "question_valid": valid}
  model = Fixed(jnp.asarray(logits, jnp.float32))
  if task == "vqa":
    t = vqa.VqaTask(_history_config("full"), model=model)
  else:
    t = dialogue.DialogueTask(_history_config("full"), model=model)
  loss, metrics = t.loss_fn({}, batch, None, True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, answer[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, ce[valid].mean(), rtol=1e-5)
  hits = (logits.argmax(-1) == answer)[valid]
  np.testing.assert_allclose(metrics["accuracy"], hits.mean(), rtol=1e-6)


def test_a_run_compiles_each_eval_step_once(tmp_path, data_dir):
  """The task is built once and its eval steps are jitted once: a run with
  two evaluations over two splits (the same padded batch shape) compiles
  the VQA eval step once, and the train step once."""
  import logging
  from mmtx import tasks, train
  from mmtx.configs import default

  class Compiles(logging.Handler):
    def __init__(self):
      super().__init__()
      self.names = []

    def emit(self, record):
      m = re.match(r"Compiling jit\((\w+)\)", record.getMessage())
      if m:
        self.names.append(m.group(1))

  cfg = default.get_config("steps=2,width=16,fusion_layers=1,questions=2,"
                           "images=4")
  cfg.unlock()
  cfg.update(eval_every=1, log_every=1, checkpoint_every=2)
  cfg.model.head_hidden = 16
  cfg.mesh.cpu_devices = 0
  cfg.data.update(name="sort_of_clevr/tiny", data_dir=str(data_dir),
                  eval_splits=("test", "test[:15]"), eval_batch_size=64)
  cfg.lock()
  task = tasks.build_task(cfg)
  assert task.info.split == "train"
  handler = Compiles()
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  try:
    with jax.log_compiles():
      out = train.train_and_evaluate(cfg, str(tmp_path), task, progress=False)
  finally:
    logger.removeHandler(handler)
  assert "accuracy" in out and "test[:15]/accuracy" in out
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows if "eval/accuracy" in r] == [1, 2]
  assert handler.names.count("eval_step") == 1, handler.names
  assert handler.names.count("train_step") == 1, handler.names
