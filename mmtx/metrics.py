"""Evaluation metrics: VQA accuracy, BLEU/CIDEr-D, recall@K, MRR, zero-shot,
per-class average precision.

Host-side numpy; results are fractions in [0, 1] (CIDEr-D is unbounded, x10 as
published). No model is imported here.

Ranking metrics count ties against the positive: its rank is the number of
other candidates scoring at least as high, so a constant scorer gets no credit.
"""
from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from typing import Callable, Dict, Mapping, Sequence, Union

import numpy as np

# ----------------------------------------------------------------------------
# VQA accuracy (Antol et al. 2015, Sec. 2; the VQA evaluation script)
# ----------------------------------------------------------------------------
_VQA_PUNCT = ";/[]\"{}()=+\\_-><@`,?!"
_DIGIT_COMMA = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")   # a period not followed by a digit
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2",
                 "three": "3", "four": "4", "five": "5", "six": "6",
                 "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Canonical contractions; an answer that spells one with some apostrophes
# missing ("dont", "couldnt've") is mapped back to it.
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't"
    " hadn't hadn't've hasn't haven't he'd he'd've he's how'd how'll how's"
    " i'd've i'm i've isn't it'd it'd've it'll ma'am mightn't mightn't've"
    " might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't"
    " she'd've she's should've shouldn't shouldn't've somebody'd somebody'd've"
    " somebody'll somebody's someone'd someone'd've someone'll someone's"
    " something'd something'd've something'll that's there'd there'd've"
    " there're there's they'd they'd've they'll they're they've 'twas wasn't"
    " we'd've we've weren't what'll what're what's what've when's where'd"
    " where's where've who'd who'd've who'll who's who've why'll why're why's"
    " won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd"
    " you'd've you'll you're you've").split()
# Dropping apostrophes from these would turn ordinary words into contractions.
_REAL_WORDS = {"id", "ill", "its", "lets", "shed", "shell", "well", "were",
               "wed", "hell"}


def _contraction_table() -> Dict[str, str]:
  table = {}
  for word in _CONTRACTIONS:
    parts = word.split("'")
    for keep in itertools.product((True, False), repeat=len(parts) - 1):
      variant = parts[0] + "".join(("'" if k else "") + p
                                   for k, p in zip(keep, parts[1:]))
      if variant not in _REAL_WORDS:
        table[variant] = word
  return table


_CONTRACTION_TABLE = _contraction_table()


def vqa_normalize_answer(answer: str) -> str:
  """Normalises an answer as the official VQA evaluation does.

  Whitespace: newlines/tabs become spaces, ends stripped. Punctuation
  `;/[]"{}()=+\\_-><@`,?!`: removed where it touches a space or when the
  answer has a digit-comma-digit ("1,000"), else replaced by a space; a
  period not followed by a digit is removed. Words: lower-cased, number
  words -> digits ("two" -> "2", "none" -> "0"), articles a/an/the dropped,
  contractions missing apostrophes restored ("dont" -> "don't").
  """
  text = answer.replace("\n", " ").replace("\t", " ").strip()
  drop_all = _DIGIT_COMMA.search(text) is not None
  out = text
  for p in _VQA_PUNCT:
    touches_space = (p + " ") in text or (" " + p) in text
    out = out.replace(p, "" if drop_all or touches_space else " ")
  out = _PERIOD.sub("", out)
  words = []
  for word in out.lower().split():
    word = _NUMBER_WORDS.get(word, word)
    if word not in _ARTICLES:
      words.append(_CONTRACTION_TABLE.get(word, word))
  return " ".join(words)


def vqa_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """Accuracy of one answer against the human answers (usually 10).

  For each human answer k: min(1, #other humans who gave the prediction / 3);
  the mean over k is the average over the 10-choose-9 annotator subsets.
  Prediction and answers are both normalised (`vqa_normalize_answer`); the
  official script skips this when all humans agree, which changes the score
  only for un-normalised predictions. With one answer: exact match.
  """
  if isinstance(answers, str) or not answers:
    raise ValueError("answers: expected a non-empty list of answer strings,"
                     f" got {answers!r}.")
  pred = vqa_normalize_answer(prediction)
  matches = [vqa_normalize_answer(a) == pred for a in answers]
  if len(matches) == 1:
    return float(matches[0])
  total = sum(matches)
  return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(matches)


def vqa_accuracy(predictions: Union[Sequence[str], Mapping[object, str]],
                 answers: Union[Sequence[Sequence[str]],
                                Mapping[object, Sequence[str]]]) -> float:
  """Mean VQA accuracy over questions, in [0, 1] (the official x100).

  Args:
    predictions: one answer string per question (list, or dict qid -> str).
    answers: the human answers per question (list of lists, or dict qid ->
      list), aligned with `predictions`.
  """
  if isinstance(predictions, Mapping) != isinstance(answers, Mapping):
    raise ValueError("answers: pass both predictions and answers as dicts"
                     " keyed by question id, or both as aligned lists.")
  if isinstance(predictions, Mapping):
    if set(predictions) != set(answers):
      raise ValueError(f"answers: question ids differ from predictions'"
                       f" ({len(answers)} vs {len(predictions)} ids).")
    keys = list(predictions)
    predictions = [predictions[k] for k in keys]
    answers = [answers[k] for k in keys]
  if len(predictions) != len(answers):
    raise ValueError(f"answers: expected one list per prediction"
                     f" ({len(predictions)}), got {len(answers)}.")
  if not predictions:
    raise ValueError("predictions: expected at least one question.")
  return float(np.mean([vqa_question_accuracy(p, a)
                        for p, a in zip(predictions, answers)]))


# ----------------------------------------------------------------------------
# Captioning: BLEU (Papineni et al. 2002) and CIDEr-D (Vedantam et al. 2015)
# ----------------------------------------------------------------------------
_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9   # pycocoevalcap's smoothing constants


def simple_tokenize(text: str) -> str:
  """Lower-cases and keeps word tokens (letters/digits, inner apostrophes).

  A light stand-in for the PTB tokenizer that the COCO evaluation uses.
  """
  return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower()))


def _ngram_counts(words: Sequence[str], n: int) -> Counter:
  return Counter(tuple(words[i:i + k]) for k in range(1, n + 1)
                 for i in range(len(words) - k + 1))


def _caption_inputs(gts, res, tokenize):
  if not isinstance(gts, Mapping) or not isinstance(res, Mapping):
    raise ValueError("gts/res: expected dicts image_id -> list of strings.")
  if set(gts) != set(res):
    raise ValueError(f"res: image ids must equal those of gts ({len(res)} vs"
                     f" {len(gts)} ids; missing: "
                     f"{sorted(map(str, set(gts) ^ set(res)))[:5]}).")
  if not gts:
    raise ValueError("gts: expected at least one image.")
  if tokenize is True:
    tok = simple_tokenize
  elif tokenize is False or tokenize is None:
    tok = lambda text: text  # noqa: E731
  elif callable(tokenize):
    tok = tokenize
  else:
    raise ValueError(f"tokenize: expected True, False or a function str ->"
                     f" str, got {tokenize!r}.")
  out_refs, out_hyp = {}, {}
  for key in gts:
    refs, hyp = gts[key], res[key]
    if isinstance(hyp, str):
      hyp = [hyp]
    if isinstance(refs, str) or len(refs) < 1:
      raise ValueError(f"gts[{key!r}]: expected a non-empty list of"
                       f" reference strings, got {refs!r}.")
    if len(hyp) != 1:
      raise ValueError(f"res[{key!r}]: expected exactly one candidate, got"
                       f" {len(hyp)}.")
    out_refs[key] = [tok(r).split() for r in refs]
    out_hyp[key] = tok(hyp[0]).split()
  return out_refs, out_hyp


def _bleu_from_stats(correct, guess, test_len, ref_len):
  scores, prod = [], 1.0
  for k, (c, g) in enumerate(zip(correct, guess)):
    prod *= (c + _BLEU_TINY) / (g + _BLEU_SMALL)
    scores.append(prod ** (1.0 / (k + 1)))
  ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
  if ratio < 1:
    scores = [s * math.exp(1.0 - 1.0 / ratio) for s in scores]
  return scores


def bleu(gts, res, n: int = 4, tokenize=False):
  """Corpus and per-image BLEU-1..n as the COCO caption evaluation.

  Clipped n-gram precisions pooled over the corpus, geometric mean of orders
  1..k for BLEU-k, brevity penalty exp(1 - r/c) with r the sum over images of
  the reference length closest to the candidate's (ties: the shorter).

  Returns:
    `(corpus, per_image)`: a list of n floats, and a dict image_id -> list.
  """
  refs, hyps = _caption_inputs(gts, res, tokenize)
  correct, guess = np.zeros(n), np.zeros(n)
  test_total = ref_total = 0
  per_image = {}
  for key, hyp in hyps.items():
    max_ref = Counter()
    for ref in refs[key]:
      max_ref |= _ngram_counts(ref, n)   # | keeps the max count
    counts = _ngram_counts(hyp, n)
    c = np.zeros(n)
    for gram, count in counts.items():
      c[len(gram) - 1] += min(count, max_ref[gram])
    g = np.array([max(0, len(hyp) - k) for k in range(n)], dtype=float)
    ref_len = min((abs(len(r) - len(hyp)), len(r)) for r in refs[key])[1]
    per_image[key] = _bleu_from_stats(c, g, len(hyp), ref_len)
    correct, guess = correct + c, guess + g
    test_total, ref_total = test_total + len(hyp), ref_total + ref_len
  return _bleu_from_stats(correct, guess, test_total, ref_total), per_image


def cider_d(gts, res, n: int = 4, sigma: float = 6.0, tokenize=False):
  """CIDEr-D (Vedantam et al. 2015, Eq. 5-6) as the COCO caption evaluation.

  n-gram tf-idf vectors, the document frequency counted over the images whose
  references contain the n-gram (this corpus only); per order, the clipped
  similarity sum(min(h, r) * r) / (|h| |r|) times a Gaussian length penalty
  exp(-(l_h - l_r)^2 / (2 sigma^2)), where a length is a bigram count (the
  reference code's convention); averaged over orders and references, x10.

  Returns:
    `(corpus, per_image)`: the mean over images, and a dict image_id -> float.
  """
  refs, hyps = _caption_inputs(gts, res, tokenize)
  ref_counts = {k: [_ngram_counts(r, n) for r in rs] for k, rs in refs.items()}
  doc_freq = Counter()
  for counts in ref_counts.values():
    doc_freq.update(set().union(*counts))
  log_docs = math.log(len(refs))

  def tfidf(counts):
    vec = [dict() for _ in range(n)]
    for gram, tf in counts.items():
      vec[len(gram) - 1][gram] = tf * (
          log_docs - math.log(max(1.0, doc_freq[gram])))
    norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, norms, length

  per_image = {}
  for key, hyp in hyps.items():
    h_vec, h_norm, h_len = tfidf(_ngram_counts(hyp, n))
    total = 0.0
    for counts in ref_counts[key]:
      r_vec, r_norm, r_len = tfidf(counts)
      penalty = math.exp(-((h_len - r_len) ** 2) / (2 * sigma ** 2))
      sims = []
      for k in range(n):
        dot = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0)
                  for g, w in h_vec[k].items())
        if h_norm[k] and r_norm[k]:
          dot /= h_norm[k] * r_norm[k]
        sims.append(dot * penalty)
      total += sum(sims) / n
    per_image[key] = 10.0 * total / len(ref_counts[key])
  return float(np.mean(list(per_image.values()))), per_image


def caption_scores(gts: Mapping[object, Sequence[str]],
                   res: Mapping[object, Union[str, Sequence[str]]],
                   tokenize: Union[bool, Callable[[str], str]] = False
                   ) -> Dict[str, float]:
  """BLEU-1..4 and CIDEr-D of a caption corpus (= pycocoevalcap Bleu, Cider).

  Args:
    gts: image_id -> list of reference captions.
    res: image_id -> [candidate caption] (or the caption string).
    tokenize: False when captions are already tokenised (lower-case,
      space-separated, as after the PTB tokenizer); True for
      `simple_tokenize`; or a function str -> str.
  Returns:
    `{'bleu_1', 'bleu_2', 'bleu_3', 'bleu_4', 'cider'}`.
  """
  scores, _ = bleu(gts, res, 4, tokenize)
  out = {f"bleu_{k + 1}": float(s) for k, s in enumerate(scores)}
  out["cider"] = cider_d(gts, res, tokenize=tokenize)[0]
  return out


# ----------------------------------------------------------------------------
# Ranking: retrieval recall@K, MRR, zero-shot classification
# ----------------------------------------------------------------------------
def _as_matrix(x, name: str, doc: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name}: expected shape {doc}, got {x.shape}.")
  return x.astype(np.promote_types(x.dtype, np.float32))


def _positive_ranks(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """0-based rank of each row's best positive; ties count against it.

  scores `[rows, cols]`, positive `[rows, cols]` bool with >= 1 per row.
  """
  best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
  return np.sum((scores >= best) & ~positive, axis=1)


def retrieval_recall(sim, txt_to_img, ks: Sequence[int] = (1, 5, 10)
                     ) -> Dict[str, float]:
  """Recall@K for image->text and text->image retrieval.

  Args:
    sim: `[n_images, n_texts]` similarity scores.
    txt_to_img: `[n_texts]` int, the image each text describes (several texts
      per image). Image->text is a hit when any of the image's texts is in
      the top K; text->image when its image is in the top K.
    ks: the K values.
  Returns:
    `{'i2t_r1', ..., 't2i_r1', ...}` fractions in [0, 1].
  """
  sim = _as_matrix(sim, "sim", "[n_images, n_texts]")
  n_img, n_txt = sim.shape
  txt_to_img = np.asarray(txt_to_img)
  if txt_to_img.shape != (n_txt,):
    raise ValueError(f"txt_to_img: expected shape [n_texts] = {(n_txt,)},"
                     f" got {txt_to_img.shape}.")
  if n_txt and (txt_to_img.min() < 0 or txt_to_img.max() >= n_img):
    raise ValueError(f"txt_to_img: image indices must lie in [0, {n_img}).")
  positive = txt_to_img[None, :] == np.arange(n_img)[:, None]
  if not positive.any(axis=1).all():
    missing = np.flatnonzero(~positive.any(axis=1))[:5].tolist()
    raise ValueError(f"txt_to_img: every image needs at least one text;"
                     f" images {missing} have none.")
  i2t = _positive_ranks(sim, positive)
  t2i = _positive_ranks(sim.T, positive.T)
  out = {}
  for k in ks:
    out[f"i2t_r{k}"] = float(np.mean(i2t < k))
  for k in ks:
    out[f"t2i_r{k}"] = float(np.mean(t2i < k))
  return out


def mrr(scores, correct) -> float:
  """Mean reciprocal rank of the correct answer (VisDial, Das et al. 2017).

  Args:
    scores: `[n, candidates]` scores of candidate answers.
    correct: `[n]` int index of the correct candidate.
  """
  scores = _as_matrix(scores, "scores", "[n, candidates]")
  correct = np.asarray(correct)
  if correct.shape != scores.shape[:1]:
    raise ValueError(f"correct: expected shape [n] = {scores.shape[:1]}, got"
                     f" {correct.shape}.")
  if correct.size and (correct.min() < 0 or correct.max() >= scores.shape[1]):
    raise ValueError(f"correct: indices must lie in [0, {scores.shape[1]}).")
  positive = np.arange(scores.shape[1])[None, :] == correct[:, None]
  return float(np.mean(1.0 / (1.0 + _positive_ranks(scores, positive))))


def _l2_normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_classifier(class_emb) -> np.ndarray:
  """`[classes, prompts, dim]` (or `[classes, dim]`) -> `[classes, dim]`.

  CLIP's prompt ensembling (Radford et al. 2021, Sec. 3.1.4): normalise each
  prompt embedding, average over prompts, renormalise.
  """
  class_emb = np.asarray(class_emb)
  if class_emb.ndim == 2:
    class_emb = class_emb[:, None, :]
  if class_emb.ndim != 3:
    raise ValueError(f"class_emb: expected shape [classes, prompts, dim], got"
                     f" {class_emb.shape}.")
  class_emb = class_emb.astype(np.promote_types(class_emb.dtype, np.float32))
  return _l2_normalize(_l2_normalize(class_emb).mean(axis=1))


def zero_shot_accuracy(img_emb, class_emb, labels,
                       ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
  """Zero-shot top-K accuracy from text prompt embeddings.

  Args:
    img_emb: `[n, dim]` image embeddings.
    class_emb: `[classes, prompts, dim]` prompt embeddings (see
      `zero_shot_classifier`), or `[classes, dim]`.
    labels: `[n]` int class labels.
    ks: the K values.
  Returns:
    `{'top1': ..., 'top5': ...}` fractions in [0, 1].
  """
  img_emb = _as_matrix(img_emb, "img_emb", "[n, dim]")
  weights = zero_shot_classifier(class_emb)
  if weights.shape[1] != img_emb.shape[1]:
    raise ValueError(f"class_emb: embedding dim {weights.shape[1]} differs"
                     f" from img_emb's {img_emb.shape[1]}.")
  labels = np.asarray(labels)
  if labels.shape != img_emb.shape[:1]:
    raise ValueError(f"labels: expected shape [n] = {img_emb.shape[:1]}, got"
                     f" {labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() >= weights.shape[0]):
    raise ValueError(f"labels: class indices must lie in"
                     f" [0, {weights.shape[0]}).")
  logits = _l2_normalize(img_emb) @ weights.T
  positive = np.arange(weights.shape[0])[None, :] == labels[:, None]
  ranks = _positive_ranks(logits, positive)
  return {f"top{k}": float(np.mean(ranks < k)) for k in ks}


# ----------------------------------------------------------------------------
# Multi-label classification (AudioSet's metric, Gemmeke et al. 2017)
# ----------------------------------------------------------------------------
def average_precisions(scores, labels) -> np.ndarray:
  """Per-class average precision, `[classes]` float64 (NaN for a class with
  no positive).

  Args:
    scores: `[n, classes]` scores (higher = more likely).
    labels: `[n, classes]` 0/1 (or bool) targets.
  AP = sum over the distinct score thresholds t of (R(t) - R(t_prev)) * P(t),
  with precision P and recall R of the rows scoring >= t (no interpolation;
  equal scores are one threshold).
  """
  scores = _as_matrix(scores, "scores", "[n, classes]").astype(np.float64)
  labels = np.asarray(labels)
  if labels.shape != scores.shape:
    raise ValueError(f"labels: expected shape [n, classes] = {scores.shape}, "
                     f"got {labels.shape}.")
  labels = labels.astype(bool)
  out = np.full(scores.shape[1], np.nan)
  for c in range(scores.shape[1]):
    positives = labels[:, c].sum()
    if not positives:
      continue
    order = np.argsort(-scores[:, c], kind="stable")
    s, y = scores[order, c], labels[order, c]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each tie
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    out[c] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
  return out

