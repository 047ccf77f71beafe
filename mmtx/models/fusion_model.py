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

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmtx.fusion import build_fusion
from mmtx.layers import masked_mean
from mmtx.models.config import (FusionModelConfig, check_images,
                                check_images_texts, check_token_ids,
                                l2_normalize, logit_scale, parse)
from mmtx.models.towers import TextTransformer, ViT

Array = jax.Array


def encode_unique(tower: nn.Module, texts: Array, size: int,
                  deterministic: bool):
  """`tower(texts)` with each distinct row of `texts [n, len]` encoded once.

  The distinct rows (at most `size`) go through the tower and each output
  row is gathered back to its text; the gather's transpose sums the
  gradients of repeated rows, so values and gradients are those of
  `tower(texts)` for a row-wise tower. A batch with more than `size`
  distinct rows cannot be encoded this way: its outputs are NaN rather than
  silently wrong (`VqaTask` checks every batch on the host first and names
  the fix). A `lax.cond` fallback to all rows would cost more under `grad`
  (both branches' residuals) than the saving.
  """
  n = texts.shape[0]
  if size >= n:   # no saving possible: encode every row
    return tower(texts, deterministic=deterministic)
  rows, inverse, counts = jnp.unique(texts, axis=0, size=size, fill_value=0,
                                     return_inverse=True, return_counts=True)
  inverse = inverse.reshape(n)
  fits = counts.sum() == n

  def back(a):
    a = a[inverse]
    if jnp.issubdtype(a.dtype, jnp.floating):
      a = jnp.where(fits, a, jnp.nan)
    return a

  return jax.tree.map(back, tower(rows, deterministic=deterministic))


def distinct_rows(texts) -> int:
  """The number of distinct token rows in a numpy batch `[..., len]`."""
  texts = np.asarray(texts)
  return len(np.unique(texts.reshape(-1, texts.shape[-1]), axis=0))


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
  Config: `mmtx.models.config.FusionModelConfig` (text_query 'mean' is one
  query per question, cheaper when the fusion cost is per text token; the
  'mlm' head needs 'tokens').
  """
  config: Mapping[str, Any]

  @nn.compact
  def __call__(self, images: Array, texts: Array, *,
               deterministic: bool = True):
    cfg = parse(FusionModelConfig, self.config)
    vocab_size = cfg.text.get("vocab_size")
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
    heads = cfg.heads
    if group is not None and heads != ("vqa",):
      raise ValueError(f"FusionModel: texts of rank 3 (several questions per "
                       f"image) work with heads=('vqa',) only, got {heads}.")
    if cfg.zero_image:
      images = jnp.zeros_like(images)
    query = cfg.text_query
    img_tok, img_extras = ViT(**cfg.image, pool="none", name="img")(
        images, deterministic=deterministic)
    txt_tower = TextTransformer(
        **cfg.text, pool="mean" if query == "mean" else "none", name="txt")
    if cfg.unique_texts:
      txt_tok, txt_extras = encode_unique(txt_tower, texts, cfg.unique_texts,
                                          deterministic)
    else:
      txt_tok, txt_extras = txt_tower(texts, deterministic=deterministic)
    fuse = build_fusion(cfg.fusion, where="config.fusion")
    # Q mean-query questions about one image, fused by a strategy whose
    # target (text) tokens do not interact: one sequence of Q query tokens
    # per image, so the image's keys/values are computed once, not Q times.
    shared = (group is not None and query == "mean" and
              fuse.takes_independent_targets and
              fuse.token_offset("text", {"image": 1, "text": 1}) == 0)
    if group is not None and not shared:  # image encoded once, then repeated
      img_tok = jnp.repeat(img_tok, group, axis=0)
      img_extras = dict(img_extras, mask=jnp.repeat(img_extras["mask"], group,
                                                    axis=0))
    if query == "mean":  # the tower's pooled output, as one query token
      txt_tok = txt_tok[:, None]
      if shared:
        txt_tok = txt_tok.reshape(-1, group, txt_tok.shape[-1])
      txt_extras = dict(txt_extras, mask=jnp.ones(txt_tok.shape[:2], bool))
    kw = dict(independent_targets=True) if shared else {}
    fused, fused_mask = fuse({"image": img_tok, "text": txt_tok},
                             {"image": img_extras["mask"],
                              "text": txt_extras["mask"]},
                             deterministic=deterministic, **kw)
    if shared:  # back to one single-token sequence per question
      fused = fused.reshape(-1, 1, fused.shape[-1])
      fused_mask = fused_mask.reshape(-1, 1)
    pooled = masked_mean(fused, fused_mask)
    outputs = {}
    if "vqa" in heads:
      h = nn.Dense(cfg.head_hidden, name="vqa_hidden",
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.xavier_uniform(), ("embed", "mlp")))(
                           pooled)
      h = nn.Dropout(cfg.head_dropout)(nn.gelu(h),
                                       deterministic=deterministic)
      outputs["vqa_logits"] = nn.Dense(
          cfg.num_answers, name="vqa_out",
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.xavier_uniform(), ("mlp", "vocab")))(h)
      if group is not None:
        outputs["vqa_logits"] = outputs["vqa_logits"].reshape(
            -1, group, outputs["vqa_logits"].shape[-1])
    if "itm" in heads:
      outputs["itm_logits"] = nn.Dense(2, name="itm_head")(pooled)
    if "mlm" in heads:
      n = texts.shape[1]
      off = fuse.token_offset("text", {"image": img_tok.shape[1], "text": n})
      if off is None:
        raise ValueError(f"FusionModel: the 'mlm' head needs the fused text "
                         f"tokens; strategy {cfg.fusion['name']!r} (target="
                         f"{cfg.fusion.get('target')!r}) does not return "
                         f"them. Use concat, co_attention, bottleneck, or a "
                         f"directional strategy with target='text'.")
      outputs["mlm_logits"] = nn.Dense(
          cfg.text["vocab_size"], name="mlm_head",
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.xavier_uniform(), ("embed", "vocab")))(
                  fused[:, off:off + n]).astype(jnp.float32)
    if "contrastive" in heads:
      outputs.update(self._contrastive(cfg.embed_dim, img_tok,
                                       img_extras["mask"], txt_tok,
                                       txt_extras["mask"]))
    extras = {"fused": fused, "fused_mask": fused_mask, "pooled": pooled,
              "img": img_extras, "txt": txt_extras}
    return outputs, extras

  def _contrastive(self, embed_dim, img_tok, img_mask, txt_tok, txt_mask):
    """Unimodal embeddings `[batch, embed_dim]` + logit_scale (ALBEF ITC)."""
    out = {}
    for name, tok, mask in (("img", img_tok, img_mask),
                            ("txt", txt_tok, txt_mask)):
      out[f"{name}_emb"] = l2_normalize(nn.Dense(
          int(embed_dim), use_bias=False, name=f"{name}_proj",
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.lecun_normal(), ("embed", "mlp")))(
                  masked_mean(tok, mask)))
    out["logit_scale"] = logit_scale(self, 1 / 0.07, 100.0)
    return out
