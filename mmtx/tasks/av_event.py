"""Audio-visual event classification: which of the dataset's classes happen
in a clip ('video' [B, T, H, W, 3], 'audio' [B, samples]), from
`AudioVisualModel` with no text (video and audio tokens fused).

Batch (mmtx.data view 'label'): 'labels' float32 [B, classes], 1 for
each class of the clip. A multi-label dataset (metadata 'multi_label', e.g.
AV-Scenes' events) trains with sigmoid binary cross-entropy and is evaluated
by mAP (the mean of `metrics.average_precisions` over the classes with a
positive, AudioSet's metric) and top-1 accuracy (the best-scoring class is
one of the clip's); a single-label one trains with softmax cross-entropy and
is evaluated by top-1 accuracy.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mmtx import losses
from mmtx import metrics as metrics_lib
from mmtx import sharding
from mmtx.tasks import common
from mmtx.tasks import retrieval


class AvEventTask(common.Task):
  view = "label"
  text_key = None

  def __init__(self, config, info=None, model=None):
    super().__init__(config, info, model)
    # The loss and the metrics follow the data: multi-label or not.
    self.labels = tuple(self.info.metadata["labels"])
    self.multi_label = bool(self.info.metadata.get("multi_label", False))

  def build_model(self):
    from mmtx.models.av_model import AudioVisualModel
    cfg = common.model_config(
        self.config, num_answers=len(self.info.metadata["labels"]))
    if "text" in cfg:
      raise ValueError("av_event: config.model has a 'text' tower, which "
                       "event classification does not read; remove it.")
    return AudioVisualModel(cfg)

  def inputs(self, batch):
    return batch["video"], batch["audio"]

  def init_batch(self):
    info, b = self.info, self.config.batch_size
    return {"video": np.zeros((b,) + tuple(info.image_shape), np.float32),
            "audio": np.zeros((b, info.metadata["audio_samples"]),
                              np.float32)}

  def init_variables(self, rng, batch):
    return self.model.init(rng, *self.inputs(batch))

  def loss_fn(self, params, batch, rng, train):
    out, _ = self.model.apply({"params": params}, *self.inputs(batch),
                              deterministic=not train, rngs={"dropout": rng})
    logits, labels = out["event_logits"], batch["labels"]
    if self.multi_label:   # sigmoid BCE summed over classes, mean over clips
      loss = losses.vqa_soft_loss(logits, labels)
    else:
      loss = losses.classification_loss(logits, jnp.argmax(labels, -1))
    return loss, {"accuracy": jnp.mean(_top1_hit(logits, labels))}

  def eval_step(self, params, batch):
    out, _ = self.model.apply({"params": params}, *self.inputs(batch))
    return out["event_logits"].astype(jnp.float32)

  def evaluate_split(self, params, mesh, split):
    step = self.jit(self.eval_step, mesh)   # every row on every host
    it, info = self.eval_iterator(split)
    scores, labels = [], []
    for batch in it:
      logits = np.asarray(step(params, sharding.put_batch(batch, mesh)))
      rows = retrieval.gather_rows(batch, ("labels", "valid"))
      keep = rows["valid"].astype(bool)
      scores.append(logits[keep])
      labels.append(rows["labels"][keep])
    scores, labels = np.concatenate(scores), np.concatenate(labels) > 0
    hit = labels[np.arange(len(labels)), scores.argmax(-1)]
    metrics = {"accuracy": float(hit.mean())}
    if self.multi_label:
      ap = metrics_lib.average_precisions(scores, labels)
      metrics["mAP"] = float(np.nanmean(ap))
      rows = [(n, "-" if np.isnan(a) else f"{100 * a:.2f}%",
               int(labels[:, c].sum())) for c, (n, a) in
              enumerate(zip(self.labels, ap))]
      head = ["class", "AP", "positives"]
      title = (f"{info.name} {split}: mAP {100 * metrics['mAP']:.2f}"
               f"%, top-1 {100 * hit.mean():.2f}% ({len(labels)} clips)")
    else:
      rows = [(n, f"{100 * hit[labels[:, c]].mean():.2f}%"
               if labels[:, c].any() else "-", int(labels[:, c].sum()))
              for c, n in enumerate(self.labels)]
      head = ["class", "accuracy", "clips"]
      title = (f"{info.name} {split}: top-1 accuracy {100 * hit.mean():.2f}"
               f"% ({len(labels)} clips)")
    return metrics, [common.table(title, head, rows)]


def _top1_hit(logits, labels):
  """[B] bool: the best-scoring class is one of the clip's."""
  best = jnp.argmax(logits, -1)
  return jnp.take_along_axis(labels, best[:, None], -1)[:, 0] > 0


TASK = AvEventTask
