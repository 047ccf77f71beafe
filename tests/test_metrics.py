"""mmtx.metrics against hand-computed cases, numpy and pycocoevalcap."""
import math

import numpy as np
import pytest

from mmtx import metrics


# ----------------------------------------------------------------------------
# VQA
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("raw, want", [
    ("Two", "2"),
    ("the dog.", "dog"),
    ("A man's hat", "man's hat"),
    ("dont", "don't"),
    ("couldnt've", "couldn't've"),
    ("yes!", "yes"),
    ("3.5", "3.5"),
    ("1,000", "1000"),                # digit,digit: punctuation deleted
    ("red-white", "red white"),      # no space around '-': becomes a space
    ("t - shirt", "t shirt"),        # '-' next to a space: deleted
    ("(left) side", "left side"),
    ("  None\tof them\n", "0 of them"),
    ("shell", "shell"),              # an ordinary word, not "she'll"
    ("10:30", "10:30"),              # ':' is not in the punctuation list
])
def test_vqa_normalize_answer(raw, want):
  assert metrics.vqa_normalize_answer(raw) == want


def test_vqa_accuracy_hand_cases():
  def humans(n_yes):
    return ["yes"] * n_yes + ["no"] * (10 - n_yes)
  # k matching humans: a matching annotator left out leaves k - 1 matches,
  # a non-matching one leaves k; each scored min(1, matches / 3).
  cases = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 10: 1.0}
  for n_yes, want in cases.items():
    assert metrics.vqa_question_accuracy("yes", humans(n_yes)) == (
        pytest.approx(want))
  # Normalisation applies to both sides.
  answers = ["2", "two", "Two.", "3", "3", "3", "3", "3", "3", "3"]
  assert metrics.vqa_question_accuracy("two", answers) == pytest.approx(0.9)
  assert metrics.vqa_question_accuracy("2", ["2"]) == 1.0
  assert metrics.vqa_accuracy(["yes", "no"], [humans(2), humans(10)]) == (
      pytest.approx(0.3))
  assert metrics.vqa_accuracy({7: "yes", 9: "no"},
                              {9: humans(10), 7: humans(1)}) == (
      pytest.approx(0.15))


def test_vqa_accuracy_rejects_misaligned_inputs():
  with pytest.raises(ValueError, match="answers"):
    metrics.vqa_accuracy(["a", "b"], [["a"] * 10])
  with pytest.raises(ValueError, match="answers"):
    metrics.vqa_accuracy({1: "a"}, {2: ["a"] * 10})
  with pytest.raises(ValueError, match="answers"):
    metrics.vqa_question_accuracy("a", "a")


# ----------------------------------------------------------------------------
# Captioning
# ----------------------------------------------------------------------------
CORPUS_GTS = {
    1: ["a man riding a horse on a beach", "a person rides a brown horse",
        "a man on a horse near the ocean", "someone riding a horse by the sea"],
    2: ["two dogs playing in the snow", "a pair of dogs run through snow",
        "dogs playing outside in the winter snow"],
    3: ["a plate of food with broccoli and rice",
        "a white plate topped with rice and vegetables",
        "broccoli and rice on a plate", "a dinner plate with food on it",
        "a meal of rice broccoli and chicken"],
    "img4": ["a red bus driving down a city street"],
    5: ["a cat sitting on a laptop keyboard", "a cat lies on a computer",
        "a kitten on top of a laptop"],
    6: ["a man holding a surfboard on the beach",
        "a surfer carrying his board to the water",
        "a man walks on the beach with a surfboard"],
}
CORPUS_RES = {
    1: ["a man riding a horse on a beach"],                   # exact match
    2: ["dogs dogs dogs dogs in the snow"],                   # clipping
    3: ["a plate"],                                           # very short
    "img4": ["a bus on a street in the city at night with people"],  # long
    5: ["a cat on a laptop"],
    6: ["zebra giraffe elephant"],                            # nothing matches
}


def random_corpus(seed, n_images=25):
  rng = np.random.default_rng(seed)
  vocab = [f"w{i}" for i in range(6)]
  def sentence(lo, hi):
    return " ".join(rng.choice(vocab, size=rng.integers(lo, hi)))
  gts = {i: [sentence(3, 12) for _ in range(rng.integers(1, 6))]
         for i in range(n_images)}
  res = {i: [sentence(1, 14)] for i in range(n_images)}
  return gts, res


@pytest.mark.parametrize("corpus", ["hand", "random"])
def test_caption_scores_match_pycocoevalcap(corpus):
  bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
  cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
  gts, res = (CORPUS_GTS, CORPUS_RES) if corpus == "hand" else random_corpus(0)
  want_bleu, want_bleu_img = bleu_mod.Bleu(4).compute_score(gts, res,
                                                            verbose=0)
  want_cider, want_cider_img = cider_mod.Cider().compute_score(gts, res)
  got = metrics.caption_scores(gts, res)
  for k in range(4):
    assert got[f"bleu_{k + 1}"] == pytest.approx(want_bleu[k], abs=1e-6)
  assert got["cider"] == pytest.approx(want_cider, abs=1e-6)
  _, bleu_img = metrics.bleu(gts, res)
  _, cider_img = metrics.cider_d(gts, res)
  for k in range(4):
    np.testing.assert_allclose([bleu_img[i][k] for i in gts],
                               want_bleu_img[k], atol=1e-6)
  np.testing.assert_allclose([cider_img[i] for i in gts], want_cider_img,
                             atol=1e-6)


def test_caption_scores_hand_cases():
  # Clipped unigram precision: "the" counts once, "cat" once -> 2 / 4; equal
  # lengths, no brevity penalty.
  scores, _ = metrics.bleu({0: ["the cat is here"]}, {0: ["the cat the cat"]})
  assert scores[0] == pytest.approx(0.5, abs=1e-8)
  # Identical caption -> BLEU 1 (up to the 1e-9 smoothing).
  scores, _ = metrics.bleu({0: ["a b c d e"]}, {0: "a b c d e"})
  np.testing.assert_allclose(scores, 1.0, atol=1e-8)
  # Brevity: 2 words against a closest reference of 4 -> exp(1 - 4/2).
  scores, _ = metrics.bleu({0: ["a b c d", "a b c d e f g h"]}, {0: ["a b"]})
  assert scores[0] == pytest.approx(math.exp(-1.0), abs=1e-8)
  # CIDEr-D: one image -> every n-gram has idf log(1/1) = 0 -> score 0.
  assert metrics.cider_d({0: ["a b c"]}, {0: ["a b c"]})[0] == 0.0
  # Two images, disjoint vocabularies, candidates equal their reference:
  # every weight is log 2, cosine 1 per order, no length penalty -> 10.
  gts = {0: ["a b c d"], 1: ["e f g h"]}
  assert metrics.cider_d(gts, {0: ["a b c d"], 1: ["e f g h"]})[0] == (
      pytest.approx(10.0))


def test_caption_tokenize_option():
  gts = {0: ["A Man, riding a horse."], 1: ["Two dogs!"]}
  res = {0: ["a man riding a HORSE"], 1: ["two dogs"]}
  tokenised = metrics.caption_scores(
      {0: ["a man riding a horse"], 1: ["two dogs"]}, res, tokenize=True)
  assert metrics.caption_scores(gts, res, tokenize=True) == tokenised
  assert metrics.simple_tokenize("A dog's ball, (red)!") == "a dog's ball red"
  assert metrics.caption_scores(gts, res)["bleu_1"] < tokenised["bleu_1"]


def test_caption_scores_reject_bad_inputs():
  with pytest.raises(ValueError, match="res"):
    metrics.caption_scores({0: ["a"], 1: ["b"]}, {0: ["a"]})
  with pytest.raises(ValueError, match="res"):
    metrics.caption_scores({0: ["a"]}, {0: ["a", "b"]})
  with pytest.raises(ValueError, match="gts"):
    metrics.caption_scores({0: []}, {0: ["a"]})


# ----------------------------------------------------------------------------
# Retrieval, MRR, zero-shot
# ----------------------------------------------------------------------------
def test_retrieval_recall_hand_case():
  sim = np.array([[0.1, 0.9, 0.8, 0.2],
                  [0.7, 0.3, 0.5, 0.1]])
  out = metrics.retrieval_recall(sim, [0, 0, 1, 1], ks=(1, 2))
  # Image 0: caption 1 ranks first. Image 1: best caption (0.5) behind 0.7.
  assert out["i2t_r1"] == 0.5 and out["i2t_r2"] == 1.0
  # Texts: only text 1 puts its image first.
  assert out["t2i_r1"] == 0.25 and out["t2i_r2"] == 1.0
  # A constant scorer earns nothing at R@1 (ties count against).
  out = metrics.retrieval_recall(np.zeros((2, 4)), [0, 0, 1, 1], ks=(1,))
  assert out == {"i2t_r1": 0.0, "t2i_r1": 0.0}


def test_retrieval_recall_matches_argsort_reference():
  rng = np.random.default_rng(1)
  n_img, per = 40, 5
  txt_to_img = np.repeat(np.arange(n_img), per)
  rng.shuffle(txt_to_img)
  sim = rng.normal(size=(n_img, n_img * per))
  sim[txt_to_img, np.arange(n_img * per)] += 1.5
  want = {}
  for k in (1, 5, 10):
    hits = [np.any(txt_to_img[np.argsort(-sim[i])[:k]] == i)
            for i in range(n_img)]
    want[f"i2t_r{k}"] = np.mean(hits)
  for k in (1, 5, 10):
    hits = [txt_to_img[t] in np.argsort(-sim[:, t])[:k]
            for t in range(n_img * per)]
    want[f"t2i_r{k}"] = np.mean(hits)
  got = metrics.retrieval_recall(sim.astype(np.float32), txt_to_img)
  assert got == pytest.approx(want)


def test_retrieval_recall_rejects_bad_inputs():
  with pytest.raises(ValueError, match="txt_to_img"):
    metrics.retrieval_recall(np.zeros((2, 3)), [0, 0])
  with pytest.raises(ValueError, match="txt_to_img"):
    metrics.retrieval_recall(np.zeros((2, 3)), [0, 0, 0])   # image 1: none
  with pytest.raises(ValueError, match="sim"):
    metrics.retrieval_recall(np.zeros(3), [0, 0, 0])


def test_mrr_hand_cases():
  scores = [[0.1, 0.5, 0.3], [0.9, 0.2, 0.1]]
  assert metrics.mrr(scores, [2, 0]) == pytest.approx((1 / 2 + 1) / 2)
  assert metrics.mrr([[1.0, 1.0, 1.0]], [0]) == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="correct"):
    metrics.mrr(scores, [0, 3])


def test_zero_shot_accuracy_hand_case():
  class_emb = np.array([
      [[1.0, 0.0], [2.0, 0.0]],      # class 0 -> (1, 0)
      [[0.0, 2.0], [0.0, 1.0]],      # class 1 -> (0, 1)
      [[3.0, 3.0], [-10.0, 0.0]],    # class 2: prompts normalised first
  ])
  # Normalised prompts average to (-0.293, 0.707) / 2 -> (-0.383, 0.924);
  # without per-prompt normalisation class 2 would be (-0.919, 0.394).
  np.testing.assert_allclose(metrics.zero_shot_classifier(class_emb)[2],
                             [-0.38268343, 0.92387953], rtol=1e-6)
  img_emb = np.array([[1.0, 0.1],     # -> class 0 first
                      [-0.3, 1.0],    # -> class 2 (1.04) ahead of class 1 (1)
                      [0.1, 1.0]])    # -> class 1 (1) ahead of class 2 (0.89)
  out = metrics.zero_shot_accuracy(img_emb, class_emb, [0, 2, 2], ks=(1, 2))
  assert out == {"top1": pytest.approx(2 / 3), "top2": 1.0}


def test_zero_shot_accuracy_matches_numpy_reference():
  rng = np.random.default_rng(2)
  class_emb = rng.normal(size=(20, 4, 8))
  labels = rng.integers(0, 20, size=60)
  p = class_emb / np.linalg.norm(class_emb, axis=-1, keepdims=True)
  w = p.mean(1)
  w /= np.linalg.norm(w, axis=-1, keepdims=True)
  img_emb = w[labels] + rng.normal(size=(60, 8)) * 0.4
  order = np.argsort(-(img_emb @ w.T), axis=1)
  want = {f"top{k}": np.mean([labels[i] in order[i, :k] for i in range(60)])
          for k in (1, 5)}
  assert metrics.zero_shot_accuracy(img_emb, class_emb, labels) == (
      pytest.approx(want))
  with pytest.raises(ValueError, match="labels"):
    metrics.zero_shot_accuracy(img_emb, class_emb, labels[:5])
  with pytest.raises(ValueError, match="class_emb"):
    metrics.zero_shot_accuracy(img_emb, class_emb[..., :4], labels)
