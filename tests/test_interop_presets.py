"""Presets at published sizes: parameter counts (jax.eval_shape, no memory)
equal the source implementation's (torch on the meta device, no memory)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from mmtx.interop import hf_clip, open_clip_coca, presets  # noqa: E402

OPEN_CLIP_NAMES = {"clip-B/32": "ViT-B-32", "clip-B/16": "ViT-B-16",
                   "clip-L/14": "ViT-L-14",
                   "siglip-B/16-224": "ViT-B-16-SigLIP",
                   "siglip-So400m/14-224": "ViT-SO400M-14-SigLIP"}


def _mmtx_count(name):
  config, image_size = presets.preset(name)
  shapes = hf_clip.dual_encoder_shapes(config, image_size)
  return sum(int(np.prod(s)) for s in shapes.values())


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_NAMES))
def test_preset_param_count_equals_open_clip(name):
  with torch.device("meta"):
    model = open_clip.create_model(OPEN_CLIP_NAMES[name], device="meta")
  assert _mmtx_count(name) == sum(p.numel() for p in model.parameters())


def test_siglip_preset_equals_transformers_default():
  with torch.device("meta"):  # SiglipConfig() is siglip-base-patch16-224
    model = transformers.SiglipModel(transformers.SiglipConfig())
  assert _mmtx_count("siglip-B/16-224") == sum(
      p.numel() for p in model.parameters())


def test_unknown_preset():
  with pytest.raises(ValueError, match="clip-B/32"):
    presets.preset("clip-B/33")


@pytest.mark.parametrize("name", ["coca-B/32", "coca-L/14"])
def test_coca_preset_param_count_equals_open_clip(name):
  with torch.device("meta"):
    model = open_clip.create_model("coca_ViT-" + name[5:].replace("/", "-"),
                                   device="meta")
  shapes = open_clip_coca.captioner_shapes(*presets.captioner_preset(name))
  assert sum(int(np.prod(s)) for s in shapes.values()) == sum(
      p.numel() for p in model.parameters())
