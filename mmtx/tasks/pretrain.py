"""Image-text pretraining of a FusionModel, ALBEF-style (Li et al. 2021,
Sec. 3.2): image-text contrastive (ITC) + image-text matching with hard
negatives (ITM) + masked language modelling conditioned on the image (MLM).

Batch (mmtx.data view 'contrastive'): 'image' [B, H, W, 3], 'text' [B, L],
'index' [B] (the record; two rows of one image are both positives),
'caption_set' [B, K] (fingerprints of each image's captions).
  1. One FusionModel call on [image; image] x [text; masked text] (2B rows;
     heads 'contrastive', 'itm', 'mlm'): ITC = softmax_contrastive_loss on the
     unimodal img_emb / txt_emb of the first B rows; positive ITM logits from
     the first B rows; MLM = mlm_loss on the last B rows, the text masked by
     `losses.mlm_mask` (config.loss.mask_prob; bos/eos/sep/unk never masked).
  2. Hard negatives from the ITC similarities (`losses.itm_hard_negatives`;
     excluded for image i: rows of its 'index' and every text that is word
     for word one of its captions, from the view's 'caption_set'; a
     fraction config.loss.itm_random_negatives of the draws ignore the
     similarities, i.e. are uniform over the same candidates): a
     second call on [image; image of the negative] x [negative text; text]
     (2B rows) gives the negative ITM logits. ITM = 2-way cross-entropy
     over the B positives and the 2B negatives (a row without a candidate
     negative gets weight 0).
  loss = weight_itc * ITC + weight_itm * ITM + weight_mlm * MLM (config.loss).

Evaluation, per split of config.data.eval_splits, over every (image,
reference caption) pair (`retrieval.run_pairs`): retrieval recall@1/5/10;
ITM accuracy on the positives and on one negative per pair (the next pair's
caption, which shows another image; not counted when it is word for word
one of this image's captions); MLM accuracy on the masked tokens (the mask
drawn with a fixed key, so every evaluation masks the same tokens).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mmtx import data as data_lib
from mmtx import losses
from mmtx.tasks import common
from mmtx.tasks import retrieval

_SPECIAL = (data_lib.BOS, data_lib.EOS, data_lib.SEP, data_lib.UNK)
REQUIRED_HEADS = ("contrastive", "itm", "mlm")


class PretrainTask(common.Task):
  view = "contrastive"
  text_key = "text"

  def __init__(self, config, info=None, model=None):
    super().__init__(config, info, model)
    # MLM draws its random replacement tokens from the model's vocabulary.
    cfg = common.model_config(config,
                              vocab_size=self.info.tokenizer.vocab_size)
    self.vocab_size = int(cfg["text"]["vocab_size"])

  def build_model(self):
    from mmtx.models.fusion_model import FusionModel
    cfg = common.model_config(self.config,
                              vocab_size=self.info.tokenizer.vocab_size)
    missing = [h for h in REQUIRED_HEADS if h not in cfg.get("heads", ())]
    if missing:
      raise ValueError(f"config.model.heads must include {REQUIRED_HEADS} for "
                       f"pretraining; {missing} missing.")
    return FusionModel(cfg)

  def mask(self, rng, texts):
    return losses.mlm_mask(rng, texts, vocab_size=self.vocab_size,
                           mask_id=data_lib.MASK, special_ids=_SPECIAL,
                           prob=float(self.config.loss.mask_prob))

  def loss_fn(self, params, batch, rng, train):
    images, texts = batch["image"], batch["text"]
    b = texts.shape[0]
    rng_mask, rng_neg, rng_drop1, rng_drop2 = jax.random.split(rng, 4)

    def apply(imgs, txts, r):
      out, _ = self.model.apply({"params": params}, imgs, txts,
                           deterministic=not train, rngs={"dropout": r})
      return out

    masked, targets, weights = self.mask(rng_mask, texts)
    out = apply(jnp.concatenate([images, images]),
                jnp.concatenate([texts, masked]), rng_drop1)
    img_emb, txt_emb = out["img_emb"][:b], out["txt_emb"][:b]
    scale = out["logit_scale"]
    itc = common.contrastive_loss("softmax", img_emb, txt_emb, scale)
    mlm_logits = out["mlm_logits"][b:]
    mlm = losses.mlm_loss(mlm_logits, targets, weights)

    sim = scale * img_emb @ txt_emb.T
    neg = losses.itm_hard_negatives(
        rng_neg, sim, losses.positive_mask_from_ids(batch["index"]) |
        losses.positive_mask_from_caption_sets(batch["caption_set"]),
        random_fraction=float(self.config.loss.itm_random_negatives))
    neg_out = apply(jnp.concatenate([images, images[neg.img_idx]]),
                    jnp.concatenate([texts[neg.txt_idx], texts]), rng_drop2)
    itm_logits = jnp.concatenate([out["itm_logits"][:b],
                                  neg_out["itm_logits"]])
    labels = jnp.concatenate([jnp.ones(b, jnp.int32),
                              jnp.zeros(2 * b, jnp.int32)])
    itm_w = jnp.concatenate([jnp.ones(b), neg.txt_valid, neg.img_valid])
    itm = losses.itm_loss(itm_logits, labels, itm_w)

    c = self.config.loss
    loss = (float(c.weight_itc) * itc + float(c.weight_itm) * itm +
            float(c.weight_mlm) * mlm)
    itm_hit = (jnp.argmax(itm_logits, -1) == labels) * itm_w
    mlm_hit = (jnp.argmax(mlm_logits, -1) == targets) * weights
    return loss, {
        "itc_loss": itc, "itm_loss": itm, "mlm_loss": mlm,
        "itm_accuracy": itm_hit.sum() / jnp.maximum(itm_w.sum(), 1.0),
        "mlm_accuracy": mlm_hit.sum() / jnp.maximum(weights.sum(), 1.0),
        "logit_scale": scale}

  def eval_step(self, params, batch):
    """Per pair of a chunk: the unimodal embeddings, ITM hits on the pair and
    on its negative, MLM hits (see the module docstring)."""
    images, texts, ids = batch["image"], batch["text"], batch["pair_image"]
    sets = batch["caption_set"]
    e = texts.shape[0]
    masked, targets, weights = self.mask(jax.random.key(0), texts)
    # Row r's negative is row r + 1's caption (pairs go caption-slot-major,
    # so it shows another image unless the chunk ends there); it counts
    # when it shows another image and is none of row r's image's captions
    # (the caption set holds 16: an image with more could pass the second
    # test with its own caption).
    neg_texts = jnp.roll(texts, -1, axis=0)
    neg_fp, neg_ids = jnp.roll(sets[:, 0], -1), jnp.roll(ids, -1)
    out, _ = self.model.apply(
        {"params": params}, jnp.concatenate([images] * 3),
        jnp.concatenate([texts, neg_texts, masked]))
    itm_pred = jnp.argmax(out["itm_logits"], -1)
    mlm_hit = (jnp.argmax(out["mlm_logits"][2 * e:], -1) == targets)
    return {"img_emb": out["img_emb"][:e], "txt_emb": out["txt_emb"][:e],
            "itm_pos_hit": itm_pred[:e] == 1,
            "itm_neg_hit": itm_pred[e:2 * e] == 0,
            "itm_neg_valid": ((neg_ids != ids) & (neg_ids >= 0) &
                              ~jnp.any(sets == neg_fp[:, None], axis=1)),
            "mlm_correct": (mlm_hit * weights).sum(1),
            "mlm_count": weights.sum(1)}

  def evaluate_split(self, params, mesh, split):
    step = self.jit(self.eval_step, mesh)
    it, info = self.eval_iterator(split)
    pairs = retrieval.run_pairs(step, params, self.config, mesh, it, info)
    o = pairs.outputs
    pos, neg_ok = o["itm_pos_hit"], o["itm_neg_valid"]
    neg = o["itm_neg_hit"][neg_ok]
    values = {"itm_accuracy": float((pos.sum() + neg.sum()) /
                                    (len(pos) + len(neg))),
              "itm_accuracy/positive": float(pos.mean()),
              "itm_accuracy/negative": float(neg.mean()) if len(neg) else 0.,
              "mlm_accuracy": float(o["mlm_correct"].sum() /
                                    max(o["mlm_count"].sum(), 1.0))}
    rec = retrieval.recall(pairs)
    return {**values, **rec}, [
        common.table(
            f"{info.name} {split}: pretraining objectives "
            f"({len(pairs.indices)} images, {len(pos)} captions)",
            ["metric", "value", "count"],
            [("ITM accuracy", f"{100 * values['itm_accuracy']:.2f}%",
              len(pos) + len(neg)),
             ("  on matched pairs",
              f"{100 * values['itm_accuracy/positive']:.2f}%", len(pos)),
             ("  on mismatched pairs",
              f"{100 * values['itm_accuracy/negative']:.2f}%", len(neg)),
             ("MLM accuracy (masked tokens)",
              f"{100 * values['mlm_accuracy']:.2f}%",
              int(o["mlm_count"].sum()))]),
        common.table(
            f"{info.name} {split}: retrieval recall (%) from the unimodal "
            f"embeddings", ["direction", "R@1", "R@5", "R@10"],
            retrieval.recall_rows(rec))]


TASK = PretrainTask
