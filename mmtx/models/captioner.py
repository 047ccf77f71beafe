"""Encoder-decoder captioner, CoCa-style (Yu et al. 2022, Sec. 3.2 and Fig. 2).

Image: ViT tokens `[batch, patches, d_img]` -> attentional pooling (one
learned query) -> `img_emb`; the decoder's context is the ViT tokens, or
`num_queries` attention-pooled tokens (`pool='shared'`: one pool of 1 +
num_queries queries whose first gives `img_emb`, as open_clip's CoCa).
Text: token + learned position
embedding -> a unimodal causal decoder (no cross-attention) whose appended CLS
token gives `txt_emb`, then a multimodal causal decoder with cross-attention to
the image context -> next-token logits (tied to the token embedding or not).
CoCa's objective (Eq. 4) is `lambda_con * losses.softmax_contrastive_loss(
img_emb, txt_emb, logit_scale) + lambda_cap * losses.lm_loss(logits[:, :-1],
texts[:, 1:], texts[:, 1:] != 0)`.

Generation (captions, or answers after a question / dialogue prompt) runs the
decoders with a KV cache: `decode_fns` gives `mmtx.generation` a step_fn and
its cache, `reference_fns` the same without a cache, and `generate` does
encode + decode in one jittable call.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtx import generation
from mmtx import layers
from mmtx.layers.transformer import layer_norm
from mmtx.models.config import (CaptionerConfig, check_images,
                                check_token_ids, l2_normalize, logit_scale,
                                parse)
from mmtx.models.split_decoder import SplitDecoder
from mmtx.models.towers import ViT

Array = jax.Array


def parse_config(config) -> CaptionerConfig:
  """A Captioner config (mapping) -> `mmtx.models.config.CaptionerConfig`,
  checked, with the defaults filled.

  Keys: image (ViT fields except `pool`), text (vocab_size, width, depth =
  unimodal layers, mlp_dim, num_heads, max_len, dropout_rate, dtype,
  activation, layer_norm_eps, cls_position, cls_mask), decoder_depth
  (multimodal layers), embed_dim, pool ('attention' | 'gap' | 'shared', how
  img_emb pools the ViT tokens), num_queries (0 = the context is the ViT
  tokens, else that many attention-pooled tokens), tie_embeddings,
  logit_scale_init, max_logit_scale, and the options open_clip's CoCa needs:
  - class_token: the ViT prepends a class token, read by the pools like the
    patch tokens (its output is the first of the ViT tokens);
  - pool='shared': one pool of 1 + num_queries queries; query 0 gives img_emb,
    the others the context (they share the pool's LayerNorms);
  - pool_dim / pool_heads: the pools' query and output width / heads (0 = the
    ViT's); pool_query_norm: a LayerNorm on the learned queries; the pools'
    LayerNorms use config.image.layer_norm_eps;
  - head_bias: the untied LM head has a bias;
  - text.cls_position: the CLS token gets position embedding row t (t = the
    number of text tokens; the table has max_len + 1 rows) and text tokens
    their index 0..t-1 (for right-padded texts, the default's positions);
  - text.cls_mask: 'cls' (keys: the real tokens and the CLS) or 'shifted'
    (key 0 always, key j iff token j-1 is real: open_clip's CoCa with
    correct_cls_mask=False, whose CLS sees the first pad and, in a text with
    pads, not itself);
  - decoder_layer: 'fused' (each multimodal layer: self-attention,
    cross-attention, MLP; the unimodal decoder ends in a LayerNorm) or
    'split' (`SplitDecoder`: a self-attention block and a cross-attention
    block, each with its own MLP; the unimodal outputs go to the multimodal
    decoder un-normalised and only the CLS passes the LayerNorm `txt_ln`).
  """
  return parse(CaptionerConfig, config)


def _positions(mask):
  """`[batch, t]` token mask -> position of each real token among the real
  ones (left padding does not shift positions); pads get 0."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


class AttentionPool(nn.Module):
  """`num_queries` learned queries attend to tokens `[batch, n, d]` ->
  LayerNorm -> `[batch, num_queries, features or d]` (CoCa's attentional
  pooler, Sec. 3.2). `query_norm`: a LayerNorm on the queries first."""
  num_queries: int
  num_heads: int
  dtype: Any = jnp.float32
  features: Optional[int] = None
  query_norm: bool = False
  layer_norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    d = self.features or tokens.shape[-1]
    probe = self.param("probe", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed")),
                       (1, self.num_queries, d), jnp.float32)
    if self.query_norm:
      probe = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                           name="ln_query")(probe)
    q = jnp.broadcast_to(probe, (tokens.shape[0],) + probe.shape[1:])
    x = layers.MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype,
                                  name="attention")(q.astype(self.dtype),
                                                    tokens)
    return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                        name="ln")(x)


class Captioner(nn.Module):
  """CoCa captioner. `apply(v, images, texts)` -> `(logits, extras)`.

  images: NHWC float `[batch, H, W, C]`; texts: int32 `[batch, t]`, 0 =
  padding, typically BOS + tokens + EOS; logits `[batch, t, vocab]` float32,
  position i predicting token i+1. extras: 'img_emb', 'txt_emb' `[batch,
  embed_dim]` (L2-normalised), 'logit_scale' (exponentiated, clamped at
  max_logit_scale), 'context' `[batch, s, d_img]`.
  `decode=True` builds the KV-cached variant for `decode_step` (see
  `decode_fns`). Config: see `parse_config`.
  """
  config: Mapping[str, Any]
  decode: bool = False

  def setup(self):
    self.cfg = cfg = parse_config(self.config)
    txt = cfg.text
    dtype = jnp.dtype(txt.dtype)
    self.img = ViT(**cfg.image, pool="cls" if cfg.class_token else "none",
                   name="img")
    pool = lambda n, name: AttentionPool(  # noqa: E731
        n, cfg.pool_heads or cfg.image_heads,
        features=cfg.pool_dim or None, query_norm=cfg.pool_query_norm,
        layer_norm_eps=cfg.image.get("layer_norm_eps", 1e-6), name=name)
    if cfg.pool == "attention":
      self.img_pool = pool(1, "img_pool")
    if cfg.num_queries:
      self.context_pool = pool(
          cfg.num_queries + int(cfg.pool == "shared"), "context_pool")
    self.embedding = layers.TokenEmbedding(txt.vocab_size, txt.width,
                                           dtype=dtype, name="embedding")
    self.posemb = layers.PositionEmbedding(kind="learned",
                                           max_len=txt.max_len +
                                           int(txt.cls_position),
                                           name="posemb")
    self.cls = self.param("cls", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("embed",)), (txt.width,),
                          jnp.float32)
    kw = dict(num_heads=txt.num_heads, mlp_dim=txt.mlp_dim,
              activation=txt.activation, dropout_rate=txt.dropout_rate,
              layer_norm_eps=txt.layer_norm_eps, dtype=dtype,
              decode=self.decode)
    if cfg.decoder_layer == "split":
      self.unimodal = SplitDecoder(txt.depth, final_norm=False,
                                   name="unimodal", **kw)
      self.txt_ln = layer_norm(dtype, jnp.float32, "txt_ln",
                               txt.layer_norm_eps)
      self.multimodal = SplitDecoder(cfg.decoder_depth, name="multimodal",
                                     **kw)
    else:
      self.unimodal = layers.Decoder(num_layers=txt.depth, norm="pre",
                                     name="unimodal", **kw)
      self.multimodal = layers.Decoder(num_layers=cfg.decoder_depth,
                                       norm="pre", name="multimodal", **kw)
    if not cfg.tie_embeddings:
      self.head = nn.Dense(txt.vocab_size, dtype=dtype, name="head",
                           use_bias=cfg.head_bias,
                           kernel_init=nn.with_logical_partitioning(
                               nn.initializers.normal(0.02),
                               ("embed", "vocab")))
    dense = lambda name: nn.Dense(  # noqa: E731
        cfg.embed_dim, use_bias=False, name=name,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "mlp")))
    self.img_head = dense("img_head")
    self.txt_head = dense("txt_head")
    self.logit_scale = logit_scale(self, cfg.logit_scale_init,
                                   cfg.max_logit_scale)

  # -- checks ----------------------------------------------------------------
  def _check_texts(self, texts, name="texts"):
    txt = self.cfg.text
    if texts.ndim != 2 or not jnp.issubdtype(texts.dtype, jnp.integer):
      raise ValueError(f"Captioner: {name} must be int32 token ids [batch, "
                       f"len] with 0 as padding, got shape {texts.shape} dtype"
                       f" {texts.dtype}.")
    if texts.shape[1] > txt.max_len:
      raise ValueError(f"Captioner: {name} has {texts.shape[1]} tokens, more "
                       f"than config.text.max_len={txt.max_len}; truncate.")
    check_token_ids(texts, txt.vocab_size, "Captioner")

  def _check_context(self, context, context_mask, batch):
    if context.ndim != 3 or context.shape[0] != batch:
      raise ValueError(f"Captioner: context must be [batch={batch}, tokens, "
                       f"dim] (from encode_image), got shape {context.shape}.")
    if context_mask is not None and context_mask.shape != context.shape[:2]:
      raise ValueError(f"Captioner: context_mask must be [batch, tokens] = "
                       f"{context.shape[:2]}, got {context_mask.shape}.")

  # -- pieces ------------------------------------------------------------------
  def encode_image(self, images: Array, *, deterministic: bool = True):
    """images `[batch, H, W, C]` -> (context `[batch, s, d]`, img_emb
    `[batch, embed_dim]` L2-normalised); d is the ViT width, or the pools'
    (pool_dim) when num_queries > 0."""
    check_images(images, "Captioner")
    tokens = self.img(images, deterministic=deterministic)[1]["tokens"]
    cfg = self.cfg
    if cfg.pool == "shared":
      queries = self.context_pool(tokens)
      return queries[:, 1:], l2_normalize(self.img_head(queries[:, 0]))
    pooled = self.img_pool(tokens)[:, 0] if cfg.pool == "attention" \
        else tokens.mean(axis=1)
    context = self.context_pool(tokens) if cfg.num_queries else tokens
    return context, l2_normalize(self.img_head(pooled))

  def _embed(self, tokens, positions):
    return self.posemb(self.embedding(tokens), positions)

  def _logits(self, h, context, mask, context_mask, deterministic):
    y = self.multimodal(h, context, mask, context_mask,
                        deterministic=deterministic)
    if self.cfg.tie_embeddings:
      return self.embedding.attend(y).astype(jnp.float32)
    return self.head(y).astype(jnp.float32)

  def text_logits(self, texts: Array, context: Array,
                  context_mask: Optional[Array] = None, *,
                  deterministic: bool = True) -> Array:
    """Teacher-forced logits `[batch, t, vocab]` given the image context,
    without the CLS token / txt_emb (the uncached decoding reference)."""
    self._check_texts(texts)
    self._check_context(context, context_mask, texts.shape[0])
    mask = texts != 0
    h = self.unimodal(self._embed(texts, _positions(mask)), mask=mask,
                      deterministic=deterministic)
    return self._logits(h, context, mask, context_mask, deterministic)

  def __call__(self, images: Array, texts: Array, *,
               deterministic: bool = True):
    if self.decode:
      raise ValueError("Captioner(decode=True) only runs decode_step; use "
                       "Captioner(config) for teacher forcing.")
    self._check_texts(texts)
    if images.shape[:1] != texts.shape[:1]:
      raise ValueError(f"Captioner: images batch {images.shape[:1]} != texts "
                       f"batch {texts.shape[:1]}.")
    context, img_emb = self.encode_image(images, deterministic=deterministic)
    b, t = texts.shape
    mask = texts != 0
    cfg = self.cfg
    txt = cfg.text
    x = self._embed(texts, jnp.arange(t) if txt.cls_position
                    else _positions(mask))
    cls = jnp.broadcast_to(self.cls.astype(x.dtype), (b, 1, x.shape[-1]))
    if txt.cls_position:
      cls = self.posemb(cls, jnp.array([t]))
    # CLS goes last: causal attention lets it see the whole text while the
    # text tokens never see it (CoCa, Sec. 3.2).
    # Key masks: 'cls' = [mask, True]; 'shifted' = [True, mask], key j kept
    # iff token j-1 is real.
    keys = [mask, jnp.ones((b, 1), bool)]
    h = self.unimodal(jnp.concatenate([x, cls], axis=1),
                      mask=jnp.concatenate(
                          keys[::-1] if txt.cls_mask == "shifted" else keys,
                          axis=1),
                      deterministic=deterministic)
    pooled = h[:, t]
    if cfg.decoder_layer == "split":
      pooled = self.txt_ln(pooled)
    txt_emb = l2_normalize(self.txt_head(pooled))
    logits = self._logits(h[:, :t], context, mask, None, deterministic)
    return logits, {"img_emb": img_emb, "txt_emb": txt_emb,
                    "logit_scale": self.logit_scale, "context": context}

  def decode_step(self, tokens: Array, context: Array,
                  context_mask: Optional[Array] = None,
                  positions: Optional[Array] = None,
                  kv_mask: Optional[Array] = None, *,
                  deterministic: bool = True) -> Array:
    """One cached chunk (needs `decode=True`, `mutable=['cache']`).

    tokens `[batch, chunk]`; context `[batch, s, d_img]`, context_mask
    `[batch, s]`; positions `[chunk]` or `[batch, chunk]` position-embedding
    indices (default: 0..chunk-1, i.e. a first chunk); kv_mask `[batch,
    cache_len]` False on cached pad slots. The cache length is the token
    length given to `init`. Returns logits `[batch, chunk, vocab]` float32.
    """
    if not self.decode:
      raise ValueError("Captioner.decode_step needs the cached variant: "
                       "Captioner(config, decode=True).")
    self._check_texts(tokens, "tokens")
    self._check_context(context, context_mask, tokens.shape[0])
    chunk = tokens.shape[1]
    if positions is not None and positions.shape not in (
        (chunk,), (tokens.shape[0], chunk)):
      raise ValueError(f"Captioner: positions must be [chunk] or [batch, "
                       f"chunk] = {tokens.shape}, got {positions.shape}.")
    if kv_mask is not None and (kv_mask.ndim != 2 or
                                kv_mask.shape[0] != tokens.shape[0]):
      raise ValueError(f"Captioner: kv_mask must be [batch={tokens.shape[0]},"
                       f" cache_len], got {kv_mask.shape}.")
    h = self.unimodal(self._embed(tokens, positions), mask=kv_mask,
                      deterministic=deterministic)
    return self._logits(h, context, kv_mask, context_mask, deterministic)


# ----------------------------------------------------------------------------
# Adapters for mmtx.generation
# ----------------------------------------------------------------------------
def _check_max_len(config, max_len):
  limit = parse_config(config).text.max_len
  if not 1 <= max_len <= limit:
    raise ValueError(f"max_len: the decoded sequence (prompt + new tokens - 1"
                     f" = {max_len}) must be in [1, config.text.max_len = "
                     f"{limit}].")


def decode_fns(config, params, context: Array,
               context_mask: Optional[Array] = None, *, max_len: int):
  """`(step_fn, cache)` for `mmtx.generation` with a KV cache of `max_len`.

  context `[rows, s, d_img]` from `encode_image` (for beam search, rows =
  batch * beam_size: `generation.repeat_beams(context, k)`). The cache also
  keeps a `[rows, max_len]` mask of non-pad tokens, so left-padded prompts
  work: pads are never attended to and do not shift positions.
  """
  _check_max_len(config, max_len)
  model = Captioner(config, decode=True)
  rows = context.shape[0]

  def init(tokens, context, context_mask):
    return model.init(jax.random.key(0), tokens, context, context_mask,
                      method=Captioner.decode_step)

  shapes = jax.eval_shape(init, jnp.zeros((rows, max_len), jnp.int32),
                          context, context_mask)["cache"]
  cache = {"model": jax.tree_util.tree_map(
      lambda s: jnp.zeros(s.shape, s.dtype), shapes),
           "kv_mask": jnp.zeros((rows, max_len), bool)}

  def step_fn(tokens, cache, positions):
    start, chunk = positions[0], tokens.shape[1]
    kv_mask = jax.lax.dynamic_update_slice(cache["kv_mask"], tokens != 0,
                                           (0, start))
    pos = jax.lax.dynamic_slice_in_dim(_positions(kv_mask), start, chunk,
                                       axis=1)
    logits, state = model.apply(
        {"params": params, "cache": cache["model"]}, tokens, context,
        context_mask, pos, kv_mask, method=Captioner.decode_step,
        mutable=["cache"])
    return logits, {"model": state["cache"], "kv_mask": kv_mask}

  return step_fn, cache


def reference_fns(config, params, context: Array,
                  context_mask: Optional[Array] = None, *, max_len: int):
  """`(step_fn, cache)` like `decode_fns` but without a KV cache: every step
  reruns `text_logits` over the whole `[rows, max_len]` token buffer."""
  _check_max_len(config, max_len)
  model = Captioner(config)
  logits_fn = lambda tokens: model.apply(  # noqa: E731
      {"params": params}, tokens, context, context_mask,
      method=Captioner.text_logits)
  return generation.uncached_step_fn(logits_fn, context.shape[0], max_len)


def generate(config, params, images: Array, prompt: Array, *,
             max_new_tokens: int, eos_id: Optional[int],
             method: str = "greedy", cached: bool = True,
             rng: Optional[Array] = None, **kwargs):
  """Encodes `images` and continues `prompt` `[batch, p]` (BOS, or BOS + a
  question / dialogue history; left-pad with 0 to batch prompts).

  method: 'greedy', 'beam' (kwargs beam_size, alpha) or 'sample' (needs rng;
  kwargs temperature, top_k, top_p). cached=False uses `reference_fns`.
  Jittable with config, max_new_tokens, eos_id, method, cached and kwargs
  static. Returns `generation.Output` or `BeamOutput`.
  """
  if method not in ("greedy", "beam", "sample"):
    raise ValueError(f"method: expected 'greedy', 'beam' or 'sample', got "
                     f"{method!r}.")
  if prompt.ndim != 2 or prompt.shape[0] != images.shape[0]:
    raise ValueError(f"prompt: expected [batch={images.shape[0]}, prompt_len],"
                     f" got shape {prompt.shape}.")
  context, _ = Captioner(config).apply({"params": params}, images,
                                       method=Captioner.encode_image)
  if method == "beam":
    context = generation.repeat_beams(context, kwargs.get("beam_size", 4))
  fns = decode_fns if cached else reference_fns
  step_fn, cache = fns(config, params, context,
                       max_len=prompt.shape[1] + max_new_tokens - 1)
  common = dict(max_new_tokens=max_new_tokens, eos_id=eos_id)
  if method == "greedy":
    return generation.greedy(step_fn, cache, prompt, **common, **kwargs)
  if method == "beam":
    kwargs.setdefault("beam_size", 4)
    return generation.beam_search(step_fn, cache, prompt, **common, **kwargs)
  if rng is None:
    raise ValueError("rng: method='sample' needs a PRNG key.")
  return generation.sample(step_fn, cache, prompt, rng, **common, **kwargs)
