"""Audio-visual question answering: a video tower (ViViT), an audio tower
(log-mel -> AST), a text tower, one `FUSIONS` strategy over the three token
sets, and an answer classifier.

`apply(..., videos, audio, texts)`: videos float32 `[batch, T, H, W, C]`,
audio float32 waveforms `[batch, samples]`, texts int32 `[batch, len]` (0 =
pad) or `[batch, Q, len]` (Q questions per clip; the clip's towers run once
and their tokens are repeated per question). Returns ({'vqa_logits' [batch,
answers] or [batch, Q, answers]}, extras {'fused', 'fused_mask', 'pooled'}).
With texts None (audio-visual event classification) only the video and
audio tokens are fused, the config has no 'text', and the output is
{'event_logits' [batch, num_answers]} (num_answers = the class count).

Config keys: video (VideoTransformer fields), audio (AudioTransformer fields
plus 'mel': log_mel_spectrogram's keyword arguments and, optionally,
'spec_augment': spec_augment's, applied when deterministic=False), text (TextTransformer
fields), fusion (name + strategy fields), num_answers, head_hidden, and
`zero` (a list of 'video' / 'audio': those inputs are replaced by zeros - the
single-modality and question-only floors at an equal parameter count); see
`mmtx.models.config.AudioVisualConfig`.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtx.fusion import build_fusion
from mmtx.layers import audio as audio_lib
from mmtx.layers import masked_mean
from mmtx.models.audio import AudioTransformer
from mmtx.models.config import AudioVisualConfig, check_token_ids, parse
from mmtx.models.towers import TextTransformer
from mmtx.models.video import VideoTransformer

Array = jax.Array
MODALITIES = ("audio", "text", "video")


class AudioVisualModel(nn.Module):
  """See the module docstring."""
  config: Mapping[str, Any]

  @nn.compact
  def __call__(self, videos: Array, audio: Array, texts: Array | None = None,
               *, deterministic: bool = True):
    cfg = parse(AudioVisualConfig, self.config)
    text_shape = None if texts is None else texts.shape
    if videos.ndim != 5 or audio.ndim != 2 or (
        texts is not None and texts.ndim not in (2, 3)):
      raise ValueError(f"AudioVisualModel: expected videos [batch, T, H, W, C], "
                       f"audio [batch, samples] and texts [batch, (Q,) len] "
                       f"or None, got {videos.shape}, {audio.shape}, "
                       f"{text_shape}.")
    if not (videos.shape[0] == audio.shape[0] ==
            (audio.shape[0] if texts is None else texts.shape[0])):
      raise ValueError(f"AudioVisualModel: batch sizes differ: videos "
                       f"{videos.shape[0]}, audio {audio.shape[0]}, texts "
                       f"{text_shape and text_shape[0]}.")
    if (texts is None) != (cfg.text is None):
      raise ValueError("AudioVisualModel: config.text goes with texts (a "
                       "text tower for questions) and only with them; got "
                       f"texts {text_shape} and config.text "
                       f"{'unset' if cfg.text is None else 'set'}.")
    if texts is not None:
      check_token_ids(texts, cfg.text.get("vocab_size"), "AudioVisualModel")
    group = texts.shape[1] if texts is not None and texts.ndim == 3 else None
    if "video" in cfg.zero:
      videos = jnp.zeros_like(videos)
    if "audio" in cfg.zero:
      audio = jnp.zeros_like(audio)
    aud_cfg = dict(cfg.audio, pool="none")
    mel = aud_cfg.pop("mel")
    augment = aud_cfg.pop("spec_augment", None)
    spec = audio_lib.log_mel_spectrogram(audio, **mel)
    if augment and not deterministic:   # SpecAugment, in training only
      spec = audio_lib.spec_augment(self.make_rng("dropout"), spec,
                                    **augment)
    tokens, masks = {}, {}
    tokens["video"], vx = VideoTransformer(
        **cfg.video, pool="none", name="video")(
            videos, deterministic=deterministic)
    tokens["audio"], ax = AudioTransformer(**aud_cfg, name="audio")(
        spec, deterministic=deterministic)
    masks["video"], masks["audio"] = vx["mask"], ax["mask"]
    if group is not None:
      for k in ("video", "audio"):
        tokens[k] = jnp.repeat(tokens[k], group, axis=0)
        masks[k] = jnp.repeat(masks[k], group, axis=0)
      texts = texts.reshape(-1, texts.shape[-1])
    if texts is not None:
      tokens["text"], tx = TextTransformer(
          **cfg.text, pool="none", name="text")(
              texts, deterministic=deterministic)
      masks["text"] = tx["mask"]
    fuse = build_fusion(cfg.fusion, where="config.fusion")
    fused, fused_mask = fuse(tokens, masks, deterministic=deterministic)
    pooled = masked_mean(fused, fused_mask)
    h = nn.gelu(nn.Dense(cfg.head_hidden, name="vqa_hidden")(pooled))
    logits = nn.Dense(cfg.num_answers, name="vqa_out")(h)
    if group is not None:
      logits = logits.reshape(-1, group, logits.shape[-1])
    key = "event_logits" if texts is None else "vqa_logits"
    return ({key: logits},
            {"fused": fused, "fused_mask": fused_mask, "pooled": pooled})
