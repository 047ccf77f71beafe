"""The caption task's CoCa loss (Yu et al. 2022, Eq. 4) against open_clip's
CoCaLoss: CaptionTask.loss_fn on a stub captioner with fixed outputs (next-
token logits, embeddings, logit scale) equals open_clip's contrastive +
caption losses, weighted by config.loss.lambda_con / lambda_cap."""
import ml_collections
import numpy as np
import pytest

from mmtx.tasks.caption import CaptionTask


class _FixedCaptioner:
  """`apply(...)` -> the given (logits [B, L, V], extras)."""

  def __init__(self, logits, extras):
    self.logits, self.extras = logits, extras

  def apply(self, variables, images, texts, **unused):
    return self.logits, self.extras


@pytest.mark.parametrize("lambda_con,lambda_cap", [(1.0, 2.0), (0.5, 1.0)])
def test_caption_task_loss_equals_open_clip_coca_loss(lambda_con, lambda_cap):
  torch = pytest.importorskip("torch")
  oc_loss = pytest.importorskip("open_clip.loss")
  rs = np.random.RandomState(0)
  b, length, vocab, dim = 4, 7, 11, 8
  lengths = [7, 5, 3, 6]              # padding (id 0) after each caption
  texts = np.zeros((b, length), np.int32)
  for i, n in enumerate(lengths):
    texts[i, :n] = rs.randint(1, vocab, n)
  logits = rs.randn(b, length, vocab).astype(np.float32)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  img = unit(rs.randn(b, dim)).astype(np.float32)
  txt = unit(rs.randn(b, dim)).astype(np.float32)
  scale = np.float32(7.5)
  config = ml_collections.ConfigDict({"loss": dict(
      lambda_con=lambda_con, lambda_cap=lambda_cap, label_smoothing=0.0)})
  model = _FixedCaptioner(logits, {"img_emb": img, "txt_emb": txt,
                                   "logit_scale": scale})
  task = CaptionTask(config, model=model)
  loss, aux = task.loss_fn({}, {"image": np.zeros((b, 2, 2, 3)),
                                "text": texts}, None, False)
  # open_clip: logits of positions 0..L-2 predict the labels text[:, 1:];
  # pad id 0 is ignored in its token-mean cross-entropy.
  ref = oc_loss.CoCaLoss(caption_loss_weight=lambda_cap,
                         clip_loss_weight=lambda_con, pad_id=0)
  con, cap = ref(torch.tensor(img, dtype=torch.float64),
                 torch.tensor(txt, dtype=torch.float64),
                 torch.tensor(logits[:, :-1], dtype=torch.float64),
                 torch.tensor(texts[:, 1:], dtype=torch.long),
                 torch.tensor(float(scale), dtype=torch.float64))
  assert float(aux["contrastive_loss"]) * lambda_con == pytest.approx(
      float(con), rel=1e-5)
  assert float(aux["caption_loss"]) * lambda_cap == pytest.approx(
      float(cap), rel=1e-5)
  assert float(loss) == pytest.approx(float(con + cap), rel=1e-5)
