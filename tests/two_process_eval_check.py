"""One process of a localhost jax.distributed run of every task's
evaluation with the stub models (see test_eval_tasks.py).

Env: MMTX_NUM_PROCESSES, MMTX_PROCESS_ID, JAX_COORDINATOR_ADDRESS (none:
one process). argv[1]: the data dir; argv[2]: where to write
process P's metrics, eval_P.json; argv[3:]: the cases to run.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

from mmtx import sharding  # noqa: E402
import eval_cases  # noqa: E402

if __name__ == "__main__":
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh()
  out = {}
  for name in sys.argv[3:]:
    out[name], _ = eval_cases.evaluate(name, sys.argv[1], mesh)
  with open(os.path.join(sys.argv[2], f"eval_{jax.process_index()}.json"),
            "w") as f:
    json.dump(out, f)
  print(f"PROCESS {jax.process_index()} of {jax.process_count()} DONE",
        flush=True)
