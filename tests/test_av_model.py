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


def test_spec_augment_masks_the_spectrogram_in_training_only(monkeypatch):
  """config.audio.spec_augment: the log-mel spectrogram goes through
  mmtx.layers.audio.spec_augment with those keywords when deterministic is
  False, and never in evaluation; the parameters are the same."""
  from mmtx.layers import audio as audio_lib
  videos, audio, texts = _inputs()
  augment = dict(time_masks=1, max_time_width=4, freq_masks=2,
                 max_freq_width=6)
  cfg = _config("concat")
  cfg["audio"]["spec_augment"] = augment
  model, plain = AudioVisualModel(cfg), AudioVisualModel(_config("concat"))
  params = plain.init(jax.random.key(0), videos, audio, texts)
  assert jax.tree.structure(params) == jax.tree.structure(
      model.init(jax.random.key(0), videos, audio, texts))
  seen, real = [], audio_lib.spec_augment

  def spy(rng, spec, **kw):
    out = real(rng, spec, **kw)
    seen.append((spec.shape, kw, float(jnp.mean(out != spec))))
    return out
  monkeypatch.setattr(audio_lib, "spec_augment", spy)
  evaluated, _ = model.apply(params, videos, audio, texts)
  assert not seen
  np.testing.assert_array_equal(
      np.asarray(evaluated["vqa_logits"]),
      np.asarray(plain.apply(params, videos, audio, texts)[0]["vqa_logits"]))
  rngs = {"dropout": jax.random.key(3)}
  trained, _ = model.apply(params, videos, audio, texts, deterministic=False,
                           rngs=rngs)
  # 1000 samples, hop 125, centred: 9 frames of 16 mels.
  assert [(shape, kw) for shape, kw, _ in seen] == [((2, 9, 16), augment)]
  assert seen[0][2] > 0          # some of the spectrogram was masked
  untouched, _ = plain.apply(params, videos, audio, texts,
                             deterministic=False, rngs=rngs)
  assert not np.allclose(np.asarray(trained["vqa_logits"]),
                         np.asarray(untouched["vqa_logits"]))
  cfg["audio"]["spec_augment"] = dict(time_mask=1)
  with pytest.raises(ValueError, match=r"spec_augment: unknown key\(s\) "
                     r"\['time_mask'\]; its keys are .*'time_masks'"):
    AudioVisualModel(cfg).init(jax.random.key(0), videos, audio, texts)


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
