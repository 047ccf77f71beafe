"""The reproduction scripts run end to end (tiny data, a few steps)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sort_of_clevr_script_writes_its_table(tmp_path):
  env = dict(os.environ, MMTX_DATA_DIR=str(tmp_path / "data"))
  out = subprocess.run(
      [sys.executable, "experiments/sort_of_clevr.py", "--quick",
       f"--out={tmp_path / 'soc'}"], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  md = (tmp_path / "soc" / "results.md").read_text()
  for name in ("cross_attention", "cnn_mlp_late", "question_only"):
    assert f"| {name} |" in md
  assert "(floor" in md and "machine:" in md
  res = json.loads((tmp_path / "soc" / "results.json").read_text())
  assert {r["name"] for r in res} == {"cross_attention", "cnn_mlp_late",
                                      "question_only"}
  assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 for r in res)
