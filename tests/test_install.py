"""mmtx as a user installs it: a wheel, not the checkout, runs the main job
from any directory, its default config included."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_runs_the_main_job_from_outside_the_checkout(tmp_path):
  # Build from a copy of what setup.py packages, so the checkout gets no
  # build/ or egg-info of the test's making.
  src = tmp_path / "src"
  shutil.copytree(os.path.join(REPO, "mmtx"), src / "mmtx",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(REPO, "setup.py"), src)
  build = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps",
       "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
      capture_output=True, text=True, timeout=300)
  assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
  (wheel,) = (tmp_path / "dist").glob("mmtx-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "mmtx/configs/default.py" in names and "mmtx/main.py" in names
  assert not [n for n in names if n.startswith(("tests/", "experiments/",
                                                "configs/"))], names

  site = tmp_path / "site"
  install = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--no-deps", "--target",
       str(site), str(wheel)], capture_output=True, text=True, timeout=300)
  assert install.returncode == 0, install.stderr[-2000:]

  # Run where neither the checkout nor its configs/ is: the installed copy
  # (first on PYTHONPATH) is the mmtx that runs.
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site),
             MMTX_DATA_DIR=str(tmp_path / "data"))
  which = subprocess.run(
      [sys.executable, "-c", "import mmtx.main; print(mmtx.main.__file__)"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert which.stdout.strip() == str(site / "mmtx" / "main.py"), (
      which.stdout + which.stderr[-2000:])
  out = subprocess.run(
      [sys.executable, "-m", "mmtx.main", "--config.total_steps=4",
       "--config.data.name=sort_of_clevr/tiny", "--config.batch_size=8",
       "--config.eval_every=4", "--config.checkpoint_every=4",
       "--config.data.eval_batch_size=32", "--progress=false"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  # No --config and no --workdir: the packaged default config, runs/default.
  rows = [json.loads(l) for l in open(elsewhere / "runs" / "default" /
                                      "metrics.jsonl")]
  assert rows[-1]["step"] == 4 and "eval/accuracy" in rows[-1], rows[-1]
  # A config named the way the README writes it resolves to the packaged
  # file too (nothing named configs/ exists here): its own arg check runs.
  out = subprocess.run(
      [sys.executable, "-m", "mmtx.main", "--config=configs/clip.py:stpes=2"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "configs/clip.py: unknown arg 'stpes'" in out.stderr, out.stderr
