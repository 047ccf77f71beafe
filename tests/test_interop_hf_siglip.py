"""HF SiglipModel <-> DualEncoder (sigmoid head, MAP pooling): embeddings and
logits equal transformers', export reloads in transformers with the same
outputs, and import(export(p)) == p bit for bit."""
import math

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmtx.interop import hf_siglip  # noqa: E402
from mmtx.models import DualEncoder  # noqa: E402


def _tiny_hf(seed=0):
  torch.manual_seed(seed)
  cfg = transformers.SiglipConfig(
      text_config=dict(vocab_size=50, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=10, projection_size=24),
      vision_config=dict(hidden_size=24, intermediate_size=40,
                         num_hidden_layers=2, num_attention_heads=2,
                         image_size=16, patch_size=4))
  hf = transformers.SiglipModel(cfg).eval()
  with torch.no_grad():  # random init leaves LNs at 1/0: perturb everything
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
    hf.logit_scale.fill_(math.log(117.0))  # above CLIP's clamp of 100
    hf.logit_bias.fill_(-3.0)
  return hf


def _hf_outputs(hf, images, ids):
  with torch.no_grad():  # no attention mask: SigLIP attends to its padding
    out = hf(input_ids=torch.tensor(ids),
             pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  return (out.image_embeds.numpy(), out.text_embeds.numpy(),
          out.logits_per_image.numpy())


def test_siglip_round_trip(tmp_path):
  hf = _tiny_hf()
  rs = np.random.RandomState(0)
  images = rs.rand(3, 16, 16, 3).astype(np.float32)
  ids = rs.randint(0, 50, (3, 10))  # id 0 included: nothing is masked
  ids[0, 6:] = 1  # SigLIP's pad id
  want = _hf_outputs(hf, images, ids)
  config, params = hf_siglip.from_transformers(hf)
  apply = jax.jit(DualEncoder(config).apply)
  img, txt, extras = apply({"params": params}, images, ids.astype(np.int32))
  np.testing.assert_allclose(img, want[0], atol=1e-4)
  np.testing.assert_allclose(txt, want[1], atol=1e-4)
  logits = (extras["logit_scale"] * np.asarray(img) @ np.asarray(txt).T +
            extras["logit_bias"])
  np.testing.assert_allclose(logits, want[2], atol=1e-4, rtol=1e-4)

  hf_siglip.save(config, params, str(tmp_path))
  again = transformers.SiglipModel.from_pretrained(str(tmp_path)).eval()
  for got, ref in zip(_hf_outputs(again, images, ids), want):
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
  config2, params2 = hf_siglip.load(str(tmp_path))
  assert config2.to_dict() == config.to_dict()
  leaves = jax.tree_util.tree_leaves_with_path
  assert [p for p, _ in leaves(params2)] == [p for p, _ in leaves(params)]
  for (path, a), (_, b) in zip(leaves(params2), leaves(params)):
    assert a.shape == b.shape and a.tobytes() == b.tobytes(), path


def test_siglip_refuses_what_it_cannot_map():
  hf = _tiny_hf()
  with pytest.raises(ValueError, match="expected a transformers SiglipModel"):
    hf_siglip.from_transformers(hf.vision_model)
  config, params = hf_siglip.from_transformers(hf)
  cfg = config.to_dict()
  cfg["text"]["causal"] = True
  with pytest.raises(ValueError, match=r"config\.text\.causal=True"):
    hf_siglip.to_transformers(cfg, params)
  with torch.no_grad():
    hf.vision_model.head.attention.in_proj_weight = torch.nn.Parameter(
        torch.zeros(72, 20))
  with pytest.raises(ValueError, match=r"'vision_model\.head\.attention\."
                     r"in_proj_weight' has shape \(72, 20\); the config needs "
                     r"\(72, 24\)"):
    hf_siglip.from_transformers(hf)
