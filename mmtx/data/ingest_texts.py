"""The texts of ingested records: a caption or question checked and
cleaned (`text`), a VQA record's question fields (`vqa_fields`) and the
answer vocabulary they index (`vqa_labels`)."""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from mmtx.data import ingest_sources as sources

NUM_HUMAN_ANSWERS = 10      # VQA v2: ten answers per question


@dataclasses.dataclass(frozen=True)
class Labels:
  """VQA answer vocabulary and question types (from the training split)."""
  answers: tuple[str, ...]
  qtypes: tuple[str, ...]
  qsubtypes: tuple[tuple[str, ...], ...]


def text(value):
  """(str, None) or (None, reason) for one caption / question."""
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError:
      return None, "non-UTF-8 text"
  if not isinstance(value, str):
    return None, "empty text" if value is None else "malformed row"
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:   # surrogateescape'd bytes from a CSV
    return None, "non-UTF-8 text"
  value = value.strip()
  return (value, None) if value else (None, "empty text")


def vqa_fields(questions, labels, train):
  """(the record's question fields or None when none is left, [reason of
  each question dropped])."""
  from mmtx.metrics import vqa_normalize_answer  # pylint: disable=g-import-not-at-top
  index = {a: i for i, a in enumerate(labels.answers)}
  out = collections.defaultdict(list)
  dropped = []
  for q in questions:
    value, why = text(q["question"])
    if value is None:
      dropped.append(why)
      continue
    ids = [index.get(vqa_normalize_answer(str(a)), -1)
           for a in q["answers"][:NUM_HUMAN_ANSWERS]]
    known = [i for i in ids if i >= 0]
    if not known and train:   # nothing to learn from: not kept for training
      dropped.append("answer not in vocabulary")
      continue
    # The label: the most frequent known human answer (ties: first given).
    answer = max(known, key=known.count) if known else -1
    t = labels.qtypes.index(q["answer_type"])
    out["question"].append(value)
    out["answer"].append(answer)
    out["qtype"].append(t)
    out["qsubtype"].append(labels.qsubtypes[t].index(q["question_type"]))
    out["answer_ids"].append(ids + [-2] * (NUM_HUMAN_ANSWERS - len(ids)))
  if not out:
    return None, dropped
  rec = {k: np.asarray(v, np.int32) for k, v in out.items() if k != "question"}
  rec["question"] = np.asarray(out["question"], dtype=object)
  return rec, dropped


def vqa_labels(streams, top_k: int, answers_file: str | None) -> Labels:
  """The answer vocabulary (the `top_k` most frequent normalised human
  answers of the first stream, the training split; ties by first seen) or
  `answers_file` (one answer per line), and the question types of all
  streams ('answer_type' -> qtype, 'question_type' -> its qsubtype) in the
  order they are first seen."""
  from mmtx.metrics import vqa_normalize_answer  # pylint: disable=g-import-not-at-top
  counts = collections.Counter()
  qtypes = {}
  for n, stream in enumerate(streams):
    for item in stream:
      for q in item.get("questions", ()):
        subs = qtypes.setdefault(q["answer_type"], {})
        subs.setdefault(q["question_type"], len(subs))
        if n == 0 and answers_file is None:
          counts.update(vqa_normalize_answer(str(a))
                        for a in q["answers"][:NUM_HUMAN_ANSWERS])
  if answers_file:
    with open(answers_file, encoding="utf-8") as f:
      answers = [vqa_normalize_answer(line.strip()) for line in f
                 if line.strip()]
  else:
    answers = [a for a, _ in counts.most_common(top_k) if a]
  if not answers:
    raise sources.SourceError("ingest: the training split has no answers to "
                              "build the answer vocabulary from.")
  return Labels(tuple(answers), tuple(qtypes),
                tuple(tuple(s) for s in qtypes.values()))
