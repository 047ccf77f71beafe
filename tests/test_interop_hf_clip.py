"""DualEncoder <-> HF CLIPModel: export gives transformers' outputs, a saved
directory loads back by the same path, import(export(p)) == p bit for bit,
and bad checkpoints fail naming the tensor and both shapes."""
import math

import flax
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmtx.interop import hf_clip, mapping  # noqa: E402
from mmtx.models import DualEncoder  # noqa: E402


def _tiny_hf(eos=2, act="quick_gelu", seed=0):
  torch.manual_seed(seed)
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=60, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=12, hidden_act=act,
                       eos_token_id=eos),
      vision_config=dict(hidden_size=24, intermediate_size=40,
                         num_hidden_layers=2, num_attention_heads=2,
                         image_size=16, patch_size=4, hidden_act=act),
      projection_dim=16)
  hf = transformers.CLIPModel(cfg).eval()
  with torch.no_grad():  # random init leaves LNs at 1/0: perturb everything
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return hf


def _inputs(eos_id, vocab=60, seed=0):
  """Texts with id 0 ('!' in CLIP) inside them, the end id last, 0-padding."""
  rs = np.random.RandomState(seed)
  ids = np.zeros((3, 12), np.int64)
  for i, n in enumerate([5, 12, 3]):
    ids[i, :n - 1] = rs.randint(3, vocab - 1, n - 1)
    ids[i, 1] = 0
    ids[i, n - 1] = eos_id
  return rs.rand(3, 16, 16, 3).astype(np.float32), ids


def _hf_outputs(hf, images, ids):
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids),
             pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  return (out.image_embeds.numpy(), out.text_embeds.numpy(),
          out.logits_per_image.numpy())


def _assert_same(config, params, want, images, ids):
  img, txt, extras = jax.jit(DualEncoder(config).apply)(
      {"params": params}, images, ids.astype(np.int32))
  np.testing.assert_allclose(img, want[0], atol=1e-4)
  np.testing.assert_allclose(txt, want[1], atol=1e-4)
  logits = extras["logit_scale"] * np.asarray(img) @ np.asarray(txt).T
  np.testing.assert_allclose(logits, want[2], atol=1e-4, rtol=1e-4)


def _assert_bitwise(a, b):
  fa = jax.tree_util.tree_leaves_with_path(a)
  fb = jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (path, x), (_, y) in zip(fa, fb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, path
    assert x.tobytes() == y.tobytes(), path


@pytest.mark.parametrize("eos", [2, 59])
def test_import_keeps_id_zero_and_export_round_trips(eos, tmp_path):
  hf = _tiny_hf(eos)
  images, ids = _inputs(59)  # 59 is the highest id: legacy argmax = eos
  want = _hf_outputs(hf, images, ids)
  config, params = hf_clip.from_transformers(hf)
  _assert_same(config, params, want, images, ids)
  # Export -> save_pretrained -> transformers loads it -> same outputs; and
  # the same directory loads into mmtx by `load`, bit for bit.
  hf_clip.save(config, params, str(tmp_path))
  assert {"config.json", "model.safetensors"} <= {
      f.name for f in tmp_path.iterdir()}
  again = transformers.CLIPModel.from_pretrained(str(tmp_path)).eval()
  for got, ref in zip(_hf_outputs(again, images, ids), want):
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
  config2, params2 = hf_clip.load(str(tmp_path))
  _assert_bitwise(params2, params)
  assert config2.to_dict() == config.to_dict()


def test_export_of_a_model_trained_in_mmtx():
  config = {
      "loss": "softmax", "embed_dim": 16,
      "image": {"variant": "mu/4", "pool": "cls", "cls_posemb": True,
                "patch_bias": False, "ln_pre": True, "activation": "gelu",
                "layer_norm_eps": 1e-5},
      # scan=True: the layers are stacked; export unstacks them.
      "text": {"vocab_size": 60, "variant": "nano", "max_len": 12,
               "causal": True, "pool": "argmax", "activation": "quick_gelu",
               "scan": True},
  }
  images, ids = _inputs(59, seed=1)
  params = jax.jit(DualEncoder(config).init)(
      jax.random.key(1), images, ids.astype(np.int32))["params"]
  # Give the LNs and the cls token non-trivial values; keep the boxes that
  # init puts on the params (export takes them as they come).
  rs = np.random.RandomState(2)
  params = jax.tree_util.tree_map(
      lambda p: p + np.float32(0.1) * rs.standard_normal(p.shape).astype(
          np.float32), params)
  # A raw logit scale past the clamp (exp(5) > 100): mmtx uses 100, and so
  # must the exported model.
  params["logit_scale"] = np.float32(5.0)
  hf = hf_clip.to_transformers(config, params)
  # No id 0 inside a text here: mmtx's own config masks 0 as padding.
  ids_no0 = np.where((ids == 0) & (np.cumsum(ids == 59, 1) == 0), 7, ids)
  want = _hf_outputs(hf, images, ids_no0)
  _assert_same(config, params, want, images, ids_no0)
  _, back = hf_clip.from_transformers(hf)
  flat, _ = mapping.unscan(mapping.flat_params(params), config)
  flat["logit_scale"] = np.float32(math.log(100.0))
  _assert_bitwise(back, flax.traverse_util.unflatten_dict(flat, sep="/"))


def test_bad_checkpoints_name_the_tensor_and_shapes():
  hf = _tiny_hf()
  config, params = hf_clip.from_transformers(hf)
  with pytest.raises(ValueError, match="expected a transformers CLIPModel"):
    hf_clip.from_transformers(hf.text_model)
  key = "vision_model.encoder.layers.1.mlp.fc1.weight"
  full = mapping.torch_state(hf)
  with torch.no_grad():
    hf.vision_model.encoder.layers[1].mlp.fc1.weight = torch.nn.Parameter(
        torch.zeros(41, 24))
  with pytest.raises(ValueError, match=r"'vision_model\.encoder\.layers\.1\."
                     r"mlp\.fc1\.weight' has shape \(41, 24\); the config "
                     r"needs \(40, 24\)"):
    hf_clip.from_transformers(hf)
  rules = hf_clip.rules(config)
  shapes = hf_clip.dual_encoder_shapes(config, 16)
  missing = {k: v for k, v in full.items() if k != key}
  with pytest.raises(ValueError, match=r"tensor 'vision_model\.encoder\.layers"
                     r"\.1\.mlp\.fc1\.weight' is missing .* \(40, 24\)"):
    mapping.to_params(missing, rules, shapes, "test")
  extra = dict(full, **{"vision_model.encoder.layers.1.ls1.gamma":
                        np.ones(24, np.float32)})
  with pytest.raises(ValueError, match=r"1 source tensor\(s\) have no place "
                     r".*ls1\.gamma \(24,\)"):
    mapping.to_params(extra, rules, shapes, "test")
  # Export checks the params against the config, and what HF can express.
  bad = jax.tree_util.tree_map(lambda x: x, params)
  bad["txt"]["posemb"]["pos_embedding"] = np.zeros((11, 32), np.float32)
  with pytest.raises(ValueError, match=r"'txt/posemb/pos_embedding' has shape "
                     r"\(11, 32\); the config needs \(12, 32\)"):
    hf_clip.to_transformers(config, bad)
  cfg = config.to_dict()
  cfg["image"]["pool"] = "gap"
  with pytest.raises(ValueError, match=r"config\.image\.pool='gap'"):
    hf_clip.to_transformers(cfg, params)
  cfg = config.to_dict()
  del cfg["image"]["cls_posemb"]  # ViT's default: the class token has none
  with pytest.raises(ValueError, match=r"config\.image\.cls_posemb=False"):
    hf_clip.to_transformers(cfg, params)
