"""Run in a fresh process with 8 CPU devices (see test_multidevice.py).

Trains the toy regression task on 1 device, data-parallel on 8 and FSDP on 8,
prints the per-step losses and the compiled step's per-device argument bytes
as JSON.
"""
import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

from mmtx import optimizers, sharding, train  # noqa: E402
from toy_task import RegressionTask, base_config  # noqa: E402


def run(mesh_kw):
  kw = {f"mesh.{k}": v for k, v in mesh_kw.items()}
  cfg = base_config(total_steps=8, log_every=1, eval_every=0,
                    checkpoint_every=100, batch_size=16,
                    **{"data.features": 64, "model.hidden": 256,
                       "optimizer.weight_decay": 0.0}, **kw)
  with cfg.unlocked():
    cfg.model.hidden = 256
  task = RegressionTask()
  with tempfile.TemporaryDirectory() as d:
    train.train_and_evaluate(cfg, d, task, progress=False)
    losses = [json.loads(l)["train/loss"] for l in open(f"{d}/metrics.jsonl")
              if "train/loss" in l]
  # Per-device bytes of params + optimizer state in the compiled step.
  mesh = sharding.make_mesh(**cfg.mesh)
  model = task.build_model(cfg)
  tx, _ = optimizers.make_optimizer(cfg.optimizer, cfg.total_steps)
  state, shard, _ = train.create_train_state(cfg, task, model, tx, mesh,
                                             jax.random.key(0))
  step = jax.jit(train.make_train_step(task, model, tx),
                 in_shardings=(shard, sharding.batch_sharding(mesh)))
  batch = sharding.put_batch(task.init_batch(cfg), mesh)
  mem = step.lower(state, batch).compile().memory_analysis()
  state_bytes = sum(
      x.addressable_shards[0].data.nbytes
      for x in jax.tree_util.tree_leaves((state.params, state.opt_state)))
  return {"losses": losses, "argument_bytes": mem.argument_size_in_bytes,
          "state_bytes_per_device": state_bytes}


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  out = {"one": run(dict(num_devices=1)),
         "dp": run(dict(data=8)),
         "fsdp": run(dict(data=1, fsdp=8))}
  print("RESULT " + json.dumps(out))
