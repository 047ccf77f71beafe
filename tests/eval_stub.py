"""Stub models with known outputs, and plain-numpy references, for the
tests that recompute every task's `evaluate` (test_eval_tasks.py, and
two_process_eval_check.py for two processes' shards).

A stub's outputs are a lookup by the exact (image, text) a row shows: the
image (de-normalised back to its uint8 pixels) and the token ids are hashed
to a uint32 key (integer arithmetic, identical in jnp and numpy), and the
key's row of a table the test fills from the split's records gives the
output (an unknown key gets the table's last row). The references rebuild
every key from the records alone, so they know each row's prediction
without running the evaluation code, and recompute each metric with numpy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmtx import data as data_lib
from mmtx.data import tokenizers as tok_lib

DATASET = "sort_of_clevr/tiny"
MAX_LEN = 32
_IMG_MULT = np.uint32(0x9E3779B1)


# ------------------------------------------------------------------ hashing
def hash_weights(image_shape, max_len, seed=0):
  rs = np.random.RandomState(seed)
  return {"w_img": rs.randint(1, 2 ** 31, size=image_shape).astype(np.uint32),
          "w_txt": rs.randint(1, 2 ** 31, size=(max_len,)).astype(np.uint32)}


def np_keys(images_u8, ids, w):
  """uint8 `[N, H, W, 3]`, int `[N, L]` -> uint32 `[N]` keys."""
  u = np.asarray(images_u8).astype(np.uint32)
  h_img = np.sum(u * w["w_img"], axis=(1, 2, 3), dtype=np.uint32)
  h_txt = np.sum(np.asarray(ids).astype(np.uint32) * w["w_txt"], axis=1,
                 dtype=np.uint32)
  return (h_img * _IMG_MULT + h_txt).astype(np.uint32)


def np_image_keys(images_u8, w):
  u = np.asarray(images_u8).astype(np.uint32)
  return np.sum(u * w["w_img"], axis=(1, 2, 3), dtype=np.uint32)


def _jnp_u8(images):
  """Normalised float images (x / 127.5 - 1) -> their uint8 values."""
  return jnp.round((images + 1.0) * 127.5).astype(jnp.uint32)


def jnp_image_keys(images, p):
  return jnp.sum(_jnp_u8(images) * p["w_img"], axis=(1, 2, 3),
                 dtype=jnp.uint32)


def jnp_keys(images, ids, p):
  h_txt = jnp.sum(ids.astype(jnp.uint32) * p["w_txt"], axis=1,
                  dtype=jnp.uint32)
  return jnp_image_keys(images, p) * jnp.uint32(_IMG_MULT) + h_txt


def audio_hash_weights(samples, seed=1):
  rs = np.random.RandomState(seed)
  return rs.randint(1, 2 ** 31, size=(samples,)).astype(np.uint32)


def np_audio_keys(audio, w_aud):
  """float32 `[N, samples]` -> uint32 `[N]` keys of the waveforms' bits."""
  bits = np.ascontiguousarray(audio, np.float32).view(np.uint32)
  return np.sum(bits * w_aud, axis=1, dtype=np.uint32)


def jnp_audio_keys(audio, w_aud):
  bits = jax.lax.bitcast_convert_type(audio.astype(jnp.float32), jnp.uint32)
  return jnp.sum(bits * w_aud, axis=1, dtype=jnp.uint32)


def _row(keys, key, xp):
  i = xp.clip(xp.searchsorted(keys, key), 0, keys.shape[0] - 1)
  return xp.where(keys[i] == key, i, keys.shape[0])


def np_row(keys, key):
  return _row(keys, key, np)


def np_itm_pred(key):
  """The stub's ITM decision for a pair key: 1 (match) or 0."""
  return ((np.asarray(key, np.uint32) >> 7) % 1000 >= 500).astype(np.int64)


# -------------------------------------------------------------------- stub
class Stub:
  """Stands in for a model: `apply({'params': p}, images, texts, **kw)`.

  kind 'fusion' returns (out, None) like FusionModel (vqa_logits,
  itm_logits, img_emb, txt_emb, mlm_logits); 'dual' returns (img_emb,
  txt_emb, extras) like DualEncoder; 'captioner' returns (None, extras)
  like Captioner; 'av' is called with (videos, audio) and returns
  ({'event_logits'}, None) like AudioVisualModel, from w_aud, clip_keys
  (sorted keys of the waveforms) and 'event' [C + 1, classes]. Params: w_img, w_txt (hash weights), pair_keys (sorted
  uint32) with the tables indexed by pair row ('vqa' [K + 1, A], 'txt'
  [K + 1, D]), img_keys (sorted) with 'img' [I + 1, D] and 'mlm'
  [I + 1, L] (the token guessed at each [MASK] position), vocab V as the
  length of 'vocab'.
  """

  def __init__(self, kind, mask_id=data_lib.MASK):
    self.kind, self.mask_id = kind, mask_id
    self.config = {}

  def apply(self, variables, images, texts, **unused):
    p = variables["params"]
    if self.kind == "av":   # (videos, audio): a lookup by the waveform
      row = _row(p["clip_keys"], jnp_audio_keys(texts, p["w_aud"]), jnp)
      return {"event_logits": p["event"][row]}, None
    key = jnp_keys(images, texts, p)
    out = {}
    if "pair_keys" in p:
      row = _row(p["pair_keys"], key, jnp)
      if "vqa" in p:
        out["vqa_logits"] = p["vqa"][row]
      if "txt" in p:
        out["txt_emb"] = p["txt"][row]
    if "img_keys" in p:
      irow = _row(p["img_keys"], jnp_image_keys(images, p), jnp)
      out["img_emb"] = p["img"][irow]
      if "mlm" in p:
        pred = jnp.where(texts == self.mask_id, p["mlm"][irow], texts)
        out["mlm_logits"] = jax.nn.one_hot(pred, p["vocab"].shape[0])
    logit = ((key >> 7) % 1000).astype(jnp.float32) - 499.5
    out["itm_logits"] = jnp.stack([jnp.zeros_like(logit), logit], -1)
    if self.kind == "fusion":
      out["logit_scale"] = jnp.float32(10.0)
      return out, None
    extras = {"logit_scale": jnp.float32(10.0), "img_emb": out["img_emb"],
              "txt_emb": out["txt_emb"]}
    if self.kind == "dual":
      return out["img_emb"], out["txt_emb"], extras
    return None, extras


# ----------------------------------------------------------------- config
def config(task, data_dir, eval_splits, eval_batch_size, **extra):
  c = ml_collections.ConfigDict(dict(
      seed=0, batch_size=8, task=task,
      data=dict(name=DATASET, train_split="train",
                eval_splits=tuple(eval_splits),
                eval_batch_size=eval_batch_size, max_len=MAX_LEN,
                augment=False, data_dir=str(data_dir), tokenizer="",
                train_fraction=1.0, questions_per_image=0, history="full"),
      model=dict(text=dict(vocab_size=-1)),
      loss=dict(mask_prob=0.3),
      decode=dict(method="greedy", beam_size=1, alpha=0.0)))
  c.update_from_flattened_dict(extra)
  return c


def open_split(data_dir, split):
  """The split's DataInfo (records, tokenizer, answers) on one process."""
  _, info = data_lib.get_dataset(DATASET, split, "contrastive", batch_size=1,
                                 max_len=MAX_LEN, data_dir=str(data_dir),
                                 shard=(0, 1), shuffle=False)
  return info


def records(info):
  return [info.record(i) for i in range(info.num_records)]


def captions_of(rec):
  return [data_lib.as_text(c) for c in rec["caption"]]


# ----------------------------------------------------- tables and params
def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _pack(w, pair_map, img_map, **tables):
  """params from {key: row values} dicts: pair tables ('vqa', 'txt') are
  indexed by the sorted keys of pair_map, image tables ('img', 'mlm') by
  those of img_map; each table ends with its default row."""
  p = dict(w)
  if pair_map is not None:
    keys = np.array(sorted(pair_map), np.uint32)
    p["pair_keys"] = keys
    for name, (values, default) in tables.items():
      if name in ("vqa", "txt"):
        p[name] = np.stack([values[int(k)] for k in keys] + [default]
                           ).astype(np.float32)
  if img_map is not None:
    keys = np.array(sorted(img_map), np.uint32)
    p["img_keys"] = keys
    for name, (values, default) in tables.items():
      if name in ("img", "mlm"):
        p[name] = np.stack([values[int(k)] for k in keys] + [default])
        p[name] = p[name].astype(np.float32 if name == "img" else np.int32)
  return p


def vqa_params(w, items, num_answers, seed=0):
  """items: (key, answer) per question. Each key gets distinct integer scores
  (a permutation of 0..A-1); the answer is ranked first for ~60 % of keys."""
  rs = np.random.RandomState(seed)
  table = {}
  for key, answer in items:
    if int(key) in table:
      continue
    scores = rs.permutation(num_answers).astype(np.float32)
    if rs.rand() < 0.6:
      top = int(np.argmax(scores))
      scores[[top, answer]] = scores[[answer, top]]
    table[int(key)] = scores
  default = np.arange(num_answers, dtype=np.float32)
  return _pack(w, table, None, vqa=(table, default))


def embedding_params(w, image_u8, pair_keys_of_image, extra_text_keys=(),
                     class_of_image=None, class_text_keys=None, vocab=0,
                     mlm_guess=None, dim=8, seed=0):
  """Image embeddings and pair text embeddings with a known structure:
  a pair's text embedding is its image's plus noise of a per-pair size, so
  some captions retrieve their image first and some do not."""
  rs = np.random.RandomState(seed)
  img, txt = {}, {}
  img_keys = np_image_keys(image_u8, w)
  for i, ik in enumerate(img_keys):
    v = rs.randn(dim)
    if class_of_image is not None:
      v = v + 1.5 * class_dirs(dim, class_of_image.max() + 1)[
          class_of_image[i]] * (rs.rand() < 0.7)
    img[int(ik)] = _unit(v)
    for pk in pair_keys_of_image[i]:
      txt[int(pk)] = _unit(img[int(ik)] + rs.choice([0.3, 1.0, 3.0]) *
                           rs.randn(dim))
  for k in extra_text_keys:
    txt[int(k)] = _unit(rs.randn(dim))
  if class_text_keys is not None:
    dirs = class_dirs(dim, len(class_text_keys))
    for c, keys in enumerate(class_text_keys):
      for k in keys:
        txt[int(k)] = _unit(dirs[c] + 0.5 * rs.randn(dim))
  tables = {"img": (img, np.zeros(dim)), "txt": (txt, np.zeros(dim))}
  if mlm_guess is not None:
    tables["mlm"] = ({int(k): mlm_guess[i] for i, k in enumerate(img_keys)},
                     np.zeros(MAX_LEN, np.int64))
  p = _pack(w, txt, img, **tables)
  if vocab:
    p["vocab"] = np.zeros(vocab, np.int8)
  return p


def class_dirs(dim, n):
  return _unit(np.random.RandomState(7).randn(n, dim))


def lookup(p, name, key):
  keys = {"vqa": "pair_keys", "txt": "pair_keys",
          "event": "clip_keys"}.get(name, "img_keys")
  keys = p[keys]
  return np.asarray(p[name])[np_row(keys, np.asarray(key, np.uint32))]


# ------------------------------------------------------ numpy references
def ranks_no_ties(scores, positive):
  """0-based rank of each row's best positive, by sorting; asserts that
  no score ties the best positive (so the rank is unambiguous)."""
  order = np.argsort(-scores, axis=1, kind="stable")
  ranks = []
  for r in range(scores.shape[0]):
    pos_sorted = positive[r][order[r]]
    first = int(np.argmax(pos_sorted))
    best = scores[r][order[r][first]]
    assert np.sum(scores[r] == best) == 1, "tied scores make ranks ambiguous"
    ranks.append(first)
  return np.array(ranks)


def recall_reference(img_emb, txt_emb, txt_image, ks=(1, 5, 10)):
  sim = img_emb.astype(np.float64) @ txt_emb.astype(np.float64).T
  positive = txt_image[None, :] == np.arange(len(img_emb))[:, None]
  i2t = ranks_no_ties(sim, positive)
  t2i = ranks_no_ties(sim.T, positive.T)
  out = {f"i2t_r{k}": float(np.mean(i2t < k)) for k in ks}
  out.update({f"t2i_r{k}": float(np.mean(t2i < k)) for k in ks})
  return out


def dialogue_history(tok, answers_vocab, questions, answers, d, t, max_len):
  """bos q1 sep a1 sep ... sep q_t eos (left-truncated), as the view
  documents it."""
  seq = []
  for turn in range(t):
    seq += tok.encode(data_lib.as_text(questions[d, turn])) + [data_lib.SEP]
    seq += tok.encode(answers_vocab[int(answers[d, turn])]) + [data_lib.SEP]
  seq += tok.encode(data_lib.as_text(questions[d, t]))
  ids, _ = tok_lib.pad_sequences([seq], max_len, truncate="left")
  return ids[0]


def batches(n, batch):
  """The eval order: examples 0..n-1 in batches of `batch` (global)."""
  return [list(range(s, min(n, s + batch))) for s in range(0, n, batch)]
