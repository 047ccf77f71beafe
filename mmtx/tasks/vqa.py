"""VQA as classification over the dataset's answer vocabulary.

Batch (mmtx.data view 'vqa'): 'image' [B, H, W, 3], 'question' [B, L]
-> FusionModel(...)['vqa_logits'] [B, num_answers] -> softmax cross-entropy
against 'answer' [B]. With data.questions_per_image = Q > 0 a training
batch holds B images with Q questions each ('question' [B, Q, L]) and the
loss is the mean over the valid questions. Evaluation (always one example
per question): accuracy overall and per question type
(and subtype) on each split of `config.data.eval_splits`; the official VQA
accuracy (`vqa_soft_accuracy`) where the batch has the human answers'
'answer_ids' (ingested VQA datasets).
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from mmtx import sharding
from mmtx.tasks import common


class VqaTask(common.Task):
  view = "vqa"
  text_key = "question"

  def build_model(self):
    from mmtx.models.fusion_model import FusionModel
    cfg = common.model_config(self.config,
                              vocab_size=self.info.tokenizer.vocab_size,
                              num_answers=len(self.info.answers))
    return FusionModel(cfg)

  def train_iterator(self, shard_index, shard_count):
    return self._checked(super().train_iterator(shard_index, shard_count))

  def eval_iterator(self, split):
    it, info = super().eval_iterator(split)
    return self._checked(it), info

  def _checked(self, batches):
    """With config.model.unique_texts = U > 0, `batches` with each batch's
    questions checked on the host to hold at most U distinct token rows
    (the model encodes only U; `fusion_model.encode_unique`)."""
    size = int(self.config.model.get("unique_texts", 0) or 0)
    return _DistinctChecked(batches, size, self.text_key,
                            self.config.data.name) if size else batches

  def inputs(self, batch):
    """The model's positional inputs from a batch."""
    return batch["image"], batch["question"]

  def loss_fn(self, params, batch, rng, train):
    out, _ = self.model.apply({"params": params}, *self.inputs(batch),
                              deterministic=not train, rngs={"dropout": rng})
    return common.answer_loss(out["vqa_logits"], batch["answer"], batch)

  def eval_step(self, params, batch, nt, ns):
    """Correct answers and questions `[nt * ns]` per (type, subtype) of a
    batch: exact match, or the official VQA accuracy where the batch has
    the human answers' 'answer_ids' (ingested VQA)."""
    out, _ = self.model.apply({"params": params}, *self.inputs(batch))
    pred = jnp.argmax(out["vqa_logits"], -1)
    correct = pred == batch["answer"]
    if "answer_ids" in batch:
      correct = vqa_soft_accuracy(pred, batch["answer_ids"])
    idx = jnp.clip(batch["qtype"], 0, nt - 1) * ns + jnp.clip(
        batch["qsubtype"], 0, ns - 1)
    onehot = jax.nn.one_hot(idx, nt * ns, dtype=jnp.float32) * batch[
        "valid"][:, None]
    return (onehot * correct[:, None]).sum(0), onehot.sum(0)

  def evaluate_split(self, params, mesh, split):
    step = self.jit(self.eval_step, static_argnums=(2, 3))
    it, info = self.eval_iterator(split)
    nt = len(info.qtypes or ("all",))
    ns = max((len(s) for s in info.qsubtypes), default=1) if info.qsubtypes else 1
    correct, total = np.zeros(nt * ns), np.zeros(nt * ns)
    for batch in it:
      c, n = step(params, sharding.put_batch(batch, mesh), nt, ns)
      correct += np.asarray(c)
      total += np.asarray(n)
    correct, total = correct.reshape(nt, ns), total.reshape(nt, ns)
    metrics = {"accuracy": float(correct.sum() / max(total.sum(), 1))}
    rows = [("all", "", correct.sum(), total.sum())]
    for t in range(nt):
      tname = info.qtypes[t] if info.qtypes else "all"
      if total[t].sum():
        metrics[f"accuracy/{tname}"] = float(correct[t].sum() / total[t].sum())
        rows.append((tname, "", correct[t].sum(), total[t].sum()))
      for s in range(ns):
        if info.qsubtypes and total[t, s] and len(info.qsubtypes[t]) > 1:
          sname = info.qsubtypes[t][s]
          metrics[f"accuracy/{tname}/{sname}"] = float(
              correct[t, s] / total[t, s])
          rows.append((tname, sname, correct[t, s], total[t, s]))
    return metrics, [common.table(
        f"{info.name} {split}: VQA accuracy",
        ["question type", "subtype", "accuracy", "correct / total"],
        [(t, s, f"{100 * c / max(n, 1):.2f}%", f"{int(c)} / {int(n)}")
         for t, s, c, n in rows])]


class _DistinctChecked:
  """An iterator of batches (get_state/set_state passed through, for the
  trainer's exact resume) that raises on a batch with more distinct rows in
  `key` than `size`."""

  def __init__(self, batches, size, key, name):
    from mmtx.models.fusion_model import distinct_rows
    self._it, self._size, self._key, self._name = batches, size, key, name
    self._distinct = distinct_rows

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._it)
    n = self._distinct(batch[self._key])
    if n > self._size:
      raise ValueError(
          f"config.model.unique_texts={self._size}, but a batch of "
          f"{self._name!r} has {n} distinct questions; raise it to at least "
          f"{n} (or set 0: every question is encoded).")
    return batch

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


def vqa_soft_accuracy(pred, answer_ids):
  """The official VQA accuracy (`mmtx.metrics.vqa_question_accuracy`) of
  predicted answer ids `[B]` against the human answers' ids `[B, K]` (-1:
  not in the vocabulary, -2: none): for each human answer, min(1, #other
  humans who gave the prediction / 3), averaged; exact match when there is
  one answer. float32 `[B]`."""
  present = answer_ids != -2
  match = (answer_ids == pred[:, None]) & present
  total = match.sum(-1, keepdims=True)
  per = jnp.minimum(1.0, (total - match) / 3.0) * present
  n = present.sum(-1)
  soft = per.sum(-1) / jnp.maximum(n, 1)
  return jnp.where(n == 1, match.any(-1), soft).astype(jnp.float32)


TASK = VqaTask
