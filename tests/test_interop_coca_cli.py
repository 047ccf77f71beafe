"""An open_clip CoCa checkpoint through the one CLI, offline: a small
random-init CoCa of an open_clip model config .json, saved as .safetensors,
started from with configs/caption.py:preset=JSON,init=FILE. The imported
params equal `from_open_clip`'s bit for bit, the data pipeline feeds open_clip's
token ids, the task's captions equal a greedy decode driven step by step
through open_clip's own forward pass (from <start_of_text>, cut at
<end_of_text>), and the CLI trains and reports caption metrics."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
safetensors_torch = pytest.importorskip("safetensors.torch")

from mmtx import data as data_lib  # noqa: E402
from mmtx import tasks, train  # noqa: E402
from mmtx.configs import caption as caption_config  # noqa: E402
from mmtx.interop import open_clip as oc  # noqa: E402
from mmtx.interop import weights  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOT, EOT, LEN = 49406, 49407, 24
# open_clip's CoCa layout (as coca_ViT-B-32.json) at a tiny size, for
# Sort-of-CLEVR's 75x75 images in 5x5 patches of 15 pixels.
ARCH = {
    "embed_dim": 32, "custom_text": True,
    "vision_cfg": {"image_size": 75, "layers": 1, "width": 24,
                   "patch_size": 15, "head_width": 8,
                   "attentional_pool": True, "attn_pooler_queries": 5,
                   "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": LEN, "vocab_size": 49408, "width": 32,
                 "heads": 4, "layers": 1, "embed_cls": True,
                 "output_tokens": True},
    "multimodal_cfg": {"context_length": LEN, "vocab_size": 49408,
                       "width": 32, "heads": 4, "layers": 1,
                       "attn_pooler_heads": 2},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("data")
  data_lib.ensure_built("sort_of_clevr/tiny", str(path))
  return str(path)


@pytest.fixture(scope="module")
def coca_files(tmp_path_factory):
  """(torch CoCa, its model config .json, its .safetensors)."""
  path = tmp_path_factory.mktemp("coca")
  arch = path / "tiny_coca_cli_test.json"
  arch.write_text(json.dumps(ARCH))
  torch.manual_seed(0)
  model = open_clip.CoCa(**{k: v for k, v in ARCH.items()
                            if k != "custom_text"}).eval()
  with torch.no_grad():
    # open_clip 3.3.0 leaves the decoder's output projection a torch.empty.
    torch.nn.init.normal_(model.text_decoder.text_projection, std=32 ** -0.5)
    for p in model.parameters():  # LayerNorms start at 1/0: perturb all
      p.add_(0.05 * torch.randn_like(p))
    # A large <end_of_text> column: greedy captions end at different steps.
    model.text_decoder.text_projection[:, EOT] *= 5
  file = path / "coca.safetensors"
  safetensors_torch.save_file(model.state_dict(), str(file))
  return model, str(arch), str(file)


def _args(arch, file):
  return f"preset={arch},init={file},steps=2"


def test_coca_file_imports_and_decodes_as_open_clip(
    coca_files, data_dir):
  model, arch, file = coca_files
  config = caption_config.get_config(_args(arch, file))
  assert config.data.tokenizer == "clip" and config.data.normalize == "clip"
  assert (config.data.max_len, config.data.image_size) == (LEN, 75)
  with config.unlocked():
    config.data.update(name="sort_of_clevr/tiny", data_dir=data_dir,
                       eval_batch_size=16)
    config.batch_size = 8
  task = tasks.build_task(config)

  # The params the trainer starts from are from_open_clip's, bit for bit.
  _, want = oc.from_open_clip(model)
  fresh = jax.jit(lambda r: __import__("flax").linen.meta.unbox(
      task.init_variables(r, task.init_batch())["params"]))(
          jax.random.key(0))
  got, loaded, missing = train.load_transfer_params(config, fresh, task)
  assert not missing and loaded == len(jax.tree_util.tree_leaves(want))
  leaves = jax.tree_util.tree_leaves_with_path
  assert [p for p, _ in leaves(got)] == [p for p, _ in leaves(want)]
  for (path, a), (_, b) in zip(leaves(got), leaves(want)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path

  # The pipeline's batch holds open_clip's ids of the captions.
  it, info = task.eval_iterator("test")
  batch = next(it)
  texts = [data_lib.as_text(info.record(int(i))["caption"][0])
           for i in batch["index"]]
  np.testing.assert_array_equal(
      batch["text"], open_clip.tokenize(texts, context_length=LEN).numpy())

  # Captions: the task decodes from <start_of_text> and stops at
  # <end_of_text>, as a step-by-step greedy decode with open_clip does.
  images = batch["image"]
  tokens = np.asarray(jax.jit(task.generate)(got, images))
  steps = LEN - 1
  with torch.no_grad():
    pixels = torch.tensor(np.asarray(images).transpose(0, 3, 1, 2))
    latent, embs = model._encode_image(pixels)  # pylint: disable=W0212
    out = torch.full((len(images), 1), SOT)
    for _ in range(steps):
      logits = model(pixels, out, image_latent=latent, image_embs=embs,
                     output_labels=False)["logits"][:, -1]
      out = torch.cat([out, logits.argmax(-1, keepdim=True)], 1)
  ref = out[:, 1:].numpy()
  ends = [list(row).index(EOT) + 1 if EOT in row else steps for row in ref]
  assert len(set(ends)) > 1 and min(ends) < steps  # EOT cuts them
  for row, end in enumerate(ends):
    np.testing.assert_array_equal(tokens[row, :end], ref[row, :end])
    assert (tokens[row, end:] == 0).all()



@pytest.mark.slow   # ~45 s: a CLI run (import + decode stay in the fast suite)
def test_coca_file_trains_through_the_cli(coca_files, data_dir, tmp_path):
  """The same args through `python -m mmtx.main`: every param comes from
  the file, training runs and the caption eval reports its metrics."""
  _, arch, file = coca_files
  env = dict(os.environ, MMTX_DATA_DIR=data_dir)
  run = subprocess.run(
      [sys.executable, "-m", "mmtx.main",
       f"--config=configs/caption.py:{_args(arch, file)}",
       f"--workdir={tmp_path / 'run'}", "--config.data.name=sort_of_clevr/tiny",
       "--config.batch_size=4", "--config.data.max_len=12",
       "--config.log_every=1", "--config.eval_every=2",
       "--config.checkpoint_every=2", "--config.data.eval_batch_size=16",
       "--progress=false"],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert f"params from {file}; 0 not in the checkpoint" in run.stdout
  rows = [json.loads(line) for line in open(tmp_path / "run" /
                                             "metrics.jsonl")]
  losses = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
  assert [s for s, _ in losses] == [1, 2] and np.isfinite(losses).all()
  final = [r for r in rows if "eval/cider" in r][-1]
  for key in ("eval/bleu_1", "eval/bleu_4", "eval/cider", "eval/i2t_r1"):
    assert 0.0 <= final[key] < 10.0, (key, final)
  assert "greedy decoding, 16 images, 80 references" in run.stdout


def test_coca_file_that_does_not_fit_is_an_error_naming_the_tensor(
    coca_files, tmp_path):
  """A file of another architecture than preset=: each tensor that
  differs, with both shapes; the wrong model family is refused."""
  model, arch, _ = coca_files
  state = dict(model.state_dict())
  state["visual.conv1.weight"] = state["visual.conv1.weight"][:16]
  state["extra.weight"] = torch.zeros(3)
  del state["logit_scale"]
  bad = tmp_path / "bad.pt"
  torch.save(state, bad)
  with pytest.raises(ValueError) as e:
    caption_config.get_config(f"preset={arch},init={bad}")
  msg = str(e.value)
  assert "visual.conv1.weight: (16, 3, 15, 15) in the file, (24, 3, 15, 15)" \
      in msg
  assert "missing from the file ['logit_scale ()']" in msg
  assert "'extra.weight (3,)'" in msg
  weights.load.cache_clear()
  with pytest.raises(ValueError, match="needs preset= naming"):
    caption_config.get_config(f"init={bad}")
  with pytest.raises(ValueError, match="width cannot be combined"):
    caption_config.get_config("preset=coca-B/32,width=64")
  from mmtx.configs import clip as clip_config  # pylint: disable=g-import-not-at-top
  _, _, file = coca_files
  with pytest.raises(ValueError, match=r"is a CoCa \(Captioner\) model; "
                     r"configs/caption.py trains it"):
    clip_config.get_config(f"preset={arch},init={file}")
  weights.load.cache_clear()
