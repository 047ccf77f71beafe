"""Fusion encoder: image tower + text tower + any `FUSIONS` strategy + heads.

Heads (config.heads): 'vqa' (classification over the answer vocabulary,
from the pooled fused representation), 'itm' (image-text match, 2 logits),
'mlm' (token logits over the fused text positions; needs a strategy whose
output keeps the text tokens first, e.g. cross_attention with target 'text')
and 'contrastive' (ALBEF's unimodal image-text contrastive features, Li et al.
2021 Sec. 3.1: the mean of each tower's tokens, a linear projection to
config.embed_dim, L2-normalised, and a learned CLIP temperature).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtx import fusion as fusion_lib
from mmtx.models.dual_encoder import (_as_dict, check_images,
                                      check_images_texts, check_token_ids)
from mmtx.models.towers import TextTransformer, ViT

Array = jax.Array
HEADS = ("vqa", "itm", "mlm", "contrastive")
TEXT_QUERIES = ("tokens", "mean")


def _text_offset(name, fcfg, n_img, fused_len, n_txt):
  """Where the text tokens sit in the fused output, or None if they don't.

  Stream strategies return every modality's tokens in sorted key order
  ('image' before 'text'); directional ones return the target's tokens."""
  if name in ("concat", "co_attention", "bottleneck"):
    return n_img
  if name in ("cross_attention", "additive", "gated_cross_attention") and (
      fcfg.get("target") == "text" and fused_len == n_txt):
    return 0
  return None


class FusionModel(nn.Module):
  """`apply(..., images, texts) -> (outputs, extras)`.

  images NHWC float32 `[batch, H, W, C]`; texts int32 `[batch, len]`, 0 = pad,
  or `[batch, Q, len]`: Q questions per image (heads=('vqa',) only), where the
  image tower runs once per image and 'vqa_logits' is `[batch, Q, answers]`.
  With text_query='mean' and a strategy whose target tokens are independent
  (cross_attention, additive, gated_cross_attention with target 'text') the
  Q question vectors also share one pass over the image tokens (the image's
  keys and values are computed once); other strategies see the image tokens
  repeated Q times. Either way the result equals the per-pair model.
  outputs: {'vqa_logits' [batch, num_answers], 'itm_logits' [batch, 2],
  'mlm_logits' [batch, len, vocab], and for 'contrastive' 'img_emb',
  'txt_emb' [batch, embed_dim] (L2-normalised, from the unfused towers) and
  'logit_scale' (exponentiated, at most 100)} for the configured heads;
  extras: {'fused', 'fused_mask', 'pooled', 'img', 'txt'}.
  Config keys: image (ViT fields, pool ignored), text (TextTransformer
  fields), fusion (name + strategy fields), heads (list), num_answers,
  head_hidden, embed_dim ('contrastive' only), zero_image (ablation: the
  image is replaced by zeros), text_query ('tokens': every text token goes
  into the fusion, as in ALBEF; 'mean': one token, the mean of the text
  tower's outputs, does - one query per question, as a question vector in
  classic VQA models, cheaper when the fusion cost is per text token; the
  'mlm' head needs 'tokens').
  """
  config: Mapping[str, Any]

  @nn.compact
  def __call__(self, images: Array, texts: Array, *,
               deterministic: bool = True):
    cfg = _as_dict(self.config)
    vocab_size = _as_dict(cfg["text"]).get("vocab_size")
    group = None
    if texts.ndim == 3:   # [batch, Q, len]: Q questions about each image
      group = texts.shape[1]
      check_images(images, "FusionModel")
      if images.shape[0] != texts.shape[0]:
        raise ValueError(f"FusionModel: texts [batch, Q, len] {texts.shape} "
                         f"need images [batch, H, W, C] with the same batch, "
                         f"got {images.shape}.")
      if not jnp.issubdtype(texts.dtype, jnp.integer):
        raise ValueError(f"FusionModel: texts must be int32 token ids, got "
                         f"dtype {texts.dtype}.")
      check_token_ids(texts, vocab_size, "FusionModel")
      texts = texts.reshape(-1, texts.shape[-1])
    else:
      check_images_texts(images, texts, "FusionModel", vocab_size)
    heads = cfg.get("heads", ("vqa",))
    if group is not None and tuple(heads) != ("vqa",):
      raise ValueError(f"FusionModel: texts of rank 3 (several questions per "
                       f"image) work with heads=('vqa',) only, got {heads}.")
    if cfg.get("zero_image", False):
      images = jnp.zeros_like(images)
    query = cfg.get("text_query", "tokens")
    if query not in TEXT_QUERIES:
      raise ValueError(f"FusionModel: text_query must be one of "
                       f"{TEXT_QUERIES}, got {query!r}.")
    if query != "tokens" and "mlm" in heads:
      raise ValueError("FusionModel: the 'mlm' head needs every text token "
                       "in the fusion; set text_query='tokens'.")
    img_cfg = dict(_as_dict(cfg["image"]), pool="none")
    txt_cfg = dict(_as_dict(cfg["text"]),
                   pool="mean" if query == "mean" else "none")
    img_tok, img_extras = ViT(**img_cfg, name="img")(
        images, deterministic=deterministic)
    txt_tok, txt_extras = TextTransformer(**txt_cfg, name="txt")(
        texts, deterministic=deterministic)
    fcfg = _as_dict(cfg["fusion"])
    name = fcfg.pop("name")
    fuse = fusion_lib.build_fusion(name, **fcfg)
    # Q mean-query questions about one image, fused by a strategy whose
    # target (text) tokens do not interact: one sequence of Q query tokens
    # per image, so the image's keys/values are computed once, not Q times.
    shared = (group is not None and query == "mean" and fcfg.get("target")
              == "text" and getattr(fuse, "independent_targets", False))
    if group is not None and not shared:  # image encoded once, then repeated
      img_tok = jnp.repeat(img_tok, group, axis=0)
      img_extras = dict(img_extras, mask=jnp.repeat(img_extras["mask"], group,
                                                    axis=0))
    if query == "mean":  # the tower's pooled output, as one query token
      txt_tok = txt_tok[:, None]
      if shared:
        txt_tok = txt_tok.reshape(-1, group, txt_tok.shape[-1])
      txt_extras = dict(txt_extras, mask=jnp.ones(txt_tok.shape[:2], bool))
    kw = dict(independent_target=True) if shared else {}
    fused, fused_mask = fuse({"image": img_tok, "text": txt_tok},
                             {"image": img_extras["mask"],
                              "text": txt_extras["mask"]},
                             deterministic=deterministic, **kw)
    if shared:  # back to one single-token sequence per question
      fused = fused.reshape(-1, 1, fused.shape[-1])
      fused_mask = fused_mask.reshape(-1, 1)
    pooled = fusion_lib.masked_mean(fused, fused_mask)
    outputs = {}
    for head in heads:
      if head not in HEADS:
        raise ValueError(f"FusionModel: unknown head {head!r} in "
                         f"config.heads; known: {HEADS}.")
    if "vqa" in heads:
      h = nn.Dense(cfg.get("head_hidden", 256), name="vqa_hidden",
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.xavier_uniform(), ("embed", "mlp")))(
                           pooled)
      h = nn.Dropout(cfg.get("head_dropout", 0.0))(
          nn.gelu(h), deterministic=deterministic)
      outputs["vqa_logits"] = nn.Dense(
          cfg["num_answers"], name="vqa_out",
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.xavier_uniform(), ("mlp", "vocab")))(h)
      if group is not None:
        outputs["vqa_logits"] = outputs["vqa_logits"].reshape(
            -1, group, outputs["vqa_logits"].shape[-1])
    if "itm" in heads:
      outputs["itm_logits"] = nn.Dense(2, name="itm_head")(pooled)
    if "mlm" in heads:
      n = texts.shape[1]
      off = _text_offset(name, fcfg, img_tok.shape[1], fused.shape[1], n)
      if off is None:
        raise ValueError(f"FusionModel: the 'mlm' head needs the fused text "
                         f"tokens; strategy {name!r} (target="
                         f"{fcfg.get('target')!r}) does not return them. Use "
                         f"concat, co_attention, bottleneck, or a directional "
                         f"strategy with target='text'.")
      outputs["mlm_logits"] = nn.Dense(
          txt_cfg["vocab_size"], name="mlm_head",
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.xavier_uniform(), ("embed", "vocab")))(
                  fused[:, off:off + n]).astype(jnp.float32)
    if "contrastive" in heads:
      outputs.update(self._contrastive(cfg, img_tok, img_extras["mask"],
                                       txt_tok, txt_extras["mask"]))
    extras = {"fused": fused, "fused_mask": fused_mask, "pooled": pooled,
              "img": img_extras, "txt": txt_extras}
    return outputs, extras

  def _contrastive(self, cfg, img_tok, img_mask, txt_tok, txt_mask):
    """Unimodal embeddings `[batch, embed_dim]` + logit_scale (ALBEF ITC)."""
    embed_dim = cfg.get("embed_dim")
    if not embed_dim or int(embed_dim) < 1:
      raise ValueError(f"FusionModel: the 'contrastive' head needs "
                       f"config.embed_dim (an int >= 1), got {embed_dim!r}.")
    out = {}
    for name, tok, mask in (("img", img_tok, img_mask),
                            ("txt", txt_tok, txt_mask)):
      emb = nn.Dense(int(embed_dim), use_bias=False, name=f"{name}_proj",
                     kernel_init=nn.with_logical_partitioning(
                         nn.initializers.lecun_normal(), ("embed", "mlp")))(
                             fusion_lib.masked_mean(tok, mask)).astype(
                                 jnp.float32)
      out[f"{name}_emb"] = emb / jnp.linalg.norm(
          emb, axis=-1, keepdims=True).clip(1e-12)
    log_scale = self.param("logit_scale", nn.initializers.constant(
        math.log(1 / 0.07)), (), jnp.float32)
    out["logit_scale"] = jnp.exp(jnp.minimum(log_scale, math.log(100.0)))
    return out
