"""The reproduction scripts run end to end (tiny data, a few steps)."""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(tmp_path, script, *args, timeout=600):
  """Runs experiments/SCRIPT with the data built under tmp_path; asserts it
  succeeded and returns its stdout."""
  env = dict(os.environ, MMTX_DATA_DIR=str(tmp_path / "data"))
  out = subprocess.run([sys.executable, f"experiments/{script}", *args],
                       cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out.stdout


def _chart(path):
  """A chart the script drew: a readable PNG with more than a blank page."""
  from PIL import Image
  import numpy as np
  img = Image.open(path)
  assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
  px = np.asarray(img.convert("RGB"))
  assert len(np.unique(px.reshape(-1, 3), axis=0)) > 8, path


@pytest.mark.slow   # ~2 min of CPU: a reproduction script's smoke run
def test_sort_of_clevr_script_writes_its_table(tmp_path):
  _script(tmp_path, "sort_of_clevr.py", "--quick", "--eval_every=2",
          f"--out={tmp_path / 'soc'}")
  md = (tmp_path / "soc" / "results.md").read_text()
  assert "Test split during training" in md and "| question_only | 4 |" in md
  for name in ("cross_attention", "film", "cnn_mlp", "cnn_mlp_late",
               "question_only"):
    assert f"| {name} |" in md
  assert "(floor" in md and "machine:" in md
  res = json.loads((tmp_path / "soc" / "results.json").read_text())["rows"]
  assert {r["name"] for r in res} == {"cross_attention", "film", "cnn_mlp",
                                      "cnn_mlp_late", "question_only"}
  assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 for r in res)
  # Another seed later: the stored seed-0 run is reused, seed 1 trains in
  # its own folder, the table keeps every model, the cells of the model
  # with two seeds become mean ± std, and every run is listed.
  again = _script(tmp_path, "sort_of_clevr.py", "--quick",
                  "--models=question_only", "--seeds=0,1",
                  f"--out={tmp_path / 'soc'}")
  assert "question_only seed 0: reusing" in again
  assert "cross_attention seed" not in again
  md = (tmp_path / "soc" / "results.md").read_text()
  res = json.loads((tmp_path / "soc" / "results.json").read_text())["rows"]
  assert sorted((r["name"], r["seed"]) for r in res) == [
      ("cnn_mlp", 0), ("cnn_mlp_late", 0), ("cross_attention", 0), ("film", 0),
      ("question_only", 0), ("question_only", 1)]
  assert (tmp_path / "soc" / "question_only_seed1" / "checkpoints").is_dir()
  assert "| question_only | 0,1 |" in md and "| cross_attention | 0 |" in md
  assert "Every run:" in md and "| question_only | 1 |" in md
  assert "mean ± std over seeds" in md and " ± " in md
  _chart(tmp_path / "soc" / "accuracy.png")


@pytest.mark.slow   # ~40 s: two CLI runs side by side
def test_default_seeds_runs_the_cli_per_seed_and_tabulates(tmp_path):
  """--quick, two seeds side by side: each row holds the test and the
  validation numbers of that run's own last evaluation, the table shows
  them, and a second call runs nothing."""
  out = tmp_path / "seeds"
  _script(tmp_path, "default_seeds.py", "--quick", "--seeds=0,1",
          "--parallel=2", f"--out={out}")
  rows = json.loads((out / "results.json").read_text())["rows"]
  assert sorted(r["seed"] for r in rows) == [0, 1]
  md = (out / "results.md").read_text()
  for r in rows:
    evals = [json.loads(line) for line in open(
        out / f"default_seed{r['seed']}" / "metrics.jsonl")
             if "eval/accuracy" in line]
    last = evals[-1]
    assert r["steps"] == last["step"] == 4
    assert r["metrics"]["accuracy"] == last["eval/test/accuracy"]
    assert r["validation"]["accuracy"] == last["eval/accuracy"]
    assert r["metrics"]["accuracy"] != last["eval/accuracy"] or \
        r["metrics"]["accuracy/rel"] != last["eval/accuracy/rel"]
    assert f"| {r['seed']} | {100 * r['metrics']['accuracy']:.2f}% |" in md
  assert "mean ± std (min-max)" in md and "2 at a time" in md
  _chart(out / "accuracy.png")
  again = _script(tmp_path, "default_seeds.py", "--quick", "--seeds=0,1",
                  f"--out={out}")
  assert "seed 0: test" not in again and "| 1 |" in again


def test_fusion_ablation_writes_rows_and_resumes(tmp_path):
  """--quick on two strategies (token-level, pooled): each trains 2 steps in
  the default model and gets a row; a second call finds them done and only
  rewrites the table. The question-only floor row comes last. (Every
  strategy builds in the default model: the test below.)"""
  names = ["concat", "late"]
  args = ["--quick", f"--fusions={','.join(names)}", f"--out={tmp_path / 'abl'}"]
  _script(tmp_path, "fusion_ablation.py", *args, timeout=900)
  res = json.loads((tmp_path / "abl" / "results.json").read_text())["rows"]
  assert sorted(r["name"] for r in res) == names + ["question_only"]
  md = (tmp_path / "abl" / "results.md").read_text()
  for name in names:
    assert f"| {name} |" in md
  assert md.strip().splitlines()[-3].startswith(
      "| floor: question only (image zeroed) |")
  assert "±" in md and "machine:" in md
  _chart(tmp_path / "abl" / "accuracy.png")
  again = _script(tmp_path, "fusion_ablation.py", *args, timeout=300)
  assert " seed 0:" not in again
  # Committed rows (experiments/results/) seed a fresh OUT; --table_only
  # trains nothing, even for rows that are missing (seed 1 here).
  fresh = tmp_path / "fresh"
  table_only = _script(
      tmp_path, "fusion_ablation.py", "--quick", "--table_only",
      "--fusions=concat,late,gated", "--seeds=0",
      f"--resume_from={tmp_path / 'abl' / 'results.json'}", f"--out={fresh}",
      timeout=300)
  assert " seed 0:" not in table_only
  md2 = (fresh / "results.md").read_text()
  assert md2.splitlines()[:6] == md.splitlines()[:6]
  assert "| gated |" not in md2
  assert len(json.loads((fresh / "results.json").read_text())["rows"]) == 3


def test_every_fusion_builds_in_the_default_model():
  """The ablation's rows: configs/default.py with each FUSIONS strategy
  builds and initialises (shapes only) at the default sizes."""
  import jax
  sys.path.insert(0, REPO)
  from mmtx.configs import default
  from mmtx.fusion import FUSIONS
  from mmtx.models.fusion_model import FusionModel
  from mmtx.tasks import common
  for name in FUSIONS:
    cfg = default.get_config(f"fusion={name}")
    model = FusionModel(common.model_config(cfg, vocab_size=40, num_answers=19))
    images = jax.ShapeDtypeStruct((2, 75, 75, 3), "float32")
    texts = jax.ShapeDtypeStruct((2, 3, cfg.data.max_len), "int32")
    out = jax.eval_shape(lambda i, t: model.init_with_output(
        jax.random.key(0), i, t)[0][0]["vqa_logits"], images, texts)
    assert out.shape == (2, 3, 19), name


def test_quickstart_notebook_runs_top_to_bottom(tmp_path):
  """Executes every code cell of experiments/notebooks/quickstart.ipynb in
  order, in one namespace, as a kernel would (tiny data, a few steps), and
  checks the attention sheet it draws."""
  nb = json.load(open(os.path.join(REPO, "experiments", "notebooks",
                                   "quickstart.ipynb")))
  cells = ["".join(c["source"]) for c in nb["cells"]
           if c["cell_type"] == "code"]
  assert cells and not any(line.lstrip().startswith(("!", "%"))
                           for c in cells for line in c.splitlines())
  script = tmp_path / "nb.py"
  script.write_text("\n\n".join(cells))
  wd = tmp_path / "nbrun"
  env = dict(os.environ, MMTX_DATA_DIR=str(tmp_path / "data"),
             MMTX_NOTEBOOK_QUICK="1", MMTX_NOTEBOOK_WORKDIR=str(wd))
  out = subprocess.run([sys.executable, str(script)], env=env,
                       cwd=os.path.join(REPO, "experiments", "notebooks"),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert "pred=" in out.stdout and "true=" in out.stdout
  import importlib.util
  if all(importlib.util.find_spec(m) for m in (
      "torch", "transformers", "open_clip")):  # imported, LiT-tuned, exported
    assert "zero_shot/top1: " in out.stdout, out.stdout[-2000:]
    assert "export matches transformers: True" in out.stdout
  else:
    assert "skipped: this cell needs torch, transformers" in out.stdout
  from PIL import Image
  img = Image.open(wd / "attention.png")
  assert img.size[0] == 6 * (75 * 4 + 8) and img.size[1] == 75 * 4 + 44


@pytest.mark.slow   # ~50 s: a reproduction script's smoke run
def test_easy_vqa_script_writes_its_table(tmp_path):
  _script(tmp_path, "easy_vqa_ablation.py", "--quick",
          f"--out={tmp_path / 'evq'}")
  md = (tmp_path / "evq" / "results.md").read_text()
  res = {r["name"]: r for r in json.loads(
      (tmp_path / "evq" / "results.json").read_text())}
  assert set(res) == {"mmtx", "image_ablated"}
  # Each model's row shows its own run's metrics: test, shape, color, yes/no.
  rows = {cells[0]: cells for cells in (
      [c.strip() for c in line.strip("|").split("|")]
      for line in md.splitlines() if line.startswith("| "))}
  for name, r in res.items():
    m = r["metrics"]
    assert rows[name][4:8] == [
        f"{100 * m[k]:.2f}%" for k in ("accuracy", "accuracy/shape",
                                      "accuracy/color", "accuracy/yes/no")]
  _chart(tmp_path / "evq" / "accuracy.png")


@pytest.mark.slow   # ~2 min of CPU: a reproduction script's smoke run
def test_pretrain_transfer_script_writes_its_table(tmp_path):
  """--quick: a 2-step pretraining run, then scratch and pretrained
  fine-tuning at 10 % and 100 % of the labels; the pretrained rows load the
  pretraining run's towers and fusion (the trainer says how many params)."""
  out = _script(tmp_path, "pretrain_transfer.py", "--quick",
                f"--out={tmp_path / 'tr'}", timeout=900)
  assert "initialised" in out and "from " in out
  res = json.loads((tmp_path / "tr" / "results.json").read_text())
  assert sorted((r["labels"], r["pretrained"]) for r in res["finetune"]) == [
      (0.1, False), (0.1, True), (1.0, False), (1.0, True)]
  assert "t2i_r1" in res["pretrain"]["metrics"]
  md = (tmp_path / "tr" / "results.md").read_text()
  assert "| 10% |" in md and "| pretrained |" in md and "| scratch |" in md
  assert "points" in md and "Pretraining run" in md
  _chart(tmp_path / "tr" / "transfer.png")


@pytest.mark.slow   # ~2 min of CPU: a reproduction script's smoke run
def test_downstream_script_writes_its_tables(tmp_path):
  out_dir = tmp_path / "ds"
  _script(tmp_path, "downstream_tasks.py", "--quick", f"--out={out_dir}",
          timeout=900)
  md = (out_dir / "results.md").read_text()
  for title in ("### Captioning", "### Retrieval", "### Visual dialogue"):
    assert title in md
  for config in ("configs/caption.py", "configs/clip.py:loss=softmax",
                 "configs/clip.py:loss=sigmoid",
                 "configs/dialogue.py:history=full",
                 "configs/dialogue.py:history=last"):
    assert f"| {config} |" in md
  res = json.loads((out_dir / "results.json").read_text())
  rows = {r["name"]: r["metrics"] for r in res["rows"]}
  assert {"cider", "bleu_4"} <= set(rows["caption"])
  assert "zero_shot/top1" in rows["clip"] and "i2t_r10" in rows["siglip"]
  assert "mrr/turn_1" in rows["dialogue_last"]
  # The history-removed row evaluates dialogue_full's checkpoint: no
  # training of its own, the same weights.
  assert "mrr/turn_1" in rows["dialogue_full_tested_last"]
  assert os.path.realpath(out_dir / "dialogue_full_tested_last" / "checkpoints"
                          ) == os.path.realpath(out_dir / "dialogue_full" /
                                                "checkpoints")
  assert "| configs/dialogue.py:history=full model, tested with history=last |" in md
  fl = res["floors"]
  assert 0 < fl["zero_shot_majority"] <= 1
  assert 0 < fl["caption"]["bleu_1"] < 1
  for name in ("captioning", "retrieval", "dialogue"):
    _chart(out_dir / f"{name}.png")
  # Asked again with the same steps and seed, finished rows are reused and
  # the table still holds every row.
  again = _script(tmp_path, "downstream_tasks.py", "--quick",
                  f"--out={out_dir}", "--rows=clip", timeout=300)
  assert "clip: reusing the row" in again
  assert (out_dir / "results.md").read_text() == md


def test_chance_recall_matches_random_rankings():
  """The retrieval floor against a hand case and against mmtx.metrics on
  random similarity matrices (Monte Carlo)."""
  import numpy as np
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import downstream_tasks
  from mmtx import metrics
  # 2 images x 2 captions, K = 1: the top caption is one of the image's 2
  # among 4; K = 3 always hits; text -> image K = 1: 1 / 2.
  assert downstream_tasks.chance_recall("i2t", 2, 2, 1) == 0.5
  assert downstream_tasks.chance_recall("i2t", 2, 2, 3) == 1.0
  assert downstream_tasks.chance_recall("t2i", 2, 2, 1) == 0.5
  rng = np.random.default_rng(0)
  images, per_image = 20, 3
  owner = np.repeat(np.arange(images), per_image)
  draws = [metrics.retrieval_recall(rng.normal(size=(images, images *
                                                     per_image)), owner)
           for _ in range(400)]
  for d in ("i2t", "t2i"):
    for k in (1, 5, 10):
      mc = np.mean([x[f"{d}_r{k}"] for x in draws])
      assert abs(mc - downstream_tasks.chance_recall(d, images, per_image,
                                                     k)) < 0.02, (d, k, mc)


def test_seed_cells_are_mean_and_sample_std():
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import runlib
  # Hand-computed: 50 and 70 % -> mean 60, sample std sqrt(200) = 14.14.
  assert runlib.pct_cell([0.5, 0.7]) == "60.0 ± 14.1%"
  assert runlib.pct_cell([0.905]) == "90.5%"
  assert runlib.pct_cell([None, 0.25]) == "25.0%"
  assert runlib.pct_cell([]) == "-"
  assert runlib.mean_std([0.9, 0.8, 0.7]) == pytest.approx((80.0, 10.0))


def test_seed_series_groups_rows_by_name_in_the_given_order():
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import runlib
  rows = [{"name": "a", "metrics": {"x": 0.9, "y": None}},
          {"name": "b", "metrics": {"x": 0.4, "y": 0.2}},
          {"name": "a", "metrics": {"x": 0.7, "y": 0.5}}]
  (lb, mb, sb), (la, ma, sa) = runlib.seed_series(
      rows, ["b", "a"], ["x", "y", "z"], label=str.upper)
  assert (lb, la) == ("B", "A")
  # Hand-computed: a's x over seeds 90, 70 -> 80 ± sqrt(200); its y has one
  # value (the None is dropped); nobody has z -> NaN, which draws no bar.
  assert ma[:2] == pytest.approx([80.0, 50.0])
  assert sa[:2] == pytest.approx([200 ** 0.5, 0.0])
  assert mb[:2] == pytest.approx([40.0, 20.0]) and sb[:2] == [0.0, 0.0]
  assert math.isnan(ma[2]) and math.isnan(mb[2])


_STOPPABLE = """
import sys
sys.path.insert(0, {experiments!r})
import runlib
from mmtx.configs import default
cfg = default.get_config("steps=100000")
runlib.shrink_for_quick(cfg)
with cfg.unlocked():
  cfg.log_every = 1
  cfg.checkpoint_every = 100000
  cfg.mesh.cpu_devices = 0
runlib.train_run(cfg, {workdir!r})
print("ROW", flush=True)
"""


_TWICE = """
import json, sys
sys.path.insert(0, {experiments!r})
import runlib
from mmtx.configs import default
cfg = default.get_config("steps=3")
runlib.shrink_for_quick(cfg)
with cfg.unlocked():
  cfg.mesh.cpu_devices = 0
  cfg.eval_every = 3
rows = [runlib.train_run(cfg, {workdir!r}) for _ in range(2)]
print("ROWS" + json.dumps(rows), flush=True)
"""


def test_a_finished_run_reports_its_own_metrics_and_wall_again(tmp_path):
  """Rerunning a script resumes its finished runs: the second train_run of
  a finished workdir trains and evaluates nothing, and must still return
  the run's final eval metrics and its training wall time (it returned {}
  and ~0 s, so pretrain_transfer's rerun printed a pretraining row of 0 %)."""
  env = dict(os.environ, MMTX_DATA_DIR=str(tmp_path / "data"))
  out = subprocess.run(
      [sys.executable, "-c", _TWICE.format(
          experiments=os.path.join(REPO, "experiments"),
          workdir=str(tmp_path / "run"))],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  first, again = json.loads(out.stdout.split("ROWS", 1)[1])
  assert "accuracy" in first["metrics"] and "accuracy/rel" in first["metrics"]
  assert again["metrics"] == first["metrics"]
  assert again["wall_s"] == first["wall_s"] > 0
  assert again["params"] == first["params"]


def test_a_run_stopped_by_sigterm_is_not_a_row(tmp_path):
  """SIGTERM makes the trainer save and return early; train_run must then
  stop the script (no row for an unfinished run) and say how to resume."""
  import signal
  import time
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import runlib
  workdir = tmp_path / "run"
  env = dict(os.environ, MMTX_DATA_DIR=str(tmp_path / "data"))
  proc = subprocess.Popen(
      [sys.executable, "-c", _STOPPABLE.format(
          experiments=os.path.join(REPO, "experiments"), workdir=str(workdir))],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  log = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (log.exists() and log.read_text().count("train/loss") >= 2):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  steps = runlib.checkpoint_steps(str(workdir))
  assert proc.returncode != 0 and "ROW" not in out, (out, err[-2000:])
  assert len(steps) == 1 and 2 <= steps[0] < 100000, steps
  assert (f"training stopped at step {steps[0]} of 100000; rerun the same "
          "command to resume") in err, err[-2000:]
  assert runlib.checkpoint_steps(str(tmp_path / "nothing")) == []


@pytest.mark.slow
def test_wise_ft_script_writes_its_alpha_table(tmp_path):
  """alpha 0 and 1 are the zero-shot and the fine-tuned runs' own weights:
  their rows equal the trainer's final evals of those runs."""
  out_dir = tmp_path / "wise"
  _script(tmp_path, "wise_ft.py", "--quick", f"--out={out_dir}")
  md = (out_dir / "results.md").read_text()
  assert "| alpha | i2t R@1 | t2i R@1 | zero-shot top-1 |" in md
  assert "on 'test_large' (reported once)" in md
  res = json.loads((out_dir / "results.json").read_text())
  rows = {r["alpha"]: r["metrics"] for r in res["rows"]}
  assert sorted(rows) == [0.0, 0.5, 1.0]
  for alpha, run in ((0.0, "zero_shot"), (1.0, "fine_tuned")):
    last = [json.loads(line) for line in open(out_dir / run /
                                              "metrics.jsonl")][-1]
    for key, value in rows[alpha].items():
      assert value == pytest.approx(last[f"eval/{key}"], abs=1e-9), (run, key)


@pytest.mark.slow
def test_av_ablation_rows_costs_and_table(tmp_path):
  """--quick on two strategies trained side by side (~2 min of CPU): both
  processes' rows are kept, each gets XLA's forward FLOPs (late fusion, with
  no attention layers, costs less than bottleneck tokens) and a speed from
  its own run alone, and the table's cells are those numbers."""
  out = tmp_path / "av"
  _script(tmp_path, "av_ablation.py", "--quick", "--fusions=late,bottleneck",
          "--no-floors", "--parallel=2", f"--out={out}", timeout=900)
  rows = {r["name"]: r for r in json.loads(
      (out / "results.json").read_text())["rows"]}
  assert sorted(rows) == ["bottleneck", "late"]
  assert {r["parallel"] for r in rows.values()} == {2}
  assert 0 < rows["late"]["gflops"] < rows["bottleneck"]["gflops"]
  speeds = json.loads((out / "results.json").read_text())["speeds"]
  md = (out / "results.md").read_text()
  for name, r in rows.items():
    acc = r["metrics"]
    qps = speeds[name]["questions_per_sec"]
    assert qps > 0
    assert (f"| {name} | {r['params'] / 1e3:.0f}k | {r['gflops']:.4f} | "
            f"{qps:.0f} |" in md), md
    assert (f"| {100 * acc['accuracy']:.1f}% | {100 * acc['accuracy/sight']:.1f}%"
            in md), md
  _chart(out / "accuracy.png")
  _chart(out / "cost.png")
  # The committed-rows path: a new OUT redraws the same table from them.
  again = tmp_path / "again"
  _script(tmp_path, "av_ablation.py", "--quick", "--fusions=late,bottleneck",
          "--no-floors", "--table_only", f"--resume_from={out}/results.json",
          f"--out={again}")
  assert (again / "results.md").read_text() == md
