"""Visual dialogue: answer the current question given the image and the
dialogue so far, as classification over the dataset's answer vocabulary.

Batch (mmtx.data view 'dialogue', one example per turn): 'image' [B, H, W,
3], 'history' [B, L] = bos q1 sep a1 sep ... sep q_t eos -> FusionModel(...,
texts=history)['vqa_logits'] [B, num_answers] -> softmax cross-entropy
against 'answer' [B]. With data.questions_per_image = Q > 0 a training batch
holds B images with Q turns each ('history' [B, Q, L]) and the loss is the
mean over the valid turns, as in VQA. Evaluation is always one example per
turn.

config.data.history: 'full' feeds the whole history; 'last' is the
no-history ablation: `last_question` keeps only q_t (bos q_t eos), so a
follow-up like "what shape is it?" loses its referent and the gap to 'full'
shows how much the model uses the history.

Evaluation, per split of config.data.eval_splits: answer accuracy and MRR of
the correct answer among all answers of the vocabulary (`metrics.mrr`,
VisDial's ranking metric with the vocabulary as the candidates), overall
and per turn.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmtx import data as data_lib
from mmtx import metrics as metrics_lib
from mmtx import sharding
from mmtx.tasks import common

HISTORY = ("full", "last")


def last_question(history):
  """`[B, L]` history ids -> `[B, L]` bos + the tokens after the last SEP.

  Tokens after the last sep are q_t and eos (and padding); a row without sep
  (the first turn) is returned as it is. Works on numpy and jax arrays.
  """
  xp = jnp if isinstance(history, jax.Array) else np
  length = history.shape[1]
  pos = xp.arange(length)
  last_sep = xp.max(xp.where(history == data_lib.SEP, pos[None, :], 0),
                    axis=1)                                  # [B]; 0 = bos
  src = pos[None, :] + last_sep[:, None]                     # [B, L]
  shifted = xp.take_along_axis(history, xp.minimum(src, length - 1), axis=1)
  shifted = xp.where(src < length, shifted, data_lib.PAD)
  return xp.where(pos[None, :] == 0, history[:, :1], shifted)


def select_history(history, mode: str):
  """config.data.history -> the text the model sees."""
  if mode == "full":
    return history
  if mode == "last":
    return last_question(history)
  raise ValueError(f"config.data.history must be one of {HISTORY}, got "
                   f"{mode!r}.")


class DialogueTask(common.Task):
  view = "dialogue"
  text_key = "history"

  def __init__(self, config, info=None, model=None):
    if config.data.history not in HISTORY:
      raise ValueError(f"config.data.history must be one of {HISTORY}, got "
                       f"{config.data.history!r}.")
    self.history = config.data.history
    super().__init__(config, info, model)

  def build_model(self):
    from mmtx.models.fusion_model import FusionModel
    cfg = common.model_config(self.config,
                              vocab_size=self.info.tokenizer.vocab_size,
                              num_answers=len(self.info.answers))
    return FusionModel(cfg)

  def loss_fn(self, params, batch, rng, train):
    history = batch["history"]
    if history.ndim == 3:  # [B, Q, L]: data.questions_per_image > 0
      history = select_history(history.reshape(-1, history.shape[-1]),
                               self.history).reshape(history.shape)
    else:
      history = select_history(history, self.history)
    out, _ = self.model.apply({"params": params}, batch["image"], history,
                              deterministic=not train, rngs={"dropout": rng})
    return common.answer_loss(out["vqa_logits"], batch["answer"], batch)

  def eval_step(self, params, batch):
    out, _ = self.model.apply({"params": params}, batch["image"],
                              select_history(batch["history"], self.history))
    # The global batch's labels beside its logits: with several processes
    # the host's own batch holds only its rows.
    return {"logits": out["vqa_logits"], "answer": batch["answer"],
            "turn": batch["turn"], "valid": batch["valid"]}

  def evaluate_split(self, params, mesh, split):
    step = self.jit(self.eval_step, mesh)
    it, info = self.eval_iterator(split)
    logits, answers, turns = [], [], []
    for batch in it:
      z = jax.device_get(step(params, sharding.put_batch(batch, mesh)))
      valid = np.asarray(z["valid"], bool)
      logits.append(np.asarray(z["logits"])[valid])
      answers.append(np.asarray(z["answer"])[valid])
      turns.append(np.asarray(z["turn"])[valid])
    logits, answers, turns = map(np.concatenate, (logits, answers, turns))
    out, rows = {}, []
    for name, sel in [("all", np.ones_like(turns, bool))] + [
        (f"turn {t + 1}", turns == t) for t in np.unique(turns)]:
      acc = float(np.mean(np.argmax(logits[sel], -1) == answers[sel]))
      rr = metrics_lib.mrr(logits[sel], answers[sel])
      key = "" if name == "all" else f"/turn_{name.split()[1]}"
      out[f"accuracy{key}"] = acc
      out[f"mrr{key}"] = rr
      rows.append((name, f"{100 * acc:.2f}%", f"{rr:.4f}", int(sel.sum())))
    return out, [common.table(
        f"{info.name} {split}: dialogue answers (history={self.history}, "
        f"MRR over {len(info.answers)} answers)",
        ["turn", "accuracy", "MRR", "questions"], rows)]


TASK = DialogueTask
