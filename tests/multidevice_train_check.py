"""Run in a fresh process with 8 CPU devices (see test_multidevice.py).

Trains the toy regression task on 1 device, data-parallel on 8, FSDP on 8
and data 2 x tensor 4, prints the per-step losses, the compiled step's
per-device argument bytes and each parameter's PartitionSpec as JSON, and
the PartitionSpecs of an embedding + scanned encoder on a fsdp 2 x tensor 4
mesh.
"""
import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(__file__))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmtx import layers, optimizers, sharding, train  # noqa: E402
from toy_task import RegressionTask, base_config  # noqa: E402


def run(mesh_kw):
  kw = {f"mesh.{k}": v for k, v in mesh_kw.items()}
  cfg = base_config(total_steps=8, log_every=1, eval_every=0,
                    checkpoint_every=100, batch_size=16,
                    **{"data.features": 64, "model.hidden": 256,
                       "optimizer.weight_decay": 0.0}, **kw)
  with cfg.unlocked():
    cfg.model.hidden = 256
  task = RegressionTask(cfg)
  with tempfile.TemporaryDirectory() as d:
    train.train_and_evaluate(cfg, d, task, progress=False)
    losses = [json.loads(l)["train/loss"] for l in open(f"{d}/metrics.jsonl")
              if "train/loss" in l]
  # Per-device bytes of params + optimizer state in the compiled step.
  mesh = sharding.make_mesh(**cfg.mesh)
  tx, _ = optimizers.make_optimizer(cfg.optimizer, cfg.total_steps)
  state, shard, _ = train.create_train_state(task, tx, mesh,
                                             jax.random.key(0))
  step = jax.jit(train.make_train_step(task, tx),
                 in_shardings=(shard, sharding.batch_sharding(mesh)))
  batch = sharding.put_batch(task.init_batch(), mesh)
  mem = step.lower(state, batch).compile().memory_analysis()
  state_bytes = sum(
      x.addressable_shards[0].data.nbytes
      for x in jax.tree_util.tree_leaves((state.params, state.opt_state)))
  return {"losses": losses, "argument_bytes": mem.argument_size_in_bytes,
          "state_bytes_per_device": state_bytes,
          "specs": _specs(shard.params)}


def _specs(shardings):
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  return {optimizers.path_str(p): [a if a is None or isinstance(a, str)
                                   else list(a) for a in s.spec]
          for p, s in flat}


class _Tower(nn.Module):
  @nn.compact
  def __call__(self, ids):
    x = layers.TokenEmbedding(vocab_size=40, features=16, name="tok")(ids)
    x = layers.Encoder(num_layers=2, num_heads=4, mlp_dim=32, scan=True,
                       name="enc")(x)
    return layers.TokenEmbedding(vocab_size=42, features=16, name="odd")(
        ids) + x


def model_specs():
  """(specs, max |sharded - one-device output|) of _Tower on fsdp 2 x
  tensor 4: params placed by the rules, the batch on ('data', 'fsdp')."""
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  ids = np.random.RandomState(0).randint(1, 40, (4, 5)).astype(np.int32)
  boxed = jax.eval_shape(_Tower().init, jax.random.key(0), ids)["params"]
  shardings = sharding.param_shardings(boxed, mesh)
  params = nn.meta.unbox(_Tower().init(jax.random.key(1), ids)["params"])
  one = _Tower().apply({"params": params}, ids)
  placed = jax.device_put(params, nn.meta.unbox(shardings))
  apply = jax.jit(lambda p, x: _Tower().apply({"params": p}, x))
  many = apply(placed, sharding.put_batch({"ids": ids}, mesh)["ids"])
  return _specs(shardings), float(np.abs(np.asarray(many) -
                                         np.asarray(one)).max())


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  out = {"one": run(dict(num_devices=1)),
         "dp": run(dict(data=8)),
         "fsdp": run(dict(data=1, fsdp=8)),
         "tp": run(dict(data=2, fsdp=1, tensor=4)),
         "model": model_specs()}
  print("RESULT " + json.dumps(out))
