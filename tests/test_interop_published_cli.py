"""The published-size presets train with the one CLI: clip-B/32 and
coca-B/32 (random init, as `preset=` builds them) take one training step
on a few 224-px image-text pairs ingested from a CSV and evaluate. Slow:
minutes of CPU and a few GiB of memory each."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  """A data dir holding 'pairs': 8 random 256x256 JPEGs with captions."""
  from PIL import Image
  from mmtx.data import ingest
  root = tmp_path_factory.mktemp("pairs")
  rng = np.random.default_rng(0)
  lines = ["filepath,title"]
  for i in range(8):
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), np.uint8)).save(
        root / f"{i}.jpg")
    lines.append(f"{i}.jpg,a photo of thing number {i}")
  (root / "pairs.csv").write_text("\n".join(lines) + "\n")
  data_dir = str(root / "data")
  ingest.ingest("csv", str(root / "pairs.csv"), "pairs", data_dir=data_dir,
                workers=0, verbose=False, images=str(root))
  return data_dir


@pytest.mark.slow
@pytest.mark.parametrize("config", ["clip.py:preset=clip-B/32",
                                    "caption.py:preset=coca-B/32"])
def test_published_preset_trains_through_the_cli(pairs, tmp_path, config):
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "mmtx.main", f"--config=configs/{config},steps=1",
       f"--workdir={workdir}", "--progress=false",
       "--config.data.name=pairs", f"--config.data.data_dir={pairs}",
       "--config.batch_size=2", "--config.data.eval_batch_size=4",
       "--config.data.eval_splits=('train[:4]',)",
       "--config.optimizer.warmup_steps=0", "--config.log_every=1",
       "--config.mesh.cpu_devices=0"],
      cwd=REPO, capture_output=True, text=True, timeout=1800,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train = [r for r in rows if "train/loss" in r]
  assert train and train[-1]["step"] == 1
  assert math.isfinite(train[-1]["train/loss"])
  evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
  assert evals and evals[-1]["step"] == 1
