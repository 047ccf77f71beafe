"""Audio-visual event classification: mAP against scikit-learn and a hand
count, the 'label' view's targets against the generator's events, and
configs/av_event.py through the one trainer, above the constant scorer."""
import numpy as np
import pytest

from mmtx import metrics
from mmtx.data import av_scenes


def test_average_precision_matches_sklearn_and_a_hand_count():
  sklearn = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  labels = rng.random((60, 5)) < 0.3
  labels[0] = True                                  # every class has one
  scores = np.round(rng.normal(size=(60, 5)) + labels, 1)   # with ties
  np.testing.assert_allclose(
      metrics.average_precisions(scores, labels),
      sklearn.average_precision_score(labels, scores, average=None),
      rtol=1e-12)
  # Ranked 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-): AP = (1/1 + 2/3) / 2.
  ap = metrics.average_precisions([[0.9], [0.8], [0.7], [0.1]],
                                  [[1], [0], [1], [0]])
  assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
  with pytest.raises(ValueError, match="labels: expected shape"):
    metrics.average_precisions(scores, labels[:, :2])


def _config(tmp_path, steps):
  from mmtx.configs import av_event
  # One M-modality attention layer: the cheapest fusion to compile.
  cfg = av_event.get_config(f"steps={steps},width=16,fusion=m_modal")
  cfg.model.fusion.num_layers = 1
  cfg.data.name = "av_scenes/tiny"
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.data.eval_splits = ("train",)
  cfg.batch_size = 16
  cfg.data.eval_batch_size = 16
  cfg.log_every = cfg.checkpoint_every = steps
  cfg.optimizer.learning_rate = 3e-3
  cfg.optimizer.warmup_steps = 10
  return cfg


def test_label_view_gives_the_generators_events(tmp_path):
  from mmtx import data
  it, info = data.get_dataset("av_scenes/tiny", "validation", "label",
                              batch_size=16, data_dir=str(tmp_path))
  batch = next(it)
  records = list(av_scenes.generate(0, "validation", 16))
  want = np.zeros((16, len(av_scenes.EVENTS)), np.float32)
  for row, i in enumerate(batch["index"]):
    want[row, records[i]["label"]] = 1
  np.testing.assert_array_equal(batch["labels"], want)
  assert batch["video"].shape == (16,) + info.image_shape
  assert batch["audio"].shape == (16, info.metadata["audio_samples"])


def test_label_view_rejects_a_dataset_without_classes_and_bad_ids():
  from mmtx.data import tokenizers
  from mmtx.data import views
  tok = tokenizers.WordTokenizer(["a"])
  with pytest.raises(ValueError, match="needs a dataset with a class list"):
    views.ViewSpec(view="label", tokenizer=tok, max_len=4,
                   image_shape=(2, 4, 4, 3), dataset="clips")
  spec = views.ViewSpec(view="label", tokenizer=tok, max_len=4,
                        image_shape=(2, 4, 4, 3), labels=("x", "y"),
                        dataset="clips")
  record = {"id": "c7", "video": np.zeros((2, 4, 4, 3), np.uint8),
            "audio": np.zeros(8, np.float32), "label": np.array([0, 1])}
  ex = views.make_example(spec, record, 0, 0, None)
  np.testing.assert_array_equal(ex["labels"], [1, 1])
  record["label"] = np.array([2])
  with pytest.raises(ValueError, match=r"clips record 'c7': its label ids "
                     r"\[2\] are not 1 or more ids in \[0, 2\)"):
    views.make_example(spec, record, 0, 0, None)


def test_av_event_trains_above_the_constant_scorer(tmp_path):
  """60 steps of configs/av_event.py (tiny) through train_and_evaluate: the
  training clips' mAP beats the AP of a constant score (each class's
  prevalence, from the generator's events), and the eval counts every
  clip."""
  from mmtx import tasks
  from mmtx import train
  cfg = _config(tmp_path, 60)
  out = train.train_and_evaluate(cfg, str(tmp_path / "run"),
                                 tasks.build_task(cfg), progress=False)
  records = list(av_scenes.generate(0, "train", 64))
  onehot = np.zeros((64, len(av_scenes.EVENTS)))
  for r, rec in enumerate(records):
    onehot[r, rec["label"]] = 1
  prevalence = onehot.mean(0)
  chance = prevalence[prevalence > 0].mean()
  assert out["mAP"] > chance + 0.05, (out, chance)
  assert 0 <= out["accuracy"] <= 1
