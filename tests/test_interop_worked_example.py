"""Issue 28's worked example, offline: a small random-init Hugging Face CLIP
and SigLIP saved with save_pretrained, started from through
configs/clip.py:init=DIR, fine-tuned a few steps on Sort-of-CLEVR captions by
the one trainer (CLIP with the image tower locked, LiT), evaluated zero-shot
before and after, exported, and reloaded in transformers with the same
outputs.

References: transformers' own forward passes, fed by its image processors
and by open_clip's / transformers' tokenizers on the raw records."""
import io
import math

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")
spm = pytest.importorskip("sentencepiece")

from mmtx import checkpoint as ckpt_lib  # noqa: E402
from mmtx import data as data_lib  # noqa: E402
from mmtx import metrics as metrics_lib  # noqa: E402
from mmtx import sharding, tasks, train  # noqa: E402
from mmtx.configs import clip as clip_config  # noqa: E402
from mmtx.interop import hf_clip, hf_siglip  # noqa: E402
from mmtx.models import DualEncoder  # noqa: E402
from mmtx.tasks import contrastive  # noqa: E402

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
             num_attention_heads=2)
# Sort-of-CLEVR's 75x75 images in 5x5 patches of 15 pixels.
VISION = dict(TOWER, image_size=75, patch_size=15)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("data")
  data_lib.ensure_built("sort_of_clevr/tiny", str(path))
  return str(path)


def _perturb(hf):
  with torch.no_grad():  # random init leaves LNs at 1/0: perturb everything
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return hf.eval()


def _clip_dir(path, data_dir):
  del data_dir
  torch.manual_seed(0)
  hf = _perturb(transformers.CLIPModel(transformers.CLIPConfig(
      projection_dim=24, vision_config=VISION,
      text_config=dict(TOWER, vocab_size=49408, max_position_embeddings=40))))
  hf.save_pretrained(path)
  return hf


def _siglip_dir(path, data_dir):
  captions = _captions(data_dir, "train")
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(captions), model_writer=buf, vocab_size=60,
      model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
      minloglevel=2)
  torch.manual_seed(0)
  hf = _perturb(transformers.SiglipModel(transformers.SiglipConfig(
      vision_config=VISION,
      text_config=dict(TOWER, vocab_size=64, max_position_embeddings=40,
                       projection_size=32))))
  hf.save_pretrained(path)
  (path / "spiece.model").write_bytes(buf.getvalue())
  return hf


def _captions(data_dir, split):
  _, info = data_lib.get_dataset("sort_of_clevr/tiny", split, "contrastive",
                                 batch_size=1, data_dir=data_dir)
  return [data_lib.as_text(c) for i in range(info.num_records)
          for c in info.record(i)["caption"]]


def _reference_inputs(kind, path, data_dir, n=8):
  """Pixels and token ids for the first n test records, made by the
  source's own processor and tokenizer from the raw uint8 images and
  caption strings."""
  _, info = data_lib.get_dataset("sort_of_clevr/tiny", "test", "contrastive",
                                 batch_size=1, data_dir=data_dir)
  records = [info.record(i) for i in range(n)]
  raw = np.stack([np.asarray(r["image"]) for r in records])
  texts = [data_lib.as_text(r["caption"][0]) for r in records]
  if kind == "clip":
    proc = transformers.CLIPImageProcessor(do_resize=False,
                                           do_center_crop=False)
    ids = open_clip.tokenize(texts, context_length=40).numpy()
  else:
    proc = transformers.SiglipImageProcessor(do_resize=False)
    tok = transformers.SiglipTokenizer(vocab_file=str(path / "spiece.model"))
    ids = np.asarray(tok(texts, padding="max_length", truncation=True,
                         max_length=40).input_ids)
  pixels = proc(list(raw), return_tensors="np")["pixel_values"]
  return pixels.astype(np.float32), ids.astype(np.int64)


def _hf_embeddings(hf, pixels, ids):
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels))
  return out.image_embeds.numpy(), out.text_embeds.numpy()


def _mmtx_embeddings(model_config, params, pixels, ids):
  img, txt, _ = jax.jit(DualEncoder(model_config).apply)(
      {"params": params}, pixels.transpose(0, 2, 3, 1),
      ids.astype(np.int32))
  return np.asarray(img), np.asarray(txt)


def _hf_zero_shot(hf, kind, path, info, labelled):
  """Zero-shot top-1 on every test image from transformers' embeddings,
  prompts ensembled by their mean: 'which shape is the red object'
  (labelled: the record field objects.shape.0 and class names x templates)
  or Sort-of-CLEVR's default 'how many circles'."""
  records = [info.record(i) for i in range(info.num_records)]
  raw = np.stack([np.asarray(r["image"]) for r in records])
  if labelled:
    prompts = [[t.format(c) for t in RED_TEMPLATES] for c in SHAPES]
    labels = [int(r["objects"]["shape"][0]) for r in records]
  else:
    prompts = contrastive.circle_count_prompts(
        len(np.asarray(records[0]["objects"]["shape"])))
    labels = [contrastive.circle_count_label(r["objects"]) for r in records]
  flat = [p for cls in prompts for p in cls]
  if kind == "clip":
    pixels = transformers.CLIPImageProcessor(
        do_resize=False, do_center_crop=False)(list(raw), return_tensors="np")
    ids = open_clip.tokenize(flat, context_length=40)
  else:
    pixels = transformers.SiglipImageProcessor(do_resize=False)(
        list(raw), return_tensors="np")
    ids = torch.tensor(transformers.SiglipTokenizer(
        vocab_file=str(path / "spiece.model"))(
            flat, padding="max_length", truncation=True,
            max_length=40).input_ids)
  with torch.no_grad():
    img = hf.get_image_features(
        pixel_values=torch.tensor(pixels["pixel_values"])).numpy()
    txt = hf.get_text_features(input_ids=ids).numpy()
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  cls = txt.reshape(len(prompts), len(prompts[0]), -1).mean(1)
  cls /= np.linalg.norm(cls, axis=1, keepdims=True)
  return float(np.mean(np.argmax(img @ cls.T, 1) == labels))


# Sort-of-CLEVR's object 0 is the red one; shape 0 is a circle, 1 a square.
SHAPES = ("circle", "square")
RED_TEMPLATES = ("a red {}.", "the red object is a {}.")


# CLIP with locked-image tuning (lit=1); SigLIP fully fine-tuned (-m slow:
# the two cost ~35 s each on a loaded 2-core machine).
@pytest.mark.parametrize("kind,lit", [
    ("clip", 1), pytest.param("siglip", 0, marks=pytest.mark.slow)])
def test_worked_example(kind, lit, tmp_path, data_dir):
  src = tmp_path / "hf"
  make, io_lib, hf_class = {
      "clip": (_clip_dir, hf_clip, transformers.CLIPModel),
      "siglip": (_siglip_dir, hf_siglip, transformers.SiglipModel)}[kind]
  hf = make(src, data_dir)
  config = clip_config.get_config(f"init={src},steps=3,lit={lit}")
  assert config.data.tokenizer == ("clip" if kind == "clip"
                                   else f"siglip:{src}/spiece.model")
  with config.unlocked():
    config.data.update(name="sort_of_clevr/tiny", data_dir=data_dir,
                       eval_batch_size=32)
    config.update(batch_size=8, log_every=1, eval_every=3,
                  checkpoint_every=3)
    config.optimizer.update(warmup_steps=1, learning_rate=3e-3)
    if kind == "clip":  # the labelled-dataset evaluator; SigLIP: the default
      config.zero_shot.update(label="objects.shape.0", classes=SHAPES,
                              templates=RED_TEMPLATES)
  task = tasks.build_task(config)

  # Imported: mmtx's embeddings equal transformers' on Sort-of-CLEVR images
  # and captions prepared by the source's own processor and tokenizer.
  pixels, ids = _reference_inputs(kind, src, data_dir)
  want = _hf_embeddings(hf, pixels, ids)
  imported = train.load_transfer_params(config, _fresh(task), task)[0]
  model_config = config.model.to_dict()
  for got, ref in zip(_mmtx_embeddings(model_config, imported, pixels, ids),
                      want):
    np.testing.assert_allclose(got, ref, atol=1e-4)
  # ... and so does the data pipeline's batch (tokenizer, normalisation).
  it, info = task.eval_iterator("test")
  batch = next(it)
  np.testing.assert_allclose(batch["image"][:8],
                             pixels.transpose(0, 2, 3, 1), atol=1e-5)

  # Zero-shot before: the evaluator on the imported weights, against the
  # same classifier built from transformers' embeddings.
  mesh = sharding.make_mesh(**config.mesh)
  before, table = task.evaluate(imported, mesh)
  assert before["zero_shot/top1"] == pytest.approx(
      _hf_zero_shot(hf, kind, src, info, kind == "clip"), abs=1e-9)
  assert ("zero-shot 'objects.shape.0' (2 classes x 2 prompts)" in table
          if kind == "clip" else "'how many circles'" in table)

  # Fine-tune a few steps through the one trainer, from the weights.
  after = train.train_and_evaluate(config, str(tmp_path / "run"), task,
                                   progress=False)
  for key in ("zero_shot/top1", "i2t_r1", "t2i_r5"):
    assert 0.0 <= before[key] <= 1.0 and 0.0 <= after[key] <= 1.0
  ck = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"),
                             async_save=False)
  tuned = ck.restore_params()["params"]
  ck.close()
  moved = {p: float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for p, a, b in zip(_paths(tuned), jax.tree_util.tree_leaves(tuned),
                              jax.tree_util.tree_leaves(imported))}
  image_tower = [p for p in moved if p.startswith(("img/", "img_head/"))]
  assert len(image_tower) > 10
  assert max(moved[p] for p in moved if p not in image_tower) > 1e-4
  if lit:  # LiT: the image tower is the imported one bit for bit
    assert all(moved[p] == 0.0 for p in image_tower)
  else:
    assert max(moved[p] for p in image_tower) > 1e-4

  # Export and reload in transformers: the same outputs as mmtx's.
  io_lib.save(model_config, tuned, str(tmp_path / "export"))
  again = hf_class.from_pretrained(str(tmp_path / "export")).eval()
  for got, ref in zip(_hf_embeddings(again, pixels, ids),
                      _mmtx_embeddings(model_config, tuned, pixels, ids)):
    np.testing.assert_allclose(got, ref, atol=1e-5)
  with torch.no_grad():
    scale = float(again.logit_scale.exp())
  assert scale == pytest.approx(
      math.exp(float(np.asarray(tuned["logit_scale"]))), rel=1e-6)


def _paths(tree):
  return ["/".join(str(k.key) for k in path) for path, _ in
          jax.tree_util.tree_leaves_with_path(tree)]


def _fresh(task):
  """Freshly initialised params of the task's model (what the trainer
  loads the weights into)."""
  batch = task.init_batch()
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda r: nn.meta.unbox(
      task.init_variables(r, batch)["params"]))(jax.random.key(0))


def test_weights_that_do_not_fit_are_an_error_before_training(tmp_path,
                                                               data_dir):
  """A CLIP made for 60x60 images on Sort-of-CLEVR's 75x75 ones: the image
  size it sets is refused by the data (built-in images are not resized);
  with the dataset's size, the position table differs, named with both
  shapes, and nothing is trained; an import without its tokenizer is
  refused."""
  torch.manual_seed(0)
  transformers.CLIPModel(transformers.CLIPConfig(
      projection_dim=24, vision_config=dict(VISION, image_size=60),
      text_config=dict(TOWER, vocab_size=49408, max_position_embeddings=40))
  ).save_pretrained(tmp_path / "hf")
  config = clip_config.get_config(f"init={tmp_path / 'hf'},steps=3")
  with config.unlocked():
    config.data.update(name="sort_of_clevr/tiny", data_dir=data_dir)
    config.batch_size = 8
  assert config.data.image_size == 60
  with pytest.raises(ValueError, match=r"has 75x75 images, which are not "
                     r"resized; data.image_size=60 needs"):
    tasks.build_task(config).info
  with config.unlocked():
    config.data.image_size = 0
  task = tasks.build_task(config)
  with pytest.raises(ValueError, match=(
      r"img/posemb/pos_embedding: \(17, 32\) in the source, \(26, 32\) in "
      r"the model")):
    train.train_and_evaluate(config, str(tmp_path / "run"), task,
                             progress=False)
  assert not (tmp_path / "run" / "checkpoints").exists() or not any(
      (tmp_path / "run" / "checkpoints").iterdir())
  with config.unlocked():
    config.data.tokenizer = ""
  with pytest.raises(ValueError, match="config.data.tokenizer is unset"):
    task.import_weights()
