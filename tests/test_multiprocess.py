"""A real two-process run on localhost (jax.distributed, CPU collectives)
matches the one-process run: same losses, same final parameters."""
import json
import os
import subprocess
import sys

import numpy as np

from multiprocess_util import run_processes

HERE = os.path.dirname(__file__)


def _losses(workdir):
  return [json.loads(l)["train/loss"] for l in open(f"{workdir}/metrics.jsonl")
          if "train/loss" in l]


def test_two_processes_match_one_process(tmp_path):
  script = os.path.join(HERE, "two_process_check.py")
  one = subprocess.run([sys.executable, script, str(tmp_path / "one")],
                       capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]
  runs = run_processes(script, [tmp_path / "two"])
  outs = [out for _, out in runs]
  for rc, out in runs:
    assert rc == 0, out[-3000:]
  assert "PROCESS 0 of 2 devices 2 DONE" in outs[0], outs[0][-2000:]
  assert "PROCESS 1 of 2 devices 2 DONE" in outs[1], outs[1][-2000:]
  # The same global batches (each process reads half of each), summed in a
  # different order: float32 rounding only.
  np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"),
                             rtol=1e-5, atol=1e-6)
  from mmtx import checkpoint
  params = []
  for name in ("one", "two"):
    ck = checkpoint.Checkpointer(str(tmp_path / name / "checkpoints"),
                                 async_save=False)
    params.append(ck.restore_params()["params"])
    ck.close()
  import jax
  for a, b in zip(jax.tree_util.tree_leaves(params[0]),
                  jax.tree_util.tree_leaves(params[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
