"""One case per task evaluation: `setup(name, data_dir)` gives (task, stub
model, params, config) and `reference(name, data_dir, params)` every metric
that `task.evaluate` reports, recomputed with numpy from the split's records
(see eval_stub.py for how the stubs' outputs are known).

Each case evaluates 'test[:15]' of sort_of_clevr/tiny (av_event: of
av_scenes/tiny; 15 images or clips, an odd count, so a second process's
shard ends in a padding example) with an eval batch size that leaves the
last batch part padding."""
from __future__ import annotations

from collections import defaultdict

import jax
import numpy as np

from mmtx import data as data_lib
from mmtx import losses
from mmtx.tasks import contrastive as contrastive_lib
from mmtx.tasks import get_task

import eval_stub as st

SPLIT = "test[:15]"
CASES = ("vqa", "dialogue", "contrastive", "caption", "pretrain", "av_event")
AV_DATASET = "av_scenes/tiny"   # av_event's clips: 'test[:15]' of its 16
# Global eval batch sizes: 450 questions = 10 x 44 + 10; 120 turns =
# 2 x 44 + 32; 15 images = 2 x 6 + 3 (per process, half of each).
EVAL_BATCH = {"vqa": 44, "dialogue": 44, "contrastive": 6, "caption": 6,
              "pretrain": 6, "av_event": 6}
SPLITS = {"vqa": (SPLIT, "test")}


def _u8(rec):
  return np.asarray(rec["image"], np.uint8)


def _enc(tok, texts):
  return tok.encode_batch(list(texts), st.MAX_LEN)[0]


# -------------------------------------------------------------------- VQA
def _vqa_items(info):
  """(key, answer, qtype, qsubtype) per question of the split."""
  w = st.hash_weights(info.image_shape, st.MAX_LEN)
  out = []
  for rec in st.records(info):
    ids = _enc(info.tokenizer, [data_lib.as_text(q) for q in rec["question"]])
    keys = st.np_keys(np.repeat(_u8(rec)[None], len(ids), 0), ids, w)
    for q, key in enumerate(keys):
      out.append((int(key), int(rec["answer"][q]), int(rec["qtype"][q]),
                  int(rec["qsubtype"][q])))
  return w, out


def _vqa_setup(data_dir):
  info = st.open_split(data_dir, "test")
  w, items = _vqa_items(info)
  params = st.vqa_params(w, [(k, a) for k, a, _, _ in items],
                         len(info.answers))
  return st.Stub("fusion"), params


def _vqa_reference(data_dir, params):
  out = {}
  for n, split in enumerate(SPLITS["vqa"]):
    info = st.open_split(data_dir, split)
    _, items = _vqa_items(info)
    prefix = "" if n == 0 else f"{split}/"
    hit = defaultdict(list)
    for key, answer, t, s in items:
      pred = int(np.argmax(st.lookup(params, "vqa", key)))
      for group in ((), (t,), (t, s)):
        hit[group].append(pred == answer)
    out[f"{prefix}accuracy"] = float(np.mean(hit[()]))
    for group, h in hit.items():
      if len(group) == 1:
        out[f"{prefix}accuracy/{info.qtypes[group[0]]}"] = float(np.mean(h))
      elif len(group) == 2 and len(info.qsubtypes[group[0]]) > 1:
        t, s = group
        out[f"{prefix}accuracy/{info.qtypes[t]}/{info.qsubtypes[t][s]}"] = (
            float(np.mean(h)))
  return out


# --------------------------------------------------------------- dialogue
def _dialogue_items(info):
  """(key, answer, turn) per dialogue turn of the split."""
  w = st.hash_weights(info.image_shape, st.MAX_LEN)
  out = []
  for rec in st.records(info):
    qs, ans = rec["dialogue_question"], rec["dialogue_answer"]
    for d in range(qs.shape[0]):
      for t in range(qs.shape[1]):
        ids = st.dialogue_history(info.tokenizer, info.answers, qs, ans, d, t,
                                  st.MAX_LEN)
        key = st.np_keys(_u8(rec)[None], ids[None], w)[0]
        out.append((int(key), int(ans[d, t]), t))
  return w, out


def _dialogue_setup(data_dir):
  info = st.open_split(data_dir, SPLIT)
  w, items = _dialogue_items(info)
  params = st.vqa_params(w, [(k, a) for k, a, _ in items], len(info.answers),
                         seed=1)
  return st.Stub("fusion"), params


def _dialogue_reference(data_dir, params):
  info = st.open_split(data_dir, SPLIT)
  _, items = _dialogue_items(info)
  groups = defaultdict(lambda: ([], []))
  for key, answer, t in items:
    scores = st.lookup(params, "vqa", key)
    hit = int(np.argmax(scores)) == answer
    rank = int(np.sum(scores > scores[answer]))   # scores are distinct
    for g in ("", f"/turn_{t + 1}"):
      groups[g][0].append(hit)
      groups[g][1].append(1.0 / (1 + rank))
  out = {}
  for g, (hits, rr) in groups.items():
    out[f"accuracy{g}"] = float(np.mean(hits))
    out[f"mrr{g}"] = float(np.mean(rr))
  return out


# ------------------------------------------- image-text pairs (3 tasks)
def _pairs(info):
  """Per image: uint8 image, caption strings, caption ids [C, L]."""
  recs = st.records(info)
  caps = [st.captions_of(r) for r in recs]
  return (np.stack([_u8(r) for r in recs]), caps,
          [_enc(info.tokenizer, c) for c in caps], recs)


def _pair_keys(w, images, ids):
  return [st.np_keys(np.repeat(images[i][None], len(ids[i]), 0), ids[i], w)
          for i in range(len(images))]


def _recall(params, images, pair_keys, w):
  img_emb = st.lookup(params, "img", st.np_image_keys(images, w))
  txt_emb = np.concatenate([st.lookup(params, "txt", k) for k in pair_keys])
  txt_image = np.concatenate([np.full(len(k), i) for i, k in
                              enumerate(pair_keys)])
  return st.recall_reference(img_emb, txt_emb, txt_image), img_emb


def _circles(rec):
  return int(np.sum(np.asarray(rec["objects"]["shape"]) == 0))


def _prompt_keys(info, w):
  """Zero-shot prompts [classes][prompts] -> their keys (blank image)."""
  n = len(np.asarray(st.records(info)[0]["objects"]["shape"]))
  prompts = contrastive_lib.circle_count_prompts(n)
  blank = np.full((1,) + tuple(info.image_shape), 128, np.uint8)
  return [st.np_keys(np.repeat(blank, len(p), 0), _enc(info.tokenizer, p), w)
          for p in prompts]


def _contrastive_setup(data_dir):
  info = st.open_split(data_dir, SPLIT)
  w = st.hash_weights(info.image_shape, st.MAX_LEN)
  images, _, ids, recs = _pairs(info)
  labels = np.array([_circles(r) for r in recs])
  params = st.embedding_params(
      w, images, _pair_keys(w, images, ids), class_of_image=labels,
      class_text_keys=_prompt_keys(info, w))
  return st.Stub("dual"), params


def _contrastive_reference(data_dir, params):
  info = st.open_split(data_dir, SPLIT)
  w = st.hash_weights(info.image_shape, st.MAX_LEN)
  images, _, ids, recs = _pairs(info)
  out, img_emb = _recall(params, images, _pair_keys(w, images, ids), w)
  # Zero-shot: each class's prompt embeddings normalised, averaged,
  # renormalised (CLIP's ensembling); class = number of circles.
  prompt_emb = [st.lookup(params, "txt", k).astype(np.float64)
                for k in _prompt_keys(info, w)]
  cls = np.stack([st._unit(st._unit(e).mean(0)) for e in prompt_emb])
  logits = st._unit(img_emb.astype(np.float64)) @ cls.T
  labels = np.array([_circles(r) for r in recs])
  ranks = st.ranks_no_ties(logits, labels[:, None] == np.arange(len(cls)))
  out["zero_shot/top1"] = float(np.mean(ranks < 1))
  out["zero_shot/top5"] = float(np.mean(ranks < 5))
  return out


# ---------------------------------------------------------------- caption
def _caption_hyps(info):
  """The caption the stub 'generates' for image i: its own first caption
  cut to 6 words (even i), another image's first caption cut to 8 words
  (odd i)."""
  _, caps, _, _ = _pairs(info)
  out = []
  for i in range(len(caps)):
    src = caps[i] if i % 2 == 0 else caps[(i + 3) % len(caps)]
    out.append(" ".join(src[0].split()[:6 if i % 2 == 0 else 8]))
  return out


def _caption_setup(data_dir):
  info = st.open_split(data_dir, SPLIT)
  w = st.hash_weights(info.image_shape, st.MAX_LEN)
  images, _, ids, _ = _pairs(info)
  params = st.embedding_params(w, images, _pair_keys(w, images, ids), seed=2)
  # New tokens per image: the hypothesis, eos, padding ([max_len - 1]).
  gen = {}
  for ik, hyp in zip(st.np_image_keys(images, w), _caption_hyps(info)):
    ids_ = info.tokenizer.encode(hyp) + [data_lib.EOS]
    gen[int(ik)] = np.pad(ids_, (0, st.MAX_LEN - 1 - len(ids_)))
  keys = params["img_keys"]
  params["gen"] = np.stack([gen[int(k)] for k in keys]
                           + [np.zeros(st.MAX_LEN - 1)]).astype(np.int32)
  return st.Stub("captioner"), params


def stub_generate(params, images):
  """Stands in for CaptionTask.generate: the tokens of params['gen'] for
  each image."""
  row = st._row(params["img_keys"], st.jnp_image_keys(images, params),
                jax.numpy)
  return params["gen"][row]


def _caption_reference(data_dir, params):
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from mmtx.metrics import simple_tokenize
  info = st.open_split(data_dir, SPLIT)
  w = st.hash_weights(info.image_shape, st.MAX_LEN)
  images, caps, ids, _ = _pairs(info)
  out, _ = _recall(params, images, _pair_keys(w, images, ids), w)
  gts = {i: [simple_tokenize(c) for c in caps[i]] for i in range(len(caps))}
  res = {i: [simple_tokenize(h)] for i, h in enumerate(_caption_hyps(info))}
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  cider, _ = Cider().compute_score(gts, res)
  out.update({f"bleu_{k + 1}": float(bleu[k]) for k in range(4)})
  out["cider"] = float(cider)
  return out


# --------------------------------------------------------------- pretrain
_MLM_SPECIAL = (data_lib.BOS, data_lib.EOS, data_lib.SEP, data_lib.UNK)


def _pretrain_setup(data_dir):
  info = st.open_split(data_dir, SPLIT)
  w = st.hash_weights(info.image_shape, st.MAX_LEN)
  images, _, ids, _ = _pairs(info)
  # At a [MASK] the stub guesses the token of the image's first caption.
  params = st.embedding_params(w, images, _pair_keys(w, images, ids), seed=3,
                               vocab=info.tokenizer.vocab_size,
                               mlm_guess=[i[0] for i in ids])
  return st.Stub("fusion"), params


def _pretrain_reference(data_dir, params, cfg):
  """Pairs go per eval batch (`cfg.data.eval_batch_size` images), caption
  slot by slot, in chunks of eval_batch_size rows; a pair's ITM negative is
  the next row of its chunk (the first row after the last), counted when
  that row is a real pair of another image whose caption is not word for
  word one of this image's captions. MLM masks each chunk's texts with
  `losses.mlm_mask` and key 0."""
  info = st.open_split(data_dir, SPLIT)
  w = st.hash_weights(info.image_shape, st.MAX_LEN)
  images, _, ids, _ = _pairs(info)
  out, _ = _recall(params, images, _pair_keys(w, images, ids), w)
  size = cfg.data.eval_batch_size
  pos_hits, neg_hits, mlm_correct, mlm_count = [], [], 0.0, 0.0
  vocab = info.tokenizer.vocab_size
  for batch in st.batches(len(images), size):
    pairs = [(i, c) for c in range(max(len(ids[i]) for i in batch))
             for i in batch if c < len(ids[i])]
    for s in range(0, len(pairs), size):
      part = pairs[s:s + size]
      texts = np.zeros((size, st.MAX_LEN), np.int32)
      for r, (i, c) in enumerate(part):
        texts[r] = ids[i][c]
      for r, (i, c) in enumerate(part):
        key = st.np_keys(images[i][None], texts[r][None], w)[0]
        pos_hits.append(st.np_itm_pred(key) == 1)
        nr = (r + 1) % size
        if nr < len(part):
          ni = part[nr][0]
          same_words = any(np.array_equal(texts[nr], t) for t in ids[i])
          if ni != i and not same_words:
            nkey = st.np_keys(images[i][None], texts[nr][None], w)[0]
            neg_hits.append(st.np_itm_pred(nkey) == 0)
      masked, targets, weights = (np.asarray(x) for x in losses.mlm_mask(
          jax.random.key(0), texts, vocab_size=vocab, mask_id=data_lib.MASK,
          special_ids=_MLM_SPECIAL, prob=float(cfg.loss.mask_prob)))
      for r, (i, c) in enumerate(part):
        guess = st.lookup(params, "mlm", st.np_image_keys(images[i][None],
                                                          w))[0]
        pred = np.where(masked[r] == data_lib.MASK, guess, masked[r])
        mlm_correct += float(np.sum((pred == targets[r]) * weights[r]))
        mlm_count += float(np.sum(weights[r]))
  pos, neg = np.array(pos_hits), np.array(neg_hits)
  out["itm_accuracy"] = float((pos.sum() + neg.sum()) / (len(pos) + len(neg)))
  out["itm_accuracy/positive"] = float(pos.mean())
  out["itm_accuracy/negative"] = float(neg.mean())
  out["mlm_accuracy"] = mlm_correct / max(mlm_count, 1.0)
  out["_counts"] = (len(pos), len(neg), mlm_count)
  return out


# --------------------------------------------------------------- av_event
def av_open(data_dir, split):
  """av_scenes/tiny's DataInfo for `split` (view 'label') on one process."""
  data_lib.ensure_built(AV_DATASET, str(data_dir))
  _, info = data_lib.get_dataset(AV_DATASET, split, "label", batch_size=1,
                                 data_dir=str(data_dir), shard=(0, 1),
                                 shuffle=False)
  return info


def _av_items(info, w_aud):
  """(key of the waveform, bool labels [classes]) per clip."""
  out = []
  for rec in st.records(info):
    labels = np.zeros(len(info.metadata["labels"]), bool)
    labels[np.asarray(rec["label"]).reshape(-1)] = True
    key = st.np_audio_keys(np.asarray(rec["audio"], np.float32)[None],
                           w_aud)[0]
    out.append((int(key), labels))
  return out


def _av_event_setup(data_dir):
  """Random scores per clip; on ~60 % of the clips its classes get +1.5, so
  mAP and top-1 are neither 0 nor 1."""
  info = av_open(data_dir, "test")
  w_aud = st.audio_hash_weights(info.metadata["audio_samples"])
  rs = np.random.RandomState(0)
  table = {}
  for key, labels in _av_items(info, w_aud):
    table[key] = rs.normal(size=labels.shape) + 1.5 * labels * (
        rs.rand() < 0.6)
  keys = np.array(sorted(table), np.uint32)
  default = np.zeros(len(info.metadata["labels"]))
  params = {"w_aud": w_aud, "clip_keys": keys,
            "event": np.stack([table[int(k)] for k in keys] + [default]
                              ).astype(np.float32)}
  return st.Stub("av"), params


def _av_event_reference(data_dir, params):
  """Top-1 (the best class is one of the clip's) and mAP, the mean over the
  classes with a positive of scikit-learn's average precision."""
  from sklearn.metrics import average_precision_score
  items = _av_items(av_open(data_dir, SPLIT), params["w_aud"])
  scores = np.stack([st.lookup(params, "event", k) for k, _ in items])
  labels = np.stack([l for _, l in items])
  hit = labels[np.arange(len(labels)), scores.argmax(-1)]
  aps = [average_precision_score(labels[:, c], scores[:, c])
         for c in range(labels.shape[1]) if labels[:, c].any()]
  return {"accuracy": float(hit.mean()), "mAP": float(np.mean(aps)),
          "_clips": len(labels)}


# -------------------------------------------------------------- interface
_SETUP = {"vqa": _vqa_setup, "dialogue": _dialogue_setup,
          "contrastive": _contrastive_setup, "caption": _caption_setup,
          "pretrain": _pretrain_setup, "av_event": _av_event_setup}


def setup(name, data_dir):
  """(task, model, params, config): the task of `name` on the stub model
  (caption: with the stub decoder)."""
  extra = {"data.name": AV_DATASET} if name == "av_event" else {}
  cfg = st.config(name, data_dir, SPLITS.get(name, (SPLIT,)),
                  EVAL_BATCH[name], **extra)
  model, params = _SETUP[name](data_dir)
  info = (av_open(data_dir, SPLIT) if name == "av_event" else
          st.open_split(data_dir, SPLIT))
  task = get_task(name)(cfg, info, model=model)
  if name == "caption":
    task.generate = stub_generate
  return task, model, params, cfg


def evaluate(name, data_dir, mesh):
  """task.evaluate with the stub."""
  task, _, params, _ = setup(name, data_dir)
  return task.evaluate(params, mesh)


def reference(name, data_dir):
  _, _, params, cfg = setup(name, data_dir)
  if name == "pretrain":
    return _pretrain_reference(data_dir, params, cfg)
  return {"vqa": _vqa_reference, "dialogue": _dialogue_reference,
          "contrastive": _contrastive_reference,
          "caption": _caption_reference,
          "av_event": _av_event_reference}[name](data_dir, params)
