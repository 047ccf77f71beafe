"""Typed model configs: a key the chosen model or fusion strategy does not
read is an error that names it, raised where the config enters (the
model's first trace), before any tower runs; and where each strategy's
output keeps a modality's tokens."""
import jax
import jax.numpy as jnp
import pytest

from mmtx import fusion
from mmtx.models import Captioner, DualEncoder, FusionModel
from mmtx.models.av_model import AudioVisualModel

IMAGE = dict(patch_size=4, width=8, depth=1, mlp_dim=16, num_heads=2)
TEXT = dict(vocab_size=10, width=8, depth=1, mlp_dim=16, num_heads=2,
            max_len=4)
FUSION = dict(name="cross_attention", target="text", dim=8, num_heads=2,
              num_layers=1, mlp_dim=16)
IMAGES = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
TEXTS = jax.ShapeDtypeStruct((2, 4), jnp.int32)


def _trace(model, *inputs):
  """Traces init (shapes only): enough to reach the config's checks."""
  return jax.eval_shape(model.init, jax.random.key(0), *inputs)


def _fusion_model(**changes):
  cfg = dict(image=IMAGE, text=TEXT, fusion=FUSION, heads=("vqa",),
             num_answers=3)
  cfg.update(changes)
  return FusionModel(cfg)


def test_valid_fusion_model_config_traces():
  params = _trace(_fusion_model(), IMAGES, TEXTS)["params"]
  assert {"img", "txt", "vqa_hidden", "vqa_out"} <= set(params)


@pytest.mark.parametrize("fields,key", [
    (dict(name="concat", target="text"), "target"),          # not directional
    (dict(kv_form="sum"), "kv_form"),                          # m_modal's
    (dict(num_bottleneck_tokens=2), "num_bottleneck_tokens"),  # bottleneck's
    (dict(name="late", target=None, num_heads=None, num_layers=None,
          pool="mean"), "pool"),                               # m_modal's
])
def test_fusion_field_the_strategy_does_not_have_is_named(fields, key):
  cfg = {k: v for k, v in dict(FUSION, **fields).items() if v is not None}
  with pytest.raises(ValueError, match=rf"config.fusion: field\(s\) "
                     rf"\['{key}'\] are not read by fusion"):
    _trace(_fusion_model(fusion=cfg), IMAGES, TEXTS)


def test_the_same_fields_build_a_strategy_that_has_them():
  cfg = dict(FUSION, name="m_modal", kv_form="sum")
  del cfg["target"], cfg["mlp_dim"]  # m_modal has no FFN
  _trace(_fusion_model(fusion=cfg), IMAGES, TEXTS)


@pytest.mark.parametrize("changes,match", [
    (dict(embed_dim=4), r"\['embed_dim'\] are not read"),   # no 'contrastive'
    (dict(heads=("itm",)), r"\['num_answers'\] are not read"),  # no 'vqa'
    (dict(head_dropout=0.1, head_hidden=8, heads=("itm",), num_answers=None),
     r"\['head_dropout', 'head_hidden'\] are not read"),
    (dict(answers=3), r"config: unknown key\(s\) \['answers'\]"),
    (dict(image=dict(IMAGE, pool="cls")), r"config.image.pool: the model "
     "sets this field itself"),
    (dict(text=dict(TEXT, widht=8)), r"config.text: unknown key\(s\) "
     r"\['widht'\]; TextTransformer fields"),
    (dict(heads=("vqa", "caption")), "unknown head 'caption'"),
])
def test_fusion_model_key_it_does_not_read_is_named(changes, match):
  cfg = _fusion_model(**changes).config
  cfg = {k: v for k, v in cfg.items() if v is not None}
  with pytest.raises(ValueError, match=match):
    _trace(FusionModel(cfg), IMAGES, TEXTS)


def test_dual_encoder_key_it_does_not_read_is_named():
  cfg = dict(image=dict(IMAGE, pool="gap"), text=TEXT, embed_dim=4)
  _trace(DualEncoder(cfg), IMAGES, TEXTS)
  with pytest.raises(ValueError, match=r"config: unknown key\(s\) "
                     r"\['temperature'\]"):
    _trace(DualEncoder(dict(cfg, temperature=0.07)), IMAGES, TEXTS)
  with pytest.raises(ValueError, match=r"config.image: unknown key\(s\) "
                     r"\['patch'\]; ViT fields"):
    _trace(DualEncoder(dict(cfg, image=dict(IMAGE, patch=4))), IMAGES, TEXTS)
  with pytest.raises(ValueError, match=r"config.txt_head must be one of"):
    _trace(DualEncoder(dict(cfg, txt_head="mlp")), IMAGES, TEXTS)


def test_captioner_text_key_it_does_not_read_is_named():
  cfg = dict(image=IMAGE, text=dict(TEXT, causal=True), decoder_depth=1,
             embed_dim=4)
  with pytest.raises(ValueError, match=r"config.text: unknown key\(s\) "
                     r"\['causal'\]"):
    _trace(Captioner(cfg), IMAGES, TEXTS)


def test_audio_visual_fusion_field_it_does_not_read_is_named():
  cfg = dict(video=dict(width=8, depth=1, mlp_dim=16, num_heads=2,
                        patch_size=(2, 4, 4)),
             audio=dict(width=8, depth=1, mlp_dim=16, num_heads=2,
                        patch_size=(4, 8), strides=(4, 8),
                        mel=dict(sample_rate=8000, n_fft=128, hop_length=125,
                                 n_mels=16)),
             text=TEXT, num_answers=3,
             fusion=dict(name="sum", dim=8, combine="weighted"))
  with pytest.raises(ValueError, match=r"\['combine'\] are not read by "
                     r"fusion 'sum'"):
    _trace(AudioVisualModel(cfg),
           jax.ShapeDtypeStruct((2, 4, 8, 8, 3), jnp.float32),
           jax.ShapeDtypeStruct((2, 1000), jnp.float32), TEXTS)


@pytest.mark.parametrize("name,target,want", [
    # Streams: every modality in sorted key order (audio 3, image 5, text 2).
    ("concat", None, {"audio": 0, "image": 3, "text": 8}),
    ("co_attention", None, {"audio": 0, "image": 3, "text": 8}),
    ("bottleneck", None, {"audio": 0, "image": 3, "text": 8}),
    # Directional: the target's tokens only.
    ("cross_attention", "text", {"audio": None, "image": None, "text": 0}),
    ("film", "image", {"audio": None, "image": 0, "text": None}),
    ("gated_cross_attention", None, {"audio": 0, "image": None,
                                     "text": None}),
    # Pooled: one vector, no modality's tokens.
    ("sum", None, {"audio": None, "image": None, "text": None}),
    ("m_modal", None, {"audio": None, "image": None, "text": None}),
])
def test_each_strategy_reports_where_a_modality_sits(name, target, want):
  fields = {"target": target} if target else {}
  module = fusion.build_fusion(name, **fields)
  lengths = {"text": 2, "audio": 3, "image": 5}
  assert {k: module.token_offset(k, lengths) for k in lengths} == want
