"""Import at the published sizes (random init, float32): embeddings and
logits equal the source's to 1e-4, and the imported params have the
preset's shapes. Slow: each builds a 150-200M parameter torch model."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

from mmtx.interop import hf_clip, hf_siglip, mapping, presets  # noqa: E402
from mmtx.interop import open_clip as oc  # noqa: E402
from mmtx.models import DualEncoder  # noqa: E402

pytestmark = pytest.mark.slow


def _texts(length, eos, rs):
  ids = rs.randint(3, eos, (2, length))
  ids[0, 9], ids[0, 10:] = eos, 0
  ids[1, -1] = eos
  return ids


def _compare(config, params, preset, images, ids, want):
  shapes = hf_clip.dual_encoder_shapes(*presets.preset(preset))
  assert {k: v.shape for k, v in mapping.flat_params(params).items()} == shapes
  img, txt, extras = jax.jit(DualEncoder(config).apply)(
      {"params": params}, images, ids.astype(np.int32))
  np.testing.assert_allclose(img, want[0], atol=1e-4)
  np.testing.assert_allclose(txt, want[1], atol=1e-4)
  logits = (extras["logit_scale"] * np.asarray(img) @ np.asarray(txt).T +
            extras["logit_bias"])
  np.testing.assert_allclose(logits, want[2], atol=1e-4, rtol=1e-4)


def test_hf_clip_b32():
  torch.manual_seed(0)
  cfg = transformers.CLIPConfig(
      text_config=dict(hidden_size=512, intermediate_size=2048,
                       num_attention_heads=8, num_hidden_layers=12,
                       layer_norm_eps=1e-5, eos_token_id=2),
      vision_config=dict(hidden_size=768, intermediate_size=3072,
                         num_attention_heads=12, num_hidden_layers=12,
                         patch_size=32, image_size=224, layer_norm_eps=1e-5),
      projection_dim=512)
  hf = transformers.CLIPModel(cfg).eval()
  rs = np.random.RandomState(0)
  images = rs.rand(2, 224, 224, 3).astype(np.float32)
  ids = _texts(77, 49407, rs)
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids),
             pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  config, params = hf_clip.from_transformers(hf)
  _compare(config, params, "clip-B/32", images, ids,
           (out.image_embeds.numpy(), out.text_embeds.numpy(),
            out.logits_per_image.numpy()))


def test_hf_siglip_b16():
  torch.manual_seed(0)
  hf = transformers.SiglipModel(transformers.SiglipConfig()).eval()
  rs = np.random.RandomState(0)
  images = rs.rand(2, 224, 224, 3).astype(np.float32)
  ids = rs.randint(0, 32000, (2, 64))
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids),
             pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  config, params = hf_siglip.from_transformers(hf)
  _compare(config, params, "siglip-B/16-224", images, ids,
           (out.image_embeds.numpy(), out.text_embeds.numpy(),
            out.logits_per_image.numpy()))


def test_open_clip_b32():
  torch.manual_seed(0)
  model = open_clip.create_model("ViT-B-32").eval()
  rs = np.random.RandomState(0)
  images = rs.rand(2, 224, 224, 3).astype(np.float32)
  ids = _texts(77, 49407, rs)
  pix, tok = torch.tensor(images.transpose(0, 3, 1, 2)), torch.tensor(ids)
  with torch.no_grad():
    want = (model.encode_image(pix, normalize=True).numpy(),
            model.encode_text(tok, normalize=True).numpy(),
            model.get_logits(pix, tok)[0].numpy())
  config, params = oc.from_open_clip(model)
  _compare(config, params, "clip-B/32", images, ids, want)
