"""What every task shares: the `Task` base (built once from the config,
opening its data from `config.data`, jitting its eval steps once), filling
the dataset-dependent model sizes, the answer loss, printing tables."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmtx import data as data_lib
from mmtx import losses
from mmtx import sharding


class Task:
  """A task built once from the config: its model, loss and evaluation.

  `Task(config, info)`: `info` is the training split's DataInfo (vocabulary,
  answers, image shape), opened from config.data when not given; `model`
  replaces the one `build_model` makes (a stub in tests). Subclasses set
  `view` (the mmtx.data view their batches come from) and `text_key` (the
  batch's token field the model reads beside 'image') and implement
  build_model, loss_fn and evaluate_split. mmtx/train.py lists what the
  trainer calls.
  """
  view = "vqa"
  text_key = "question"

  def __init__(self, config, info=None, model=None):
    self.config = config
    self._info = info
    self._jitted = {}
    self.model = self.build_model() if model is None else model

  @property
  def info(self):
    """The training split's DataInfo (the dataset is built on first use)."""
    if self._info is None:
      _, self._info = self._open(self.config.data.train_split, train=True,
                                 shard=(0, 1))
    return self._info

  def build_model(self):
    """The flax module for `self.config` and `self.info`; sets nothing."""
    raise NotImplementedError

  def evaluate(self, params, mesh):
    """(metrics, printable tables) on every split of config.data.eval_splits:
    the first split's metrics by their names, another's as 'SPLIT/name'."""
    out, tables = {}, []
    splits = self.config.data.eval_splits
    for split in splits:
      metrics, split_tables = self.evaluate_split(params, mesh, split)
      prefix = "" if split == splits[0] else f"{split}/"
      out.update({f"{prefix}{k}": v for k, v in metrics.items()})
      tables.extend(split_tables)
    return out, "\n".join(tables)

  def evaluate_split(self, params, mesh, split):
    """(metrics, list of printable tables) of one eval split."""
    raise NotImplementedError

  def jit(self, fn, mesh=None, **kwargs):
    """`jax.jit(fn, **kwargs)` made once per task, `fn` and mesh (with
    `mesh`: outputs replicated, so the host reads every row). `fn` is a
    bound method or module-level function, so an evaluation after the first
    runs the steps already compiled."""
    key = (fn, mesh)
    if key not in self._jitted:
      if mesh is not None:
        kwargs["out_shardings"] = sharding.replicated(mesh)
      self._jitted[key] = jax.jit(fn, **kwargs)
    return self._jitted[key]

  def _open(self, split, *, train, shard=None):
    """config.batch_size and data.eval_batch_size are global: each of the
    `count` hosts reads 1/count of every batch."""
    config = self.config
    d = config.data
    if train:
      split = train_split_with_fraction(split, d.train_fraction)
    count = shard[1] if shard is not None else jax.process_count()
    global_bs = config.batch_size if train else d.eval_batch_size
    if global_bs % count:
      raise ValueError(f"{'batch_size' if train else 'data.eval_batch_size'}="
                       f"{global_bs} is not divisible by the {count} "
                       f"processes; use a multiple of {count}.")
    return data_lib.get_dataset(
        d.name, split, self.view, batch_size=global_bs // count,
        seed=config.seed, max_len=d.max_len, shuffle=train, repeat=train,
        augment=train and d.augment, data_dir=d.data_dir or None, shard=shard,
        tokenizer=d.tokenizer or None,
        # Image input (catalog and ingested datasets): crop size (0 = the
        # dataset's), the model's normalisation, training flips; grain
        # worker processes that decode and augment (0 = reading threads).
        image_size=d.get("image_size", 0) or None,
        normalize=d.get("normalize", "minus_one_one"),
        hflip=train and d.get("hflip", False),
        num_workers=d.get("num_workers", 0),
        questions_per_image=(d.get("questions_per_image", 0)
                             if train and self.view in ("vqa", "dialogue")
                             else 0))

  def init_batch(self):
    """Zeros with the shapes of a training batch (for `init`)."""
    b = self.config.batch_size
    return {"image": np.zeros((b,) + tuple(self.info.image_shape),
                              np.float32),
            self.text_key: np.ones((b, self.config.data.max_len), np.int32)}

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch["image"], batch[self.text_key])

  def import_weights(self):
    """The params of config.init_from.weights (mmtx.interop.weights), for
    the trainer's init_from (configs/clip.py, configs/caption.py:init=...);
    the tokenizer must be the weights' own."""
    from mmtx.interop import weights  # pylint: disable=g-import-not-at-top
    config = self.config
    if not config.data.tokenizer:
      raise ValueError(
          f"init_from.weights={config.init_from.weights}: config.data."
          f"tokenizer is unset, so the texts would be the dataset's word ids, "
          f"not those the weights were trained on; pass --config.data."
          f"tokenizer=siglip:PATH/spiece.model (SigLIP) or =clip (CLIP, "
          f"CoCa).")
    _, params = weights.load(config.init_from.weights,
                             config.init_from.preset)
    weights.load.cache_clear()
    return params

  def train_iterator(self, shard_index, shard_count):
    it, _ = self._open(self.config.data.train_split, train=True,
                       shard=(shard_index, shard_count))
    return it

  def eval_iterator(self, split):
    return self._open(split, train=False)


def answer_loss(logits, answer, batch):
  """Softmax cross-entropy and accuracy of answer classification.

  logits `[B, answers]` with answer `[B]`; or, for a batch of question
  groups (data.questions_per_image > 0), `[B, Q, answers]` with answer
  `[B, Q]`, averaged over the rows where batch['question_valid'] is True.
  Returns (loss, {'accuracy': ...}).
  """
  valid = None
  if logits.ndim == 3:
    logits = logits.reshape(-1, logits.shape[-1])
    answer = answer.reshape(-1)
    valid = batch["question_valid"].reshape(-1)
  loss = losses.classification_loss(logits, answer, weights=valid)
  hit = jnp.argmax(logits, -1) == answer
  acc = jnp.mean(hit) if valid is None else (
      (hit & valid).sum() / jnp.maximum(valid.sum(), 1))
  return loss, {"accuracy": acc}


def train_split_with_fraction(split: str, fraction: float) -> str:
  """`config.data.train_fraction` as a TFDS slice of the training split: the
  first round(fraction * records) records (TFDS 'closest' rounding), e.g.
  ('train', 0.01) -> 'train[:1%]'. Records are the unit (an image with all its
  questions / captions / dialogues), so every image kept keeps all its labels.
  Our builders write records in generation order (independent random
  scenes), so the first records are a uniform sample of the split."""
  fraction = float(fraction)
  if fraction == 1.0:
    return split
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"config.data.train_fraction must be in (0, 1], got "
                     f"{fraction}.")
  if "[" in split:
    raise ValueError(f"config.data.train_fraction={fraction} cannot be "
                     f"combined with the sliced config.data.train_split="
                     f"{split!r}; use one or the other.")
  return f"{split}[:{100 * fraction:g}%]"


def model_config(config, **dataset_sizes) -> dict[str, Any]:
  """config.model as a dict, with the sizes that come from the data (text
  vocabulary, answer count) filled in where the config says -1."""
  cfg = config.model.to_dict()
  if "text" in cfg and cfg["text"].get("vocab_size", -1) == -1:
    cfg["text"]["vocab_size"] = dataset_sizes["vocab_size"]
  elif "text" in cfg and cfg["text"]["vocab_size"] < dataset_sizes.get(
      "vocab_size", 0):
    raise ValueError(
        f"config.model.text.vocab_size={cfg['text']['vocab_size']} is below "
        f"the tokenizer's {dataset_sizes['vocab_size']} ids; use -1 to take "
        f"it from the data.")
  if cfg.get("num_answers", 0) == -1:
    cfg["num_answers"] = dataset_sizes["num_answers"]
  return cfg


def table(title: str, header: Sequence[str], rows) -> str:
  rows = [[str(c) for c in r] for r in rows]
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in
            enumerate(header)]
  line = lambda cells: "| " + " | ".join(  # noqa: E731
      c.ljust(w) for c, w in zip(cells, widths)) + " |"
  out = [f"\n{title}", line(header),
         "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
  out += [line(r) for r in rows]
  return "\n".join(out)


def contrastive_loss(name: str, img_emb, txt_emb, logit_scale,
                     logit_bias=None):
  """The contrastive loss `name` ('softmax', CLIP; 'sigmoid', SigLIP) of a
  global batch. Traced under the trainer's `sharding.use_rules(mesh)` with
  the batch over several data/fsdp devices, it runs per device through
  `jax.shard_map` (`losses.contrastive_loss_on_mesh`: an all-gather of the
  other devices' embeddings, SigLIP's ppermute ring); otherwise on one
  device. Both give the same value."""
  if name not in ("softmax", "sigmoid"):
    raise ValueError(f"config.model.loss must be 'softmax' or 'sigmoid', got "
                     f"{name!r}.")
  mesh = sharding.current_mesh()
  devices = 1 if mesh is None else (mesh.shape.get("data", 1) *
                                    mesh.shape.get("fsdp", 1))
  if devices > 1 and img_emb.shape[0] % devices == 0:
    return losses.contrastive_loss_on_mesh(mesh, img_emb, txt_emb,
                                           logit_scale, logit_bias, loss=name)
  if name == "softmax":
    return losses.softmax_contrastive_loss(img_emb, txt_emb, logit_scale)
  return losses.sigmoid_contrastive_loss(img_emb, txt_emb, logit_scale,
                                         logit_bias)
