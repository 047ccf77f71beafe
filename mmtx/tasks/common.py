"""What every task shares: opening its data from `config.data`, filling the
dataset-dependent model sizes, placing batches, printing tables."""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from mmtx import data as data_lib


class Task:
  """Base for tasks (see mmtx/train.py for the interface the loop calls).

  Subclasses set `data_task` (the data view) and implement build_model,
  init_batch, init_variables, loss_fn and evaluate.
  """
  data_task = "vqa"

  def __init__(self):
    self._info = None

  def _open(self, config, split, *, train, shard=None):
    d = config.data
    return data_lib.get_dataset(
        d.name, split, self.data_task, batch_size=(
            config.batch_size if train else d.eval_batch_size),
        seed=config.seed, max_len=d.max_len, shuffle=train, repeat=train,
        augment=train and d.augment, data_dir=d.data_dir or None, shard=shard,
        tokenizer=d.tokenizer or None)

  def info(self, config):
    """The training split's DataInfo (vocabulary, answers, image shape);
    builds the dataset on first use."""
    if self._info is None:
      _, self._info = self._open(config, config.data.train_split, train=True,
                                 shard=(0, 1))
    return self._info

  def train_iterator(self, config, shard_index, shard_count):
    it, _ = self._open(config, config.data.train_split, train=True,
                       shard=(shard_index, shard_count))
    return it

  def eval_iterator(self, config, split):
    return self._open(config, split, train=False)


def model_config(config, **dataset_sizes) -> dict[str, Any]:
  """config.model as a dict, with the sizes that come from the data (text
  vocabulary, answer count) filled in where the config says -1."""
  cfg = config.model.to_dict()
  if "text" in cfg and cfg["text"].get("vocab_size", -1) == -1:
    cfg["text"]["vocab_size"] = dataset_sizes["vocab_size"]
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
