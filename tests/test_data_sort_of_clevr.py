"""Sort-of-CLEVR generator against hand-computed scenes and a brute-force
float64 reference; the TFDS builder's determinism and metadata."""
import dataclasses
import filecmp
import itertools
import math
import os
import re

import numpy as np

from mmtx.data import sort_of_clevr as soc

# A scene laid out by hand: (x, y) centers, object k has color k.
#          red       green     blue      orange    gray      yellow
CENTERS = [(10, 10), (60, 12), (30, 40), (62, 62), (12, 64), (45, 25)]
SHAPES = [0, 1, 0, 1, 1, 0]   # circle, square, circle, square, square, circle
RED, GREEN, BLUE, ORANGE, GRAY, YELLOW = range(6)


def _scene():
  return np.array([CENTERS], np.int32), np.array([SHAPES], np.int32)


def _ans(name):
  return soc.ANSWERS.index(name)


# ------------------------------------------------ hand-computed answers
def test_hand_scene_answers():
  tables = soc.answer_tables(*_scene())
  nonrel, rel, tern = tables["nonrel"][0], tables["rel"][0], tables["ternary"][0]
  # Non-relational: shape, x < 37.5 -> left, y < 37.5 -> top.
  assert nonrel[0, RED] == _ans("circle") and nonrel[0, GREEN] == _ans("square")
  assert nonrel[1, RED] == _ans("left") and nonrel[1, GREEN] == _ans("right")
  assert nonrel[2, RED] == _ans("top") and nonrel[2, GRAY] == _ans("bottom")
  # Distances from red (10,10): green 50.04, blue 36.06, orange 73.54,
  # gray 54.04, yellow 38.08 -> closest blue (circle), furthest orange (square).
  assert rel[0, RED] == _ans("circle")
  assert rel[1, RED] == _ans("square")
  assert tables["closest"][0, RED] == BLUE and tables["furthest"][0, RED] == ORANGE
  # Circles: red, blue, yellow.
  assert rel[2, RED] == _ans("3") and rel[2, GRAY] == _ans("3")
  # Between red (10,10) and green (60,12): t = ((x-10)*50 + (y-10)*2) / 2504
  # is blue .42, orange 1.08, gray .08, yellow .71 -> 3 objects.
  assert tern[0, RED, GREEN] == _ans("3")
  # Between red and orange (diagonal): every other object projects inside.
  assert tern[0, RED, ORANGE] == _ans("4")
  # Midpoint of red and green is (35, 11): squared distances blue 866,
  # orange 3330, gray 3338, yellow 296 -> yellow.
  assert tern[1, RED, GREEN] == _ans("yellow")
  # Closer to red than green (50.04): blue 36.06, yellow 38.08 -> 2.
  assert tern[2, RED, GREEN] == _ans("2")


def _reference_answers(centers, shapes):
  """Brute force in float64 with math.dist, independent of the generator."""
  pts = [tuple(map(float, c)) for c in centers]
  d = lambda i, j: math.dist(pts[i], pts[j])
  out = {}
  for x in range(6):
    others = [j for j in range(6) if j != x]
    out[(0, 0, x)] = soc.SHAPES[shapes[x]]
    out[(0, 1, x)] = "left" if pts[x][0] < 37.5 else "right"
    out[(0, 2, x)] = "top" if pts[x][1] < 37.5 else "bottom"
    out[(1, 0, x)] = soc.SHAPES[shapes[min(others, key=lambda j: d(x, j))]]
    out[(1, 1, x)] = soc.SHAPES[shapes[max(others, key=lambda j: d(x, j))]]
    out[(1, 2, x)] = str(sum(shapes[j] == shapes[x] for j in range(6)))
    for y in others:
      zs = [z for z in range(6) if z not in (x, y)]
      (ax, ay), (bx, by) = pts[x], pts[y]
      seg2 = (bx - ax) ** 2 + (by - ay) ** 2
      between = 0
      for z in zs:
        t = ((pts[z][0] - ax) * (bx - ax) + (pts[z][1] - ay) * (by - ay)) / seg2
        between += 0 < t < 1
      out[(2, 0, x, y)] = str(between)
      mid = ((ax + bx) / 2, (ay + by) / 2)
      out[(2, 1, x, y)] = soc.COLORS[min(zs, key=lambda z: math.dist(pts[z], mid))]
      out[(2, 2, x, y)] = str(sum(d(x, z) < d(x, y) for z in zs))
  return out


def test_random_scenes_against_reference():
  rng = np.random.default_rng(7)
  centers, shapes = soc.sample_scenes(rng, 40)
  tables = soc.answer_tables(centers, shapes)
  for i in range(40):
    ref = _reference_answers(centers[i], shapes[i])
    for key, want in ref.items():
      if key[0] < 2:
        got = tables[soc.QTYPES[key[0]]][i, key[1], key[2]]
      else:
        if not tables["ternary_valid"][i, key[1], key[2], key[3]]:
          continue
        got = tables["ternary"][i, key[1], key[2], key[3]]
      assert soc.ANSWERS[got] == want, (i, key)


def test_sampled_scenes_are_valid_and_unambiguous():
  centers, shapes = soc.sample_scenes(np.random.default_rng(3), 200)
  assert centers.min() >= soc.OBJECT_SIZE
  assert centers.max() <= soc.IMAGE_SIZE - 1 - soc.OBJECT_SIZE
  assert set(np.unique(shapes)) <= {0, 1}
  for c in centers:
    for i, j in itertools.combinations(range(6), 2):
      # Bounding boxes (half-width 5) disjoint with a one-pixel gap.
      assert max(abs(c[i] - c[j])) >= 12
    for i in range(6):
      d = sorted(math.dist(c[i], c[j]) for j in range(6) if j != i)
      assert d[0] < d[1] and d[-1] > d[-2]


def test_render_pixels():
  img = soc.render(*_scene())[0]
  assert img.shape == (75, 75, 3) and img.dtype == np.uint8
  assert (img[0, 0] == 255).all()          # white background (no object there)
  for k, (x, y) in enumerate(CENTERS):
    colored = (img == soc.RGB[k]).all(-1)
    # Gauss circle count N(5) = 81 lattice points; a square is 11 x 11.
    assert colored.sum() == (121 if SHAPES[k] else 81), soc.COLORS[k]
    assert colored[y, x]                   # row y, column x
    assert colored[y + 5, x + 5] == bool(SHAPES[k])   # corner only for squares
    assert colored[y, x + 5] and not colored[y, x + 6]


def test_question_text_and_encoding():
  assert (soc.question_text(1, 0, BLUE) ==
          "what is the shape of the object closest to the blue object?")
  assert (soc.question_text(2, 1, RED, GRAY) == "what color is the object "
          "closest to the midpoint of the red object and the gray object?")
  enc = soc.question_encoding(1, 2, BLUE, -1)
  want = np.zeros(18, np.uint8)
  want[[2, 13, 17]] = 1                    # blue, rel, subtype 2
  np.testing.assert_array_equal(enc, want)
  tern = soc.question_encoding(2, 0, RED, GRAY)
  want = np.zeros(18, np.uint8)
  want[[0, 6 + 4, 14, 15]] = 1
  np.testing.assert_array_equal(tern, want)


def test_sampled_questions_match_reference():
  rng = np.random.default_rng(0)
  centers, shapes = soc.sample_scenes(rng, 30)
  q = soc.sample_questions(rng, soc.answer_tables(centers, shapes), 10)
  assert q["answer"].shape == (30, 30)
  np.testing.assert_array_equal(q["qtype"][0], [0] * 10 + [1] * 10 + [2] * 10)
  for i in range(30):
    ref = _reference_answers(centers[i], shapes[i])
    for j in range(30):
      t, s, a, b = (int(q[k][i, j]) for k in ("qtype", "qsubtype", "color_a", "color_b"))
      key = (t, s, a) if t < 2 else (t, s, a, b)
      assert soc.ANSWERS[q["answer"][i, j]] == ref[key]
      assert (b >= 0) == (t == 2) and a != b


# ---------------------------------------------------- captions, dialogues
def _quadrant(c):
  return ("top" if c[1] < 37.5 else "bottom") + " " + ("left" if c[0] < 37.5 else "right")


def test_captions_describe_the_scene():
  centers, shapes = _scene()
  tables = soc.answer_tables(centers, shapes)
  caps = soc.captions(np.random.default_rng(0), centers[0], shapes[0],
                      tables["closest"][0], tables["furthest"][0], 5)
  name = {f"{soc.COLORS[k]} {soc.SHAPES[SHAPES[k]]}": k for k in range(6)}
  # Template 0: every object with its quadrant.
  found = re.findall(r"an? (\w+ \w+) at the (\w+ \w+)", caps[0])
  assert sorted(found) == sorted((n, _quadrant(CENTERS[k])) for n, k in name.items())
  # Template 1: three circles, three squares.
  assert caps[1].startswith("there are three circles and three squares")
  # Template 2: "A is to the left of B" means x_A < x_B - 10; "above": y.
  for a, rel, b in re.findall(r"the (\w+ \w+) is (to the left of|above) the (\w+ \w+)", caps[2]):
    axis = 0 if rel == "to the left of" else 1
    assert CENTERS[name[a]][axis] < CENTERS[name[b]][axis] - 10
  # Template 3: nearest / furthest neighbours by Euclidean distance.
  m = re.match(r"the (\w+ \w+) is closest to the (\w+ \w+), and the (\w+ \w+) "
               r"is furthest from the (\w+ \w+)\.", caps[3])
  a, b, c, d = (name[g] for g in m.groups())
  dist = lambda i, j: math.dist(CENTERS[i], CENTERS[j])
  assert b == min((j for j in range(6) if j != a), key=lambda j: dist(a, j))
  assert d == max((j for j in range(6) if j != c), key=lambda j: dist(c, j))
  # Template 4: halves.
  left = re.search(r"the left half holds (.*?);", caps[4]).group(1)
  assert sorted(re.findall(r"the (\w+ \w+)", left)) == sorted(
      n for n, k in name.items() if CENTERS[k][0] < 37.5)


def _resolve_dialogue(questions, centers, shapes):
  """Answers a dialogue by reading its text, independently of the generator:
  "it" is the last object named by color (in a question or an answer)."""
  dist = lambda i, j: math.dist(centers[i], centers[j])
  answers, ref = [], None
  for q in questions:
    named = [k for k, c in enumerate(soc.COLORS) if f"the {c} object" in q]
    if named:
      ref = named[0]
    others = [j for j in range(6) if j != ref]
    near = min(others, key=lambda j: dist(ref, j))
    far = max(others, key=lambda j: dist(ref, j))
    if "closest to it" in q or "furthest from it" in q:
      other = near if "closest" in q else far
      if q.startswith("what color"):
        answers.append(soc.COLORS[other])
        ref = other
      else:
        answers.append(soc.SHAPES[shapes[other]])
    elif "same shape" in q:
      answers.append(str(sum(shapes[j] == shapes[ref] for j in range(6))))
    elif "left or" in q:
      answers.append("left" if centers[ref][0] < 37.5 else "right")
    elif "top or" in q:
      answers.append("top" if centers[ref][1] < 37.5 else "bottom")
    else:
      assert "shape" in q, q
      answers.append(soc.SHAPES[shapes[ref]])
  return answers


def test_dialogues_need_history_and_are_correct():
  rng = np.random.default_rng(1)
  centers, shapes = soc.sample_scenes(rng, 20)
  tables = soc.answer_tables(centers, shapes)
  for i in range(20):
    qs, ans, _ = soc.dialogues(rng, centers[i], shapes[i], tables["closest"][i],
                               tables["furthest"][i], 3, 5)
    assert qs.shape == ans.shape == (3, 5)
    for d in range(3):
      assert any(c in qs[d, 0] for c in soc.COLORS)        # opener names a color
      for t in range(1, 5):                                  # follow-ups do not
        assert not any(f"the {c} object" in qs[d, t] for c in soc.COLORS)
        assert " it" in qs[d, t]
      want = _resolve_dialogue(list(qs[d]), centers[i].tolist(), shapes[i].tolist())
      assert [soc.ANSWERS[a] for a in ans[d]] == want


# ---------------------------------------------------------------- builder
def _tiny(name, seed=0):
  return soc.SortOfClevrConfig(name=name, num_train=24, num_validation=5,
                               num_test=6, num_test_large=8,
                               generator=soc.GeneratorConfig(seed=seed))


def _build(data_dir, config):
  builder = soc.SortOfClevr(config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def _data_files(builder):
  return sorted(f for f in os.listdir(builder.data_dir) if "array_record" in f)


def test_same_seed_is_byte_identical(tmp_path):
  a = _build(tmp_path / "a", _tiny("t0"))
  b = _build(tmp_path / "b", _tiny("t0"))
  c = _build(tmp_path / "c", _tiny("t1", seed=1))
  files = _data_files(a)
  assert len(files) == 4 and files == _data_files(b)
  for f in files:
    assert filecmp.cmp(os.path.join(a.data_dir, f), os.path.join(b.data_dir, f),
                       shallow=False), f
  ra, rc = a.as_data_source("train")[0], c.as_data_source("train")[0]
  assert not np.array_equal(ra["image"], rc["image"])


def test_builder_records_and_metadata(tmp_path):
  cfg = _tiny("t0")
  builder = _build(tmp_path, cfg)
  md = builder.info.metadata
  assert md["generator"] == dataclasses.asdict(cfg.generator)
  sizes = {"train": 24, "validation": 5, "test": 6, "test_large": 8}
  assert md["num_images"] == sizes
  assert md["answers"] == list(soc.ANSWERS) and md["questions_per_image"] == 30
  assert {s: len(builder.as_data_source(s)) for s in sizes} == sizes
  # Every split is its own draw: no validation image is a train or test one.
  images = {s: {builder.as_data_source(s)[i]["image"].tobytes()
                for i in range(n)} for s, n in sizes.items()}
  assert not images["validation"] & (images["train"] | images["test"])
  assert builder.as_data_source("validation")[0]["id"] == b"validation_00000"
  rec = builder.as_data_source("test")[2]
  assert rec["id"] == b"test_00002"
  assert rec["image"].shape == (75, 75, 3) and rec["image"].dtype == np.uint8
  # Stored answers agree with the stored scene through the reference.
  centers, shapes = rec["objects"]["center"], rec["objects"]["shape"]
  ref = _reference_answers(centers, shapes)
  for j in range(30):
    enc = rec["question_encoding"][j]
    t, s = int(rec["qtype"][j]), int(rec["qsubtype"][j])
    assert enc[12 + t] == 1 and enc[15 + s] == 1
    a = int(np.argmax(enc[:6]))
    key = (t, s, a) if t < 2 else (t, s, a, int(np.argmax(enc[6:12])))
    assert soc.ANSWERS[rec["answer"][j]] == ref[key]
    assert soc.COLORS[a] in rec["question"][j].decode()
  # The image shows the stored scene.
  np.testing.assert_array_equal(rec["image"], soc.render(centers[None], shapes[None])[0])
