"""CLIP / SigLIP pretraining of a `DualEncoder` on image-caption pairs.

Batch (mmtx.data view 'contrastive'): 'image' [B, H, W, 3], 'text' [B, L]
(one caption per image, drawn at random) -> DualEncoder -> img_emb, txt_emb
[B, D] -> `losses.softmax_contrastive_loss` (config.model.loss 'softmax',
CLIP) or `losses.sigmoid_contrastive_loss` ('sigmoid', SigLIP) with the
model's learned logit_scale (and logit_bias), through
`common.contrastive_loss` (per device under `jax.shard_map` when the batch
is on several devices).

Evaluation, per split of config.data.eval_splits: image <-> text retrieval
recall@1/5/10 over all captions of each image (`retrieval`), and zero-shot
classification from text prompts with their embeddings ensembled (CLIP):
on any labelled dataset, config.zero_shot's class names (or the dataset's
own) x prompt templates and the record field holding each image's class;
by default, on records
with Sort-of-CLEVR 'objects', the number of circles k in 0..N (N objects;
the rest are squares), said in the dataset's own caption wording, "there
are four circles and two squares." and "4 circles and 2 squares.".
Datasets without either skip it.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mmtx import losses
from mmtx import metrics as metrics_lib
from mmtx.tasks import common
from mmtx.tasks import retrieval

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven",
                 "eight", "nine", "ten")
CIRCLE = 0  # sort_of_clevr shape id: 0 = circle, 1 = square


def circle_count_label(objects) -> int:
  """Zero-shot class of a Sort-of-CLEVR record: how many of its objects are
  circles (objects['shape'] int [N], 0 = circle, 1 = square)."""
  return int((np.asarray(objects["shape"]) == CIRCLE).sum())


def _count(m: int, word: str, digits: bool) -> str:
  number = str(m) if digits else _NUMBER_WORDS[m]
  return f"{number} {word}{'' if m == 1 else 's'}"


def circle_count_prompts(num_objects: int) -> list[list[str]]:
  """Prompts `[num_objects + 1][2]`: for class k (k circles, the others
  squares) the caption-style sentence and a digits variant."""
  if not 1 <= num_objects < len(_NUMBER_WORDS):
    raise ValueError(f"circle_count_prompts: num_objects must be in [1, "
                     f"{len(_NUMBER_WORDS) - 1}], got {num_objects}.")
  out = []
  for k in range(num_objects + 1):
    s = num_objects - k
    verb = "is" if k == 1 else "are"
    out.append([f"there {verb} {_count(k, 'circle', False)} and "
                f"{_count(s, 'square', False)}.",
                f"{_count(k, 'circle', True)} and "
                f"{_count(s, 'square', True)}."])
  return out


class ContrastiveTask(common.Task):
  view = "contrastive"
  text_key = "text"

  def build_model(self):
    from mmtx.models import DualEncoder
    return DualEncoder(common.model_config(
        self.config, vocab_size=self.info.tokenizer.vocab_size))

  def loss_fn(self, params, batch, rng, train):
    img_emb, txt_emb, extras = self.model.apply(
        {"params": params}, batch["image"], batch["text"],
        deterministic=not train, rngs={"dropout": rng})
    loss = common.contrastive_loss(self.config.model.get("loss", "softmax"),
                                   img_emb, txt_emb, extras["logit_scale"],
                                   extras.get("logit_bias"))
    sim = img_emb @ txt_emb.T
    acc = jnp.mean(jnp.argmax(sim, axis=1) == jnp.arange(sim.shape[0]))
    return loss, {"i2t_batch_accuracy": acc,
                  "logit_scale": extras["logit_scale"]}

  def embed(self, params, batch):
    """'img_emb', 'txt_emb' `[B, D]` of a batch of pairs."""
    img_emb, txt_emb, _ = self.model.apply({"params": params}, batch["image"],
                                           batch["text"])
    return {"img_emb": img_emb, "txt_emb": txt_emb}

  def evaluate_split(self, params, mesh, split):
    config = self.config
    step = self.jit(self.embed, mesh)
    it, info = self.eval_iterator(split)
    pairs = retrieval.run_pairs(step, params, config, mesh, it, info)
    out = retrieval.recall(pairs)
    tables = [common.table(
        f"{info.name} {split}: retrieval recall (%), {len(pairs.indices)} "
        f"images, {len(pairs.pair_image)} captions",
        ["direction", "R@1", "R@5", "R@10"], retrieval.recall_rows(out))]
    zs = zero_shot(step, params, config, mesh, info, pairs)
    if zs is not None:
      values, counts, title = zs
      out.update({f"zero_shot/{k}": v for k, v in values.items()})
      tables.append(common.table(
          f"{info.name} {split}: {title}", ["metric", "value"],
          [(f"top-{k[3:]} accuracy", f"{100 * v:.2f}%")
           for k, v in values.items()] +
          [("majority-class top-1",
            f"{100 * counts.max() / counts.sum():.2f}%"),
           ("images per class", " ".join(map(str, counts)))]))
    return out, tables


def record_field(record, path: str):
  """The value at a dotted `path` of a record: dict keys and, for arrays,
  integer indices ('label', 'objects.shape.0')."""
  value = record
  for part in path.split("."):
    if isinstance(value, dict):
      if part not in value:
        raise ValueError(f"config.zero_shot.label={path!r}: the records have "
                         f"no {part!r} (they have {sorted(value)}).")
      value = value[part]
    else:
      value = np.asarray(value)[int(part)]
  return int(np.asarray(value))


def class_prompts(classes, templates) -> list[list[str]]:
  """Prompts `[classes][templates]`: each template with '{}' filled by the
  class name (CLIP's prompt ensembling, Radford et al. 2021, Sec. 3.1.4)."""
  if not classes or not templates or any("{}" not in t for t in templates):
    raise ValueError(f"config.zero_shot: classes must name every class and "
                     f"every template hold '{{}}' for the name, got classes="
                     f"{tuple(classes)!r}, templates={tuple(templates)!r}.")
  return [[t.format(c) for t in templates] for c in classes]


def class_names(spec, metadata) -> tuple:
  """config.zero_shot.classes, or when it is empty and config.zero_shot.label
  reads the records' 'label' field, the dataset's own class names (the
  metadata's 'labels': data ingested with --label_column)."""
  if spec.classes:
    return tuple(spec.classes)
  if spec.label.split(".")[0] == "label" and metadata.get("labels"):
    return tuple(metadata["labels"])
  raise ValueError(f"config.zero_shot.label={spec.label!r}: config.zero_shot."
                   f"classes is empty and the dataset names no classes for it "
                   f"(only data ingested with --label_column does, for "
                   f"'label.0'); pass --config.zero_shot.classes.")


def zero_shot(step, params, config, mesh, info, pairs):
  """(metrics, images per class, title) of zero-shot classification, or
  None. With config.zero_shot.label set, each image's class is that record
  field and the classifier is `class_names` x config.zero_shot.templates;
  otherwise, on records with Sort-of-CLEVR 'objects', the circle count."""
  spec = config.get("zero_shot")
  if spec is not None and spec.label:
    prompts = class_prompts(class_names(spec, info.metadata), spec.templates)
    labels = np.array([record_field(info.record(int(i)), spec.label)
                       for i in pairs.indices])
    if labels.min() < 0 or labels.max() >= len(prompts):
      raise ValueError(f"config.zero_shot.label={spec.label!r} has class ids "
                       f"in [{labels.min()}, {labels.max()}]; "
                       f"config.zero_shot.classes names {len(prompts)}.")
    title = (f"zero-shot '{spec.label}' ({len(prompts)} classes x "
             f"{len(prompts[0])} prompts)")
  else:
    if any(o is None for o in pairs.objects):
      return None
    sizes = {len(np.asarray(o["shape"])) for o in pairs.objects}
    if len(sizes) != 1:
      return None
    prompts = circle_count_prompts(sizes.pop())
    labels = np.array([circle_count_label(o) for o in pairs.objects])
    title = f"zero-shot 'how many circles' ({len(prompts)} classes)"
  txt_emb = retrieval.text_outputs(step, params, config, mesh, info,
                                   [p for cls in prompts for p in cls])
  class_emb = txt_emb["txt_emb"].reshape(len(prompts), len(prompts[0]), -1)
  img_emb = pairs.outputs["img_emb"][pairs.first_pair]
  values = metrics_lib.zero_shot_accuracy(
      img_emb, class_emb, labels, ks=(1, 5) if len(prompts) > 5 else (1,))
  return values, np.bincount(labels, minlength=len(prompts)), title


TASK = ContrastiveTask
