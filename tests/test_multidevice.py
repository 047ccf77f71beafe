"""8 emulated CPU devices: data parallel and FSDP reach the 1-device losses;
FSDP holds about 1/8 of the params + optimizer state per device."""
import json
import os
import subprocess
import sys

import numpy as np


def test_dp_and_fsdp_match_one_device_and_fsdp_shards_memory():
  script = os.path.join(os.path.dirname(__file__), "multidevice_train_check.py")
  out = subprocess.run([sys.executable, script], capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  res = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
  one = np.array(res["one"]["losses"])
  # Same math, different reduction order across devices: float32 rounding.
  np.testing.assert_allclose(res["dp"]["losses"], one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res["fsdp"]["losses"], one, rtol=1e-5, atol=1e-6)
  assert one[-1] < one[0]
  rep = res["dp"]["state_bytes_per_device"]
  fsdp = res["fsdp"]["state_bytes_per_device"]
  # Only the 1-D biases of width 1 and the scalars stay replicated.
  assert fsdp < rep / 8 * 1.05, (fsdp, rep)
  assert res["fsdp"]["argument_bytes"] < res["dp"]["argument_bytes"] / 4
