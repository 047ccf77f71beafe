"""open_clip CoCa -> Captioner: on the same random weights the image and text
embeddings and the caption logits equal open_clip's (float32, atol 1e-5),
greedy captions equal a step-by-step decode with open_clip's own forward, and
the state dict exported back loads into open_clip with the same outputs, as
does the CoCa `to_open_clip` builds."""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
from open_clip.coca_model import CoCa  # noqa: E402

from mmtx.data.tokenizers import ClipBpeTokenizer  # noqa: E402
from mmtx.interop import mapping  # noqa: E402
from mmtx.interop import open_clip as oc  # noqa: E402
from mmtx.interop import open_clip_coca, presets, weights  # noqa: E402
from mmtx.models import captioner as cap  # noqa: E402

SOT, EOT, LEN = 49406, 49407, 12
# open_clip's CoCa layout (coca_ViT-B-32.json) at a tiny size: the pool's
# width (embed_dim = the decoder width) differs from the ViT's, as in B/32.
VISION = dict(image_size=16, layers=2, width=24, patch_size=4, head_width=8,
              attentional_pool=True, attn_pooler_queries=5,
              attn_pooler_heads=2, output_tokens=True)
TEXT = dict(context_length=LEN, vocab_size=49408, width=32, heads=4, layers=2,
            embed_cls=True, output_tokens=True)
DECODER = dict(context_length=LEN, vocab_size=49408, width=32, heads=4,
               layers=2)
TEXTS = ["a photo of a cat", "two dogs play in the snow!", "a red bus"]


def _coca(seed=0, vision=VISION, text=TEXT, correct_cls_mask=False, layers=2,
          **kwargs):
  torch.manual_seed(seed)
  model = CoCa(32, dict(DECODER, layers=layers), text, vision,
               **kwargs).eval()
  model.text.correct_cls_mask = correct_cls_mask  # not a CLIPTextCfg field
  with torch.no_grad():
    # open_clip 3.3.0 never initialises the decoder's output projection (a
    # torch.empty: garbage, at times inf/nan), so the test does.
    torch.nn.init.normal_(model.text_decoder.text_projection, std=32 ** -0.5)
    # LayerNorms start at 1/0: perturb every tensor
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def _inputs():
  images = np.random.RandomState(0).rand(3, 16, 16, 3).astype(np.float32)
  ids, _ = ClipBpeTokenizer().encode_batch(TEXTS, LEN)
  np.testing.assert_array_equal(
      ids, open_clip.tokenize(TEXTS, context_length=LEN).numpy())
  assert (ids == 0).any(axis=1).all()  # every text is padded
  return images, ids


def _open_clip_out(model, images, ids):
  with torch.no_grad():
    return {k: v.numpy() for k, v in model(
        torch.tensor(images.transpose(0, 3, 1, 2)), torch.tensor(ids),
        output_labels=False).items() if k != "logit_scale"}


def _check_forward(model, config, params):
  images, ids = _inputs()
  want = _open_clip_out(model, images, ids)
  logits, extras = jax.jit(cap.Captioner(config).apply)(
      {"params": params}, images, ids)
  np.testing.assert_allclose(extras["img_emb"], want["image_features"],
                             atol=1e-5)
  np.testing.assert_allclose(extras["txt_emb"], want["text_features"],
                             atol=1e-5)
  # Logits at the text's tokens (those at pads are never used: open_clip
  # and mmtx mask pad queries differently).
  real = ids != 0
  np.testing.assert_allclose(np.asarray(logits)[real], want["logits"][real],
                             atol=1e-5, rtol=1e-5)
  assert np.abs(want["logits"]).max() > 0.5
  return images


def test_coca_matches_open_clip_and_decodes_the_same_caption():
  model = _coca()
  config, params = oc.from_open_clip(model)
  assert (config.pool, config.decoder_layer, config.text.cls_mask) == (
      "shared", "split", "shifted")
  assert config.num_queries == 4 and config.pool_dim == 32
  # Every tensor has its place and every parameter its tensor (a packed
  # q/k/v tensor is 3 parameters, so the elements are counted).
  state = model.state_dict()
  table = open_clip_coca.rules(config)
  assert {r.key for r in table} == set(state)
  assert len(table) == len(jax.tree_util.tree_leaves(params))
  assert sum(np.size(x) for x in jax.tree_util.tree_leaves(params)) == sum(
      v.numel() for v in state.values())
  images = _check_forward(model, config, params)

  # open_clip's generate drives transformers' logits processors; the
  # reference here is its forward pass, one greedy token at a time.
  steps = 8
  with torch.no_grad():
    pixels = torch.tensor(images.transpose(0, 3, 1, 2))
    latent, embs = model._encode_image(pixels)  # pylint: disable=W0212
    out = torch.full((3, 1), SOT)
    for _ in range(steps):
      logits = model(pixels, out, image_latent=latent, image_embs=embs,
                     output_labels=False)["logits"][:, -1]
      out = torch.cat([out, logits.argmax(-1, keepdim=True)], 1)
  want = out[:, 1:].numpy()
  got = jax.jit(lambda p, x: cap.generate(
      config, p, x, np.full((3, 1), SOT, np.int32), max_new_tokens=steps,
      eos_id=None).tokens)(params, images)
  np.testing.assert_array_equal(got, want)
  assert len(set(map(tuple, want))) > 1  # the captions depend on the image


def test_coca_export_round_trip_packed_pool_and_the_fixed_cls_mask():
  # The pool's width equals the ViT's (a packed q/k/v projection), the CLS
  # mask is open_clip's correct_cls_mask=True, the logit scale is [1]; one
  # layer per stack keeps it quick.
  vision, text = dict(VISION, width=32, layers=1), dict(TEXT, layers=1)
  model = _coca(1, vision, text, correct_cls_mask=True, layers=1,
                nonscalar_logit_scale=True)
  config, params = oc.from_open_clip(model)
  assert config.text.cls_mask == "cls"
  _check_forward(model, config, params)

  state = open_clip_coca.to_state_dict(config, params, scalar_shape=(1,))
  fresh = _coca(2, vision, text, correct_cls_mask=True, layers=1,
                nonscalar_logit_scale=True)
  mapping.load_torch_state(fresh, state)
  images, ids = _inputs()
  for key, value in _open_clip_out(model, images, ids).items():
    np.testing.assert_array_equal(
        _open_clip_out(fresh, images, ids)[key], value, err_msg=key)
  _, again = oc.from_open_clip(fresh)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)

  # Left-padded prompts: the KV-cached decode equals the uncached one.
  prompts = np.array([[0, SOT, 320], [SOT, 320, 1125], [0, 0, SOT]], np.int32)
  run = jax.jit(lambda p, x, cached: cap.generate(
      config, p, x, prompts, max_new_tokens=4, eos_id=None,
      cached=cached).tokens, static_argnums=2)
  np.testing.assert_array_equal(run(params, images, True),
                                run(params, images, False))


def test_coca_what_cannot_map_is_refused():
  with pytest.raises(ValueError, match="attentional pooler"):
    oc.from_open_clip(_coca(vision=dict(VISION, attentional_pool="parallel")))
  with pytest.raises(ValueError, match="a logit bias has no mmtx Captioner"):
    oc.from_open_clip(_coca(init_logit_bias=-10.0))
  model = _coca()
  config, params = oc.from_open_clip(model)
  with pytest.raises(ValueError, match=r"layout.*'decoder_layer': 'fused'"):
    open_clip_coca.to_state_dict(dict(config, decoder_layer="fused"), params)
  params["head"]["kernel"] = params["head"]["kernel"][:, :100]
  with pytest.raises(ValueError, match=r"head/kernel.*\(32, 100\).*"
                     r"\(32, 49408\)"):
    open_clip_coca.to_state_dict(config, params)


@pytest.mark.parametrize("variant", ["default", "cls_mask_nonscalar"])
def test_to_open_clip_builds_a_coca_with_the_same_outputs(variant, tmp_path):
  """The torch model `to_open_clip` builds gives mmtx's outputs; its state
  dict and `open_clip_config` as a .json load back through
  `weights.load` bit for bit."""
  if variant == "default":
    model, scalar = _coca(3), ()
  else:  # the pool as wide as the ViT, open_clip's fixed CLS mask, [1] scale
    model = _coca(4, dict(VISION, width=32, layers=1),
                  dict(TEXT, layers=1), correct_cls_mask=True, layers=1,
                  nonscalar_logit_scale=True)
    scalar = (1,)
  config, params = oc.from_open_clip(model)
  built = open_clip_coca.to_open_clip(config, params, scalar_shape=scalar)
  assert type(built).__name__ == "CoCa" and not built.training
  assert built.text.correct_cls_mask == (variant != "default")
  _check_forward(built, config, params)  # torch's outputs = mmtx's
  arch = tmp_path / f"exported_coca_{variant}.json"
  arch.write_text(json.dumps(open_clip_coca.open_clip_config(
      config, 16, scalar_shape=scalar)))
  torch.save(built.state_dict(), tmp_path / "coca.pt")
  _, again = weights.load(str(tmp_path / "coca.pt"), str(arch))
  weights.load.cache_clear()
  for a, b in zip(jax.tree_util.tree_leaves(again),
                  jax.tree_util.tree_leaves(params)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_open_clip_config_refuses_what_open_clip_cannot_build():
  config, _ = oc.from_open_clip(_coca())
  bad = config.to_dict()
  bad["image"]["layer_norm_eps"] = 1e-6
  bad["text"]["activation"] = "quick_gelu"
  with pytest.raises(ValueError, match=(
      r"'config.image.layer_norm_eps': 1e-06, 'config.text.activation': "
      r"'quick_gelu'\} have no open_clip CoCa equivalent")):
    open_clip_coca.open_clip_config(bad, 16)


@pytest.mark.slow
def test_coca_vit_b32_at_the_published_size():
  """open_clip 'coca_ViT-B-32' (random init, ~250M parameters): embeddings
  and logits to 1e-4, and the first greedy tokens."""
  torch.manual_seed(0)
  model = open_clip.create_model("coca_ViT-B-32").eval()
  with torch.no_grad():  # see _coca: an uninitialised torch.empty
    torch.nn.init.normal_(model.text_decoder.text_projection, std=512 ** -0.5)
  config, params = oc.from_open_clip(model)
  imported = config.to_dict()
  del imported["logit_scale_init"], imported["max_logit_scale"]
  assert imported == presets.captioner_preset("coca-B/32")[0].to_dict()
  rs = np.random.RandomState(0)
  images = rs.rand(2, 224, 224, 3).astype(np.float32)
  ids, _ = ClipBpeTokenizer().encode_batch(TEXTS[:2], 76)
  with torch.no_grad():
    pixels = torch.tensor(images.transpose(0, 3, 1, 2))
    want = model(pixels, torch.tensor(ids), output_labels=False)
  logits, extras = jax.jit(cap.Captioner(config).apply)(
      {"params": params}, images, ids)
  np.testing.assert_allclose(extras["img_emb"], want["image_features"],
                             atol=1e-4)
  np.testing.assert_allclose(extras["txt_emb"], want["text_features"],
                             atol=1e-4)
  real = ids != 0
  np.testing.assert_allclose(np.asarray(logits)[real],
                             want["logits"].numpy()[real], atol=1e-4,
                             rtol=1e-4)
  steps = 3
  with torch.no_grad():
    latent, embs = model._encode_image(pixels)  # pylint: disable=W0212
    out = torch.full((2, 1), SOT)
    for _ in range(steps):
      step = model(pixels, out, image_latent=latent, image_embs=embs,
                   output_labels=False)["logits"][:, -1]
      out = torch.cat([out, step.argmax(-1, keepdim=True)], 1)
  got = cap.generate(config, params, images, np.full((2, 1), SOT, np.int32),
                     max_new_tokens=steps, eos_id=None).tokens
  np.testing.assert_array_equal(got, out[:, 1:].numpy())
