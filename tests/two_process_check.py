"""One process of a localhost jax.distributed run (see test_multiprocess.py).

Env: MMTX_NUM_PROCESSES, MMTX_PROCESS_ID, JAX_COORDINATOR_ADDRESS; argv[1] is
the workdir. Trains the toy task with the real trainer on the global mesh.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from mmtx import train  # noqa: E402
from toy_task import RegressionTask, base_config  # noqa: E402

if __name__ == "__main__":
  cfg = base_config(total_steps=8, log_every=1, eval_every=0,
                    checkpoint_every=4, batch_size=16,
                    **{"optimizer.weight_decay": 0.0,
                       # Dropout masks follow row positions, and the rows of
                       # a global batch are ordered by process: no dropout.
                       "model.dropout": 0.0})
  train.train_and_evaluate(cfg, sys.argv[1], RegressionTask(cfg),
                           progress=False)
  import jax
  print(f"PROCESS {jax.process_index()} of {jax.process_count()} "
        f"devices {jax.device_count()} DONE", flush=True)
