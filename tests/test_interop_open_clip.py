"""open_clip ViT CLIP -> DualEncoder: embeddings and logits equal open_clip's
on the same weights, with texts tokenized by mmtx's ClipBpeTokenizer; the
same through a saved .safetensors / .pt file; what cannot map is refused."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from mmtx.data.tokenizers import ClipBpeTokenizer  # noqa: E402
from mmtx.interop import open_clip as oc  # noqa: E402
from mmtx.models import DualEncoder  # noqa: E402

TEXTS = ["a photo of a cat!", "Crème brûlée & emoji 😀, wow!!!",
         "&lt;tags&gt; and a caption long enough to be cut at the end"]
VISION = dict(image_size=16, layers=2, width=24, patch_size=4, head_width=8)
TEXT = dict(context_length=12, vocab_size=49408, width=32, heads=4, layers=2)
SIGLIP_TEXT = dict(TEXT, no_causal_mask=True, proj_bias=True, pool_type="last",
                   norm_kwargs={"eps": 1e-6})


def _model(seed=0, **kwargs):
  torch.manual_seed(seed)
  model = open_clip.create_model("ViT-B-32", embed_dim=16, **kwargs).eval()
  with torch.no_grad():  # LNs start at 1/0: perturb every tensor
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def _check(model, config, params):
  rs = np.random.RandomState(0)
  images = rs.rand(3, 16, 16, 3).astype(np.float32)
  ids, _ = ClipBpeTokenizer().encode_batch(TEXTS, 12)
  ref_ids = open_clip.tokenize(TEXTS, context_length=12)
  np.testing.assert_array_equal(ids, ref_ids.numpy())
  assert (ids == 0).any()  # '!' is id 0, inside the texts
  with torch.no_grad():
    want_img = model.encode_image(torch.tensor(images.transpose(0, 3, 1, 2)),
                                  normalize=True).numpy()
    want_txt = model.encode_text(ref_ids, normalize=True).numpy()
    want_logits = model.get_logits(
        torch.tensor(images.transpose(0, 3, 1, 2)), ref_ids)[0].numpy()
  img, txt, extras = jax.jit(DualEncoder(config).apply)(
      {"params": params}, images, ids)
  np.testing.assert_allclose(img, want_img, atol=1e-4)
  np.testing.assert_allclose(txt, want_txt, atol=1e-4)
  logits = (extras["logit_scale"] * np.asarray(img) @ np.asarray(txt).T +
            extras["logit_bias"])
  np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)


def test_clip_quickgelu_matches_open_clip_and_loads_from_files(tmp_path):
  kwargs = dict(vision_cfg=VISION, text_cfg=TEXT, force_quick_gelu=True)
  model = _model(**kwargs)
  config, params = oc.from_open_clip(model)
  assert config.text.pool == "argmax" and not config.text.mask_padding
  assert config.image.activation == "quick_gelu"
  _check(model, config, params)
  from safetensors.torch import save_file
  save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
  torch.save(model.state_dict(), str(tmp_path / "w.pt"))
  for name in ("w.safetensors", "w.pt"):
    config2, params2 = oc.load("ViT-B-32", str(tmp_path / name),
                               embed_dim=16, **kwargs)
    assert config2.to_dict() == config.to_dict()
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(a, b), params2, params)


def test_open_clip_siglip_entry_with_a_timm_tower():
  # 'ViT-B-16-SigLIP' is a timm ViT (MAP pooling) + the SigLIP text tower
  # (bidirectional, last-token pool, biased projection) + a logit bias; the
  # same classes at a tiny size.
  import timm
  from open_clip.timm_model import TimmModel
  model = _model(2, vision_cfg=VISION, text_cfg=SIGLIP_TEXT,
                 force_custom_text=True, init_logit_bias=-10.0)
  with torch.device("meta"):
    visual = TimmModel("vit_base_patch16_siglip_224", embed_dim=24,
                       image_size=16, pool="map", proj="none")
  visual.trunk = timm.create_model(
      "vit_base_patch16_siglip_224", pretrained=False, num_classes=0,
      global_pool="map", img_size=16, patch_size=4, embed_dim=24, depth=2,
      num_heads=2, mlp_ratio=40 / 24)
  with torch.no_grad():
    for p in visual.parameters():
      p.add_(0.05 * torch.randn_like(p))
    model.text.text_projection = torch.nn.Linear(32, 24)
  model.visual = visual.eval()
  config, params = oc.from_open_clip(model)
  assert config.image.pool == "map" and config.img_head == "none"
  assert config.loss == "sigmoid" and config.txt_head == "linear_bias"
  assert not config.text.causal and config.text.pool == "last"
  _check(model, config, params)


def test_what_cannot_map_is_refused():
  with pytest.raises(ValueError, match=r"ls_1 \(LayerScale\) has no mmtx"):
    oc.from_open_clip(_model(vision_cfg=dict(VISION, ls_init_value=0.1),
                             text_cfg=TEXT))
  coca = open_clip.create_model(  # a CoCa whose image tower has no pooler
      "coca_ViT-B-32", embed_dim=16,
      vision_cfg=dict(VISION, attn_pooler_heads=2),
      text_cfg=dict(TEXT, embed_cls=True),
      multimodal_cfg=dict(TEXT, attn_pooler_heads=2))
  with pytest.raises(ValueError, match="without CoCa's one attentional pool"):
    oc.from_open_clip(coca)
  model_bad = _model(vision_cfg=VISION, text_cfg=TEXT)
  with torch.no_grad():
    model_bad.visual.transformer.resblocks[1].mlp.c_fc.weight = \
        torch.nn.Parameter(torch.zeros(95, 24))
  with pytest.raises(ValueError, match=r"'visual\.transformer\.resblocks\.1\."
                     r"mlp\.c_fc\.weight' has shape \(95, 24\); the config "
                     r"needs \(96, 24\)"):
    oc.from_open_clip(model_bad)
