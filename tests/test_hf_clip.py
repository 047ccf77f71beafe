"""HF CLIPModel -> DualEncoder: embeddings and logits equal transformers'."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmtx.interop.hf_clip import from_transformers  # noqa: E402
from mmtx.models import DualEncoder  # noqa: E402


@pytest.mark.parametrize("act,eos", [("quick_gelu", 2), ("gelu", 7)])
def test_converted_clip_matches_transformers(act, eos):
  torch.manual_seed(0)
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=50, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=16, hidden_act=act,
                       eos_token_id=eos, pad_token_id=1, bos_token_id=0),
      vision_config=dict(hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4,
                         image_size=16, patch_size=4, hidden_act=act),
      projection_dim=24)
  hf = transformers.CLIPModel(cfg).eval()
  # Random init leaves the LN params at 1/0: perturb every tensor so the
  # comparison sees each one.
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  config, params = from_transformers(hf)
  rs = np.random.RandomState(0)
  images = rs.rand(3, 16, 16, 3).astype(np.float32)
  # Real tokens in [3, 49], EOS (highest id for the legacy rule) last, then
  # padding; HF sees its attention mask, mmtx sees 0 = padding.
  lengths = [5, 8, 3]
  ids = np.zeros((3, 8), np.int64)
  attn = np.zeros((3, 8), np.int64)
  for i, n in enumerate(lengths):
    ids[i, :n - 1] = rs.randint(8, 40, n - 1)  # EOS (7 or 49) only at the end
    ids[i, n - 1] = 49 if eos == 2 else eos
    attn[i, :n] = 1
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(attn),
             pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  img, txt, extras = jax.jit(DualEncoder(config).apply)(
      {"params": params}, images, ids.astype(np.int32))
  np.testing.assert_allclose(img, out.image_embeds.numpy(), atol=1e-4)
  np.testing.assert_allclose(txt, out.text_embeds.numpy(), atol=1e-4)
  logits = extras["logit_scale"] * np.asarray(img) @ np.asarray(txt).T
  np.testing.assert_allclose(logits, out.logits_per_image.numpy(), atol=1e-4,
                             rtol=1e-4)


def test_param_tree_matches_fresh_dual_encoder():
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=20, hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2,
                       max_position_embeddings=8),
      vision_config=dict(hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2,
                         image_size=8, patch_size=4), projection_dim=8)
  config, params = from_transformers(transformers.CLIPModel(cfg))
  fresh = jax.eval_shape(DualEncoder(config).init, jax.random.key(0),
                         np.zeros((1, 8, 8, 3), np.float32),
                         np.ones((1, 8), np.int32))
  import flax.linen as nn
  want = jax.tree_util.tree_map(lambda x: tuple(x.shape),
                                nn.meta.unbox(fresh["params"]))
  assert jax.tree_util.tree_map(np.shape, params) == want
