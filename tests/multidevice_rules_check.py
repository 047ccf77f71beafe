"""Run in a fresh process with 2 CPU devices (see test_multidevice.py).

Trains a one-layer Transformer regressor with the real trainer on
data=2 and prints as JSON: whether its evaluation ran under the
logical-axis rules (and how many sharding constraints its lowered eval
function holds, in the trainer and outside it), its eval metric both ways,
and the warnings `sharding.constrain` logged for rules that cannot apply.
"""
import json
import logging
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=2")
sys.path.insert(0, os.path.dirname(__file__))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mmtx import layers, sharding, train  # noqa: E402
from toy_task import RegressionTask, base_config  # noqa: E402


class Regressor(nn.Module):
  @nn.compact
  def __call__(self, x, *, deterministic=True):
    h = nn.Dense(16)(x).reshape(x.shape[0], 2, 8)
    h = layers.Encoder(num_layers=1, num_heads=2, mlp_dim=16)(h)
    return nn.Dense(1)(h.mean(axis=1))


def constraints(hlo: str) -> int:
  return hlo.count("sdy.sharding_constraint") + hlo.count("@Sharding")


class EncoderTask(RegressionTask):
  seen = []

  def __init__(self, config):
    super().__init__(config)
    self.model = Regressor()

  def evaluate(self, params, mesh):
    model = self.model
    recs = self._records()
    x = np.stack([r["x"] for r in recs])
    y = np.stack([r["y"] for r in recs])
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
    mse = float(jnp.mean((fn(params, x) - y) ** 2))
    self.params = params
    self.seen.append(dict(rules=bool(nn.get_logical_axis_rules()),
                          constraints=constraints(
                              fn.lower(params, x).as_text()),
                          neg_mse=-mse))
    return {"neg_mse": -mse}, ""


class Captured(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def main():
  assert jax.device_count() == 2, jax.devices()
  cfg = base_config(total_steps=2, log_every=1, eval_every=2,
                    checkpoint_every=100, batch_size=8,
                    **{"mesh.data": 2})
  task = EncoderTask(cfg)
  with tempfile.TemporaryDirectory() as d:
    train.train_and_evaluate(cfg, d, task, progress=False)
  inside = task.seen[-1]
  # The same evaluation of the same params, outside the trainer (no rules).
  task.evaluate(task.params, None)
  outside = task.seen[-1]

  captured = Captured()
  logging.getLogger("mmtx.sharding").addHandler(captured)
  mesh = sharding.make_mesh(data=2)
  odd = jnp.ones((3, 4, 8))      # 3 rows do not split over 2 devices
  with sharding.use_rules(mesh):
    for _ in range(2):            # logged once, not per trace
      jax.jit(lambda x: sharding.constrain(x, sharding.TOKENS) * 2).lower(odd)
    jax.jit(lambda x: sharding.constrain(x, ("act_batch", "typo", None))
            ).lower(jnp.ones((4, 4, 8)))
  rules = sharding.RULES + (("act_seq", "sequence"),)
  with sharding.use_rules(mesh, rules):
    jax.jit(lambda x: sharding.constrain(x, ("act_batch", "act_seq", None))
            ).lower(jnp.ones((4, 4, 8)))
  print("RESULT " + json.dumps(dict(inside=inside, outside=outside,
                                    logged=captured.messages)))


if __name__ == "__main__":
  main()
