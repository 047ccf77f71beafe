"""Image captioning with a CoCa `Captioner` (Yu et al. 2022, Eq. 4).

Batch (mmtx.data view 'caption'): 'image' [B, H, W, 3], 'text' [B, L]
(the tokenizer's start id + caption + end id, 0-padded; one caption per
image drawn at random) -> Captioner ->
next-token logits [B, L, V], img_emb / txt_emb [B, D] ->
  config.loss.lambda_con * losses.softmax_contrastive_loss(img_emb, txt_emb,
  logit_scale) + config.loss.lambda_cap * losses.lm_loss(logits[:, :-1],
  text[:, 1:], text[:, 1:] != 0, config.loss.label_smoothing).

Evaluation, per split of config.data.eval_splits: captions decoded with
the KV cache from the tokenizer's `bos_id` up to its `eos_id` (a word
vocabulary's 1 / 2, CLIP BPE's 49406 / 49407 for an imported CoCa;
`captioner.generate`, config.decode.method 'greedy' or 'beam'; up to
config.data.max_len - 1 new tokens) and scored with BLEU-1..4
and CIDEr-D against all reference captions of each image
(`metrics.caption_scores`, tokenised by `metrics.simple_tokenize`), plus
image <-> text retrieval recall from the contrastive embeddings.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmtx import losses
from mmtx import metrics as metrics_lib
from mmtx import sharding
from mmtx.tasks import common
from mmtx.tasks import retrieval

_METHODS = ("greedy", "beam")


def decode_kwargs(decode) -> dict:
  """config.decode -> (method, extra kwargs of `captioner.generate`)."""
  if decode.method not in _METHODS:
    raise ValueError(f"config.decode.method must be one of {_METHODS}, got "
                     f"{decode.method!r}.")
  if decode.method == "beam":
    if int(decode.beam_size) < 1:
      raise ValueError(f"config.decode.beam_size must be >= 1, got "
                       f"{decode.beam_size}.")
    return {"beam_size": int(decode.beam_size), "alpha": float(decode.alpha)}
  return {}


class CaptionTask(common.Task):
  view = "caption"
  text_key = "text"

  def build_model(self):
    from mmtx.models import Captioner
    config = self.config
    cfg = common.model_config(config,
                              vocab_size=self.info.tokenizer.vocab_size)
    if cfg["text"]["max_len"] < config.data.max_len:
      raise ValueError(f"config.model.text.max_len ({cfg['text']['max_len']})"
                       f" must be >= config.data.max_len "
                       f"({config.data.max_len}), the caption length.")
    decode_kwargs(config.decode)
    if self.info.tokenizer.bos_id is None:
      raise ValueError(f"config.data.tokenizer={config.data.tokenizer!r} has "
                       f"no start token to decode captions from; use a word "
                       f"vocabulary, SentencePiece or 'clip'.")
    return Captioner(cfg)

  def loss_fn(self, params, batch, rng, train):
    texts = batch["text"]
    logits, extras = self.model.apply({"params": params}, batch["image"],
                                      texts, deterministic=not train,
                                      rngs={"dropout": rng})
    c = self.config.loss
    targets = texts[:, 1:]
    weights = (targets != 0).astype(jnp.float32)
    cap = losses.lm_loss(logits[:, :-1], targets, weights,
                         label_smoothing=float(c.label_smoothing))
    con = common.contrastive_loss("softmax", extras["img_emb"],
                                  extras["txt_emb"], extras["logit_scale"])
    loss = float(c.lambda_con) * con + float(c.lambda_cap) * cap
    correct = (jnp.argmax(logits[:, :-1], -1) == targets) * weights
    return loss, {"caption_loss": cap, "contrastive_loss": con,
                  "token_accuracy": correct.sum() / jnp.maximum(
                      weights.sum(), 1.0),
                  "logit_scale": extras["logit_scale"]}

  def embed(self, params, batch):
    """'img_emb', 'txt_emb' `[B, D]` of a batch of pairs."""
    _, extras = self.model.apply({"params": params}, batch["image"],
                                 batch["text"])
    return {"img_emb": extras["img_emb"], "txt_emb": extras["txt_emb"]}

  def generate(self, params, images):
    """images `[B, H, W, 3]` -> new tokens `[B, max_len - 1]`, decoded from
    the tokenizer's start token up to its end token with the KV cache as
    config.decode says."""
    from mmtx.models import captioner
    config = self.config
    tokenizer = self.info.tokenizer
    prompt = jnp.full((images.shape[0], 1), tokenizer.bos_id, jnp.int32)
    out = captioner.generate(self.model.config, params, images, prompt,
                             max_new_tokens=config.data.max_len - 1,
                             eos_id=tokenizer.eos_id,
                             method=config.decode.method,
                             **decode_kwargs(config.decode))
    return out.tokens

  def evaluate_split(self, params, mesh, split):
    config = self.config
    step = self.jit(self.embed, mesh)
    generate = self.jit(self.generate, mesh)
    it, info = self.eval_iterator(split)
    pairs = retrieval.run_pairs(step, params, config, mesh, it, info)
    refs = dict(zip(pairs.indices.tolist(), pairs.references))
    hyps = {}
    it, _ = self.eval_iterator(split)
    for batch in it:
      tokens = np.asarray(jax.device_get(generate(
          params, sharding.put_batch(batch, mesh)["image"])))
      rows = retrieval.gather_rows(batch, ("index", "valid"))  # global
      for row in np.flatnonzero(rows["valid"]):
        hyps[int(rows["index"][row])] = info.tokenizer.decode(tokens[row])
    scores = metrics_lib.caption_scores(refs, {k: [v] for k, v in
                                               hyps.items()}, tokenize=True)
    rec = retrieval.recall(pairs)
    return {**scores, **rec}, [
        common.table(
            f"{info.name} {split}: captions ({config.decode.method} "
            f"decoding, {len(hyps)} images, {len(pairs.pair_image)} "
            f"references)",
            ["BLEU-1 (x100)", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D (x100)"],
            [[f"{100 * scores[f'bleu_{k}']:.2f}" for k in range(1, 5)] +
             [f"{100 * scores['cider']:.2f}"]]),
        common.table(
            f"{info.name} {split}: retrieval recall (%) from the contrastive "
            f"embeddings", ["direction", "R@1", "R@5", "R@10"],
            retrieval.recall_rows(rec)),
        common.table(
            f"{info.name} {split}: examples",
            ["image", "generated", "first reference"],
            [(i, hyps[i], refs[i][0]) for i in sorted(hyps)[:3]])]


TASK = CaptionTask
