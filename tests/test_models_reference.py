"""Float64 numpy references for the towers, FusionModel's heads and the
Captioner (issue 27 item 2): the conv-stem ViT with 2-D sin-cos positions,
the non-causal mean-pooled text tower, FusionModel's vqa / itm / mlm /
contrastive heads over a cross-attention fusion, and the CoCa Captioner's
forward pass, written from the np_reference blocks. Params are random
N(0, 0.3^2) (no zero biases)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from mmtx.models.fusion_model import FusionModel
from mmtx.models.towers import TextTransformer, ViT
from test_fusion_reference import _reference as fusion_reference

IMG = dict(patch_size=2, stem_channels=(4, 6), width=8, depth=1, mlp_dim=16,
           num_heads=2, posemb="sincos2d", posemb_temperature=30.0)
TXT = dict(vocab_size=20, width=8, depth=2, mlp_dim=16, num_heads=2,
           max_len=7, causal=False)
FUSION = dict(name="cross_attention", target="text", dim=8, num_heads=2,
              num_layers=1, mlp_dim=16)
TEXTS = np.array([[1, 5, 7, 2, 0, 0], [1, 3, 3, 9, 11, 2]], np.int32)


def _random(module, *args, seed=0):
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
  leaves, tree = jax.tree_util.tree_flatten(jax.tree_util.tree_map(
      lambda x: x, __import__("flax").linen.meta.unbox(shapes)))
  rs = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(tree, [
      jnp.asarray(0.3 * rs.normal(size=x.shape), x.dtype) for x in leaves])


def _images(seed=1):
  return np.random.default_rng(seed).normal(size=(2, 24, 24, 3)).astype(
      np.float32)


def _conv_same_s2(x, p):
  """3x3 stride-2 'SAME' convolution: output ceil(n / 2); the padding
  (2 (out - 1) + 3 - n, at least 0) splits with the extra pixel after."""
  b, h, w, _ = x.shape
  oh, ow = -(-h // 2), -(-w // 2)
  ph, pw = max(2 * (oh - 1) + 3 - h, 0), max(2 * (ow - 1) + 3 - w, 0)
  xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2),
                  (0, 0)))
  out = np.zeros((b, oh, ow, p["kernel"].shape[-1]))
  for di in range(3):
    for dj in range(3):
      out += xp[:, di:di + 2 * oh:2, dj:dj + 2 * ow:2] @ p["kernel"][di, dj]
  return out + p["bias"]


def _sincos2d(gh, gw, d, temperature):
  """Token (y, x) row-major: [sin(y w), cos(y w), sin(x w), cos(x w)],
  w_k = T^(-k / (d / 4)), k < d / 4."""
  w = temperature ** (-np.arange(d // 4) / (d // 4))
  y, x = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  y, x = y.reshape(-1, 1) * w, x.reshape(-1, 1) * w
  return np.concatenate([np.sin(y), np.cos(y), np.sin(x), np.cos(x)], 1)


def _pad(m):
  return m[:, None, :, None] & m[:, None, None, :]


def _encoder(p, x, mask, depth):
  for i in range(depth):
    x = ref.encoder_block(p[f"layers_{i}"], x, mask, "pre", "gelu")
  return ref.layer_norm(x, p["ln_final"])


def vit_tokens(p, images):
  x = images.astype(np.float64)
  for i in range(len(IMG["stem_channels"])):
    x = np.maximum(_conv_same_s2(x, p[f"stem_{i}"]), 0)
  b, h, w, c = x.shape
  s = IMG["patch_size"]
  gh, gw = h // s, w // s
  patches = x.reshape(b, gh, s, gw, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      b, gh * gw, s * s * c)
  k = p["embedding"]["conv"]
  x = patches @ k["kernel"].reshape(-1, k["kernel"].shape[-1]) + k["bias"]
  x = x + _sincos2d(gh, gw, IMG["width"], IMG["posemb_temperature"])
  return _encoder(p["encoder"], x, None, IMG["depth"])


def text_tokens(p, texts):
  mask = texts != 0
  x = p["embedding"]["embedding"][texts]
  x = x + p["posemb"]["pos_embedding"][:texts.shape[1]]
  return _encoder(p["encoder"], x, _pad(mask), TXT["depth"]), mask


def _masked_mean(x, m):
  return (x * m[..., None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1)


def test_conv_stem_vit_with_sincos_positions_matches_float64():
  images = _images()
  vit = ViT(**IMG, pool="gap")
  params = _random(vit, images)
  (got, extras) = jax.jit(vit.apply)({"params": params}, images)
  tokens = vit_tokens(ref.f64(jax.tree_util.tree_map(np.asarray, params)),
                      images)
  assert tokens.shape == (2, 9, 8)   # 24 -> 12 -> 6 pixels, 2x2 patches
  np.testing.assert_allclose(np.asarray(extras["tokens"]), tokens,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got), tokens.mean(1), rtol=1e-5,
                             atol=1e-5)


def test_mean_pooled_non_causal_text_tower_matches_float64():
  tower = TextTransformer(**TXT, pool="mean")
  params = _random(tower, TEXTS, seed=2)
  got, _ = jax.jit(tower.apply)({"params": params}, TEXTS)
  tokens, mask = text_tokens(ref.f64(jax.tree_util.tree_map(np.asarray,
                                                            params)), TEXTS)
  np.testing.assert_allclose(np.asarray(got), _masked_mean(tokens, mask),
                             rtol=1e-5, atol=1e-5)
  # Non-causal: the first token's output depends on a later token.
  later = TEXTS.copy()
  later[1, 4] = 12
  a, _ = jax.jit(tower.apply)({"params": params}, TEXTS)
  b, _ = jax.jit(tower.apply)({"params": params}, later)
  assert not np.allclose(np.asarray(a)[1], np.asarray(b)[1])


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 *
                                                          x ** 3)))


def test_fusion_model_heads_match_float64():
  images = _images(3)
  cfg = dict(image=IMG, text=TXT, fusion=FUSION,
             heads=("vqa", "itm", "mlm", "contrastive"), num_answers=5,
             head_hidden=12, embed_dim=6)
  model = FusionModel(cfg)
  params = _random(model, images, TEXTS, seed=4)
  out, _ = jax.jit(model.apply)({"params": params}, images, TEXTS)
  p = ref.f64(jax.tree_util.tree_map(np.asarray, params))
  img = vit_tokens(p["img"], images)
  txt, mask = text_tokens(p["txt"], TEXTS)
  fields = {k: v for k, v in FUSION.items() if k != "name"}
  fused, fused_mask = fusion_reference(
      "cross_attention", p["CrossAttentionFusion_0"],
      {"image": img, "text": txt},
      {"image": np.ones(img.shape[:2], bool), "text": mask}, fields)
  pooled = _masked_mean(fused, fused_mask)
  dense = lambda q, x: x @ q["kernel"] + q["bias"]  # noqa: E731
  want = {
      "vqa_logits": dense(p["vqa_out"], _gelu_tanh(dense(p["vqa_hidden"],
                                                         pooled))),
      "itm_logits": dense(p["itm_head"], pooled),
      "mlm_logits": dense(p["mlm_head"], fused),
  }
  for name, tok, m in (("img", img, np.ones(img.shape[:2], bool)),
                       ("txt", txt, mask)):
    e = _masked_mean(tok, m) @ p[f"{name}_proj"]["kernel"]
    want[f"{name}_emb"] = e / np.linalg.norm(e, axis=-1, keepdims=True)
  want["logit_scale"] = math.exp(min(float(p["logit_scale"]),
                                     math.log(100.0)))
  assert sorted(out) == sorted(want)
  for k, v in want.items():
    got = np.asarray(out[k])
    if k == "mlm_logits":   # padded text positions are unspecified
      got, v = got[mask], v[mask]
    np.testing.assert_allclose(got, v, rtol=1e-5, atol=1e-5, err_msg=k)


def _decoder(p, x, mask, depth, context=None):
  """Pre-norm DecoderBlocks: causal + padding self-attention, cross-
  attention to `context` (all of it visible) when given, FFN; final LN."""
  t = x.shape[1]
  self_mask = np.tril(np.ones((t, t), bool))[None, None] & _pad(mask)
  for i in range(depth):
    q = p[f"layers_{i}"]
    x = x + ref.mha(q["self_attention"], ref.layer_norm(
        x, q["ln_self_attention"]), ref.layer_norm(x, q["ln_self_attention"]),
        self_mask)
    if context is not None:
      h = ref.layer_norm(x, q["ln_cross_attention"])
      x = x + ref.mha(q["cross_attention"], h, context)
    x = x + ref.ffn(q["mlp"], ref.layer_norm(x, q["ln_mlp"]), "gelu")
  return ref.layer_norm(x, p["ln_final"])


def test_captioner_forward_matches_float64():
  """CoCa (Yu et al. 2022): attention-pooled img_emb; unimodal causal text
  decoder with a CLS token appended last (txt_emb); multimodal decoder
  cross-attending to the ViT tokens; logits by the tied embedding."""
  from mmtx.models.captioner import Captioner
  images = _images(5)
  texts = np.array([[1, 5, 7, 2, 0, 0], [1, 3, 3, 9, 11, 2]], np.int32)
  cfg = dict(image=IMG, text=dict(vocab_size=20, width=8, depth=2,
                                  mlp_dim=16, num_heads=2, max_len=7),
             decoder_depth=1, embed_dim=6)
  model = Captioner(cfg)
  params = _random(model, images, texts, seed=6)
  logits, extras = jax.jit(model.apply)({"params": params}, images, texts)
  p = ref.f64(jax.tree_util.tree_map(np.asarray, params))
  tokens = vit_tokens(p["img"], images)
  probe = np.broadcast_to(p["img_pool"]["probe"], (2, 1, 8))
  pooled = ref.layer_norm(ref.mha(p["img_pool"]["attention"], probe, tokens),
                          p["img_pool"]["ln"])[:, 0]
  unit = lambda e: e / np.linalg.norm(e, axis=-1, keepdims=True)  # noqa: E731
  mask = texts != 0
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  x = p["embedding"]["embedding"][texts] + p["posemb"]["pos_embedding"][pos]
  x = np.concatenate([x, np.broadcast_to(p["cls"], (2, 1, 8))], 1)
  h = _decoder(p["unimodal"], x, np.concatenate(
      [mask, np.ones((2, 1), bool)], 1), 2)
  y = _decoder(p["multimodal"], h[:, :-1], mask, 1, context=tokens)
  want_logits = y @ p["embedding"]["embedding"].T
  np.testing.assert_allclose(np.asarray(logits)[mask], want_logits[mask],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(extras["img_emb"]),
                             unit(pooled @ p["img_head"]["kernel"]),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(extras["txt_emb"]),
                             unit(h[:, -1] @ p["txt_head"]["kernel"]),
                             rtol=1e-5, atol=1e-5)
  assert float(extras["logit_scale"]) == pytest.approx(
      math.exp(min(float(p["logit_scale"]), math.log(100.0))), rel=1e-6)
