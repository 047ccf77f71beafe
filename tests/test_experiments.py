"""The reproduction scripts run end to end (tiny data, a few steps)."""
import json
import os
import subprocess
import sys

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


def test_sort_of_clevr_script_writes_its_table(tmp_path):
  _script(tmp_path, "sort_of_clevr.py", "--quick", f"--out={tmp_path / 'soc'}")
  md = (tmp_path / "soc" / "results.md").read_text()
  for name in ("cross_attention", "film", "cnn_mlp_late", "question_only"):
    assert f"| {name} |" in md
  assert "(floor" in md and "machine:" in md
  res = json.loads((tmp_path / "soc" / "results.json").read_text())
  assert {r["name"] for r in res} == {"cross_attention", "film",
                                      "cnn_mlp_late", "question_only"}
  assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 for r in res)


def test_fusion_ablation_writes_rows_and_resumes(tmp_path):
  """--quick on three strategies (token-level, pooled, FiLM): each trains 2
  steps in the default model and gets a row; a second call finds them done
  and only rewrites the table."""
  names = ["concat", "film", "late"]
  args = ["--quick", f"--fusions={','.join(names)}", f"--out={tmp_path / 'abl'}"]
  _script(tmp_path, "fusion_ablation.py", *args, timeout=900)
  res = json.loads((tmp_path / "abl" / "results.json").read_text())
  assert sorted(r["fusion"] for r in res) == names
  md = (tmp_path / "abl" / "results.md").read_text()
  for name in names:
    assert f"| {name} |" in md
  assert "±" in md and "machine:" in md
  again = _script(tmp_path, "fusion_ablation.py", *args, timeout=300)
  assert " seed 0:" not in again


def test_every_fusion_builds_in_the_default_model():
  """The ablation's rows: configs/default.py with each FUSIONS strategy
  builds and initialises (shapes only) at the default sizes."""
  import jax
  sys.path.insert(0, REPO)
  from configs import default
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
  from PIL import Image
  img = Image.open(wd / "attention.png")
  assert img.size[0] == 6 * (75 * 4 + 8) and img.size[1] == 75 * 4 + 44


def test_easy_vqa_script_writes_its_table(tmp_path):
  _script(tmp_path, "easy_vqa_ablation.py", "--quick",
          f"--out={tmp_path / 'evq'}")
  md = (tmp_path / "evq" / "results.md").read_text()
  assert "| mmtx |" in md and "| image_ablated |" in md and "99.5%" in md
  res = {r["name"]: r for r in json.loads(
      (tmp_path / "evq" / "results.json").read_text())}
  for r in res.values():
    assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
    assert "accuracy/yes/no" in r["metrics"]
