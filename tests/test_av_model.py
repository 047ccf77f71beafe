"""The audio-visual QA model and task: every fusion strategy over video,
audio and text tokens at once; Q questions per clip equal to Q separate
pairs; the zeroed-modality floors ignore what they zero; configs/avqa.py
through the CLI."""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtx import fusion
from mmtx.configs import common
from mmtx.data import av_scenes
from mmtx.models.av_model import AudioVisualModel

W, VOCAB, L, A = 16, 30, 6, 7


def _config(name, zero=()):
  return dict(
      video=dict(width=W, depth=1, mlp_dim=32, num_heads=2,
                 patch_size=(2, 4, 4)),
      audio=dict(width=W, depth=1, mlp_dim=32, num_heads=2, patch_size=(4, 8),
                 strides=(4, 8), mel=dict(sample_rate=8000, n_fft=128,
                                          hop_length=125, n_mels=16)),
      text=dict(vocab_size=VOCAB, width=W, depth=1, mlp_dim=32, num_heads=2,
                max_len=L),
      fusion=common.fusion(name, "text", dim=W, num_heads=2, num_layers=1,
                           mlp_dim=32),
      num_answers=A, head_hidden=16, zero=zero)


def _inputs(b=2, q=3, seed=0):
  rng = np.random.default_rng(seed)
  videos = jnp.asarray(rng.uniform(-1, 1, (b, 4, 8, 8, 3)), jnp.float32)
  audio = jnp.asarray(rng.normal(0, 0.3, (b, 1000)), jnp.float32)
  texts = rng.integers(1, VOCAB, (b, q, L)).astype(np.int32)
  texts[:, :, 4:] = 0
  return videos, audio, jnp.asarray(texts)


# Two in the default suite (each compiles its own model); all with -m slow.
_FAST = ("cross_attention", "m_modal")


@pytest.mark.parametrize("name", [
    n if n in _FAST else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(fusion.FUSIONS)])
def test_every_fusion_reads_video_audio_and_text_together(name):
  videos, audio, texts = _inputs()
  model = AudioVisualModel(_config(name))
  params = model.init(jax.random.key(0), videos, audio, texts)
  # Perturbed, so zero-initialised gates (Flamingo's tanh gates, FiLM's
  # identity start) let the context through.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  out, _ = model.apply(params, videos, audio, texts)
  logits = np.asarray(out["vqa_logits"])
  assert logits.shape == (2, 3, A) and np.isfinite(logits).all()
  # Each of the three inputs reaches the answer.
  for i, x in enumerate((videos, audio)):
    args = [videos, audio, texts]
    args[i] = x[::-1]                       # swap the two clips' inputs
    other, _ = model.apply(params, *args)
    assert not np.allclose(np.asarray(other["vqa_logits"])[0], logits[0],
                           atol=1e-6), (name, i)


def test_q_questions_per_clip_equal_q_separate_pairs():
  videos, audio, texts = _inputs()
  model = AudioVisualModel(_config("bottleneck"))
  params = model.init(jax.random.key(0), videos, audio, texts)
  grouped, _ = model.apply(params, videos, audio, texts)
  flat, _ = model.apply(params, jnp.repeat(videos, 3, 0),
                        jnp.repeat(audio, 3, 0), texts.reshape(6, L))
  np.testing.assert_allclose(np.asarray(grouped["vqa_logits"]).reshape(6, A),
                             np.asarray(flat["vqa_logits"]), atol=1e-5)


def test_zeroed_modalities_are_ignored_and_bad_input_is_named():
  videos, audio, texts = _inputs()
  model = AudioVisualModel(_config("concat", zero=("video", "audio")))
  params = model.init(jax.random.key(0), videos, audio, texts)
  a, _ = model.apply(params, videos, audio, texts)
  b, _ = model.apply(params, -videos, audio * 3 + 1, texts)
  np.testing.assert_array_equal(np.asarray(a["vqa_logits"]),
                                np.asarray(b["vqa_logits"]))
  with pytest.raises(ValueError, match="zero may name 'video' and 'audio'"):
    AudioVisualModel(_config("concat", zero=("text",))).init(
        jax.random.key(0), videos, audio, texts)
  with pytest.raises(ValueError, match="batch sizes differ"):
    model.init(jax.random.key(0), videos, audio[:1], texts)


def test_avqa_trains_through_the_cli_and_counts_every_question(tmp_path):
  """configs/avqa.py on AV-Scenes (tiny) through the one trainer: the eval
  table's per-type totals are the validation records' question counts."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, MMTX_DATA_DIR=str(tmp_path / "data"))
  out = subprocess.run(
      [sys.executable, "-m", "mmtx.main",
       "--config=configs/avqa.py:steps=4,width=16",
       f"--workdir={tmp_path / 'run'}", "--config.data.name=av_scenes/tiny",
       "--config.batch_size=8", "--config.checkpoint_every=4",
       "--config.data.eval_batch_size=16", "--progress=false"],
      cwd=repo, capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  table = out.stdout.split("av_scenes/tiny validation: VQA accuracy")[1]
  table = table.split("av_scenes/tiny test")[0]
  totals = {m[1]: int(m[2]) for m in re.finditer(
      r"\| (\w+) +\| +\| [\d.]+% +\| \d+ / (\d+)", table)}
  records = list(av_scenes.generate(0, "validation", 16))
  qtypes = np.concatenate([r["qtype"] for r in records])
  assert totals == {"all": len(qtypes), **{
      name: int((qtypes == t).sum())
      for t, name in enumerate(av_scenes.QTYPES)}}, table
