"""AV-Scenes: every answer and event label recomputed from the rendered
pixels and the waveform alone (shapes read from their geometry, motion from
centroids, tones from their energy per frame), and the built dataset read
back."""
import re

import numpy as np
import pytest

from mmtx.data import av_scenes as av


def _read_pixels(video):
  """colour name -> (shape name, direction name, onset frame), from pixels."""
  out = {}
  for ci, name in enumerate(av.COLORS):
    mask = (video == av.RGB[ci]).all(-1)               # [F, H, W]
    if not mask.any():
      continue
    ys, xs = np.nonzero(mask[0])
    box = mask[0, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    rows = box.sum(1)
    if box.all():
      shape = "square"
    elif rows[0] < rows[-1] - 2:
      shape = "triangle"                                # narrow top, wide base
    else:
      assert rows[0] == rows[-1] and box.sum() < box.size
      shape = "circle"
    cent = np.array([[np.nonzero(m)[1].mean(), np.nonzero(m)[0].mean()]
                     for m in mask])                    # [F, (x, y)]
    moves = np.abs(np.diff(cent, axis=0)).sum(1) > 0
    onset = int(np.argmax(moves))
    dx, dy = cent[-1] - cent[0]
    direction = (("right" if dx > 0 else "left") if abs(dx) > abs(dy)
                 else ("down" if dy > 0 else "up"))
    out[name] = (shape, direction, onset)
  return out


def _read_tones(audio):
  """pitch name -> onset frame, from the energy at each pitch per frame."""
  t = np.arange(av.SAMPLES_PER_FRAME) / av.SAMPLE_RATE
  frames = audio.reshape(av.FRAMES, av.SAMPLES_PER_FRAME).astype(np.float64)
  out = {}
  for name, hz in zip(av.PITCHES, av.PITCHES_HZ):
    energy = np.abs(frames @ np.exp(-2j * np.pi * hz * t))
    on = energy > 50             # a tone: ~250; noise alone: ~2
    if on.any():
      out[name] = int(np.argmax(on))
  return out


def _answer(question, objects, tones):
  by_onset = {o: c for c, (_, _, o) in objects.items()}
  if m := re.fullmatch(r"how many objects move (\w+)\?", question):
    return str(sum(d == m[1] for _, d, _ in objects.values()))
  if m := re.fullmatch(r"which way does the (\w+) object move\?", question):
    return objects[m[1]][1]
  if question == "how many sounds are there?":
    return str(len(tones))
  if m := re.fullmatch(r"is there a (\w+) sound\?", question):
    return "yes" if m[1] in tones else "no"
  if m := re.fullmatch(r"what colour is the object that makes the (\w+) "
                       r"sound\?", question):
    return by_onset[tones[m[1]]]
  if m := re.fullmatch(r"which way is the object with the (\w+) sound "
                       r"moving\?", question):
    return objects[by_onset[tones[m[1]]]][1]
  if m := re.fullmatch(r"is the (\w+) sound made by a (\w+)\?", question):
    return "yes" if objects[by_onset[tones[m[1]]]][0] == m[2] else "no"
  raise AssertionError(f"unparsed question {question!r}")


def test_every_answer_follows_from_pixels_and_sound():
  counts = np.zeros((3, 3), int)
  answers, events = set(), set()
  for rec in av.generate(0, "train", 300):
    objects = _read_pixels(rec["video"])
    tones = _read_tones(rec["audio"])
    assert len(objects) == av.NUM_OBJECTS and 1 <= len(tones) <= 2
    for q, a, qt, qs in zip(rec["question"], rec["answer"], rec["qtype"],
                            rec["qsubtype"]):
      assert av.ANSWERS[a] == _answer(q, objects, tones), (rec["id"], q)
      counts[qt, qs] += 1
      answers.add(av.ANSWERS[a])
    # Events: each tone with the direction of the object that starts moving
    # when it starts.
    by_onset = {o: d for _, d, o in objects.values()}
    assert sorted(av.EVENTS[i] for i in rec["label"]) == sorted(
        f"{p} sound moving {by_onset[o]}" for p, o in tones.items())
    events.update(av.EVENTS[i] for i in rec["label"])
  # Every question type occurs, and every answer word is used.
  for qt, subs in enumerate(av.QSUBTYPES):
    assert (counts[qt, :len(subs)] > 0).all(), counts
  assert answers == set(av.ANSWERS), set(av.ANSWERS) - answers
  assert events == set(av.EVENTS), set(av.EVENTS) - events


def test_splits_are_deterministic_and_differ():
  a = [r["video"] for r in av.generate(3, "test", 5)]
  b = [r["video"] for r in av.generate(3, "test", 5)]
  c = [r["video"] for r in av.generate(3, "validation", 5)]
  assert all((x == y).all() for x, y in zip(a, b))
  assert not all((x == y).all() for x, y in zip(a, c))
  with pytest.raises(ValueError, match="unknown split 'val'"):
    next(av.generate(0, "val", 1))


def test_tiny_builds_and_reads_back(tmp_path):
  builder = av.AvScenes(config="tiny", data_dir=str(tmp_path))
  builder.download_and_prepare()
  src = builder.as_data_source("validation")
  assert len(src) == 16
  rec = src[3]
  ref = list(av.generate(0, "validation", 4))[3]
  np.testing.assert_array_equal(rec["video"], ref["video"])
  np.testing.assert_array_equal(rec["audio"], ref["audio"])
  assert [q.decode() if isinstance(q, bytes) else q
          for q in rec["question"]] == list(ref["question"])
  np.testing.assert_array_equal(rec["label"], ref["label"])
  assert builder.info.metadata["labels"] == list(av.EVENTS)
