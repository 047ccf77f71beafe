"""Audio-visual event classification: which of the dataset's classes happen
in a clip ('video' [B, T, H, W, 3], 'audio' [B, samples]), from
`AudioVisualModel` with no text (video and audio tokens fused).

Batch (mmtx.data views, view 'label'): 'labels' float32 [B, classes], 1 for
each class of the clip. A multi-label dataset (metadata 'multi_label', e.g.
AV-Scenes' events) trains with sigmoid binary cross-entropy and is evaluated
by mAP (`metrics.mean_average_precision`, AudioSet's metric) and top-1
accuracy (the best-scoring class is one of the clip's); a single-label one
trains with softmax cross-entropy and is evaluated by top-1 accuracy.
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


class AvEventTask(common.Task):
  data_task = "label"
  text_key = None
  _multi = None    # set by build_model from the dataset's metadata

  def labels(self, config) -> tuple[str, ...]:
    return tuple(self.info(config).metadata["labels"])

  def multi_label(self, config) -> bool:
    return bool(self.info(config).metadata.get("multi_label", False))

  def build_model(self, config):
    """The model; also fixes the loss (multi-label or not) from the data."""
    from mmtx.models.av_model import AudioVisualModel
    cfg = common.model_config(config, num_answers=len(self.labels(config)))
    if "text" in cfg:
      raise ValueError("av_event: config.model has a 'text' tower, which "
                       "event classification does not read; remove it.")
    self._multi = self.multi_label(config)
    return AudioVisualModel(cfg)

  def inputs(self, batch):
    return batch["video"], batch["audio"]

  def init_batch(self, config):
    info = self.info(config)
    b = config.batch_size
    return {"video": np.zeros((b,) + tuple(info.image_shape), np.float32),
            "audio": np.zeros((b, info.metadata["audio_samples"]),
                              np.float32)}

  def init_variables(self, model, rng, batch):
    return model.init(rng, *self.inputs(batch))

  def loss_fn(self, model, params, batch, rng, train):
    out, _ = model.apply({"params": params}, *self.inputs(batch),
                         deterministic=not train, rngs={"dropout": rng})
    logits, labels = out["event_logits"], batch["labels"]
    if self._multi is None:
      raise RuntimeError("av_event: build_model(config) chooses the loss "
                         "from the dataset; call it before loss_fn.")
    if self._multi:   # sigmoid BCE summed over classes, mean over clips
      loss = losses.vqa_soft_loss(logits, labels)
    else:
      loss = losses.classification_loss(logits, jnp.argmax(labels, -1))
    return loss, {"accuracy": jnp.mean(_top1_hit(logits, labels))}

  def evaluate(self, model, params, config, mesh):
    names = self.labels(config)
    multi = self.multi_label(config)

    def logits_fn(params, batch):
      out, _ = model.apply({"params": params}, *self.inputs(batch))
      return out["event_logits"].astype(jnp.float32)
    step = retrieval.jit_step(logits_fn, mesh)   # every row on every host

    metrics, lines = {}, []
    for split in config.data.eval_splits:
      it, info = self.eval_iterator(config, split)
      scores, labels = [], []
      for batch in it:
        logits = np.asarray(step(params, sharding.put_batch(batch, mesh)))
        rows = retrieval.gather_rows(batch, ("labels", "valid"))
        keep = rows["valid"].astype(bool)
        scores.append(logits[keep])
        labels.append(rows["labels"][keep])
      scores, labels = np.concatenate(scores), np.concatenate(labels) > 0
      prefix = "" if split == config.data.eval_splits[0] else f"{split}/"
      hit = labels[np.arange(len(labels)), scores.argmax(-1)]
      metrics[f"{prefix}accuracy"] = float(hit.mean())
      if multi:
        ap = metrics_lib.average_precisions(scores, labels)
        metrics[f"{prefix}mAP"] = float(np.nanmean(ap))
        rows = [(n, "-" if np.isnan(a) else f"{100 * a:.2f}%",
                 int(labels[:, c].sum())) for c, (n, a) in
                enumerate(zip(names, ap))]
        head = ["class", "AP", "positives"]
        title = (f"{info.name} {split}: mAP {100 * metrics[prefix + 'mAP']:.2f}"
                 f"%, top-1 {100 * hit.mean():.2f}% ({len(labels)} clips)")
      else:
        rows = [(n, f"{100 * hit[labels[:, c]].mean():.2f}%"
                 if labels[:, c].any() else "-", int(labels[:, c].sum()))
                for c, n in enumerate(names)]
        head = ["class", "accuracy", "clips"]
        title = (f"{info.name} {split}: top-1 accuracy {100 * hit.mean():.2f}"
                 f"% ({len(labels)} clips)")
      lines.append(common.table(title, head, rows))
    return metrics, "\n".join(lines)


def _top1_hit(logits, labels):
  """[B] bool: the best-scoring class is one of the clip's."""
  best = jnp.argmax(logits, -1)
  return jnp.take_along_axis(labels, best[:, None], -1)[:, 0] > 0


TASK = AvEventTask
