"""A small regression task for exercising the real trainer in seconds."""
import flax.linen as nn
import grain
import jax.numpy as jnp
import ml_collections
import numpy as np


def base_config(**kw):
  c = ml_collections.ConfigDict(dict(
      seed=0, total_steps=12, batch_size=8, log_every=2, eval_every=6,
      checkpoint_every=3, keep_checkpoints=10, best_metric="neg_mse",
      best_mode="max", task="regression",
      mesh=dict(data=-1, fsdp=1, tensor=1, num_devices=-1),
      data=dict(num_examples=64, poison_after=-1, features=4),
      model=dict(hidden=16, dropout=0.1),
      optimizer=dict(name="adamw", learning_rate=1e-2, b1=0.9, b2=0.999,
                     eps=1e-8, weight_decay=1e-4, warmup_steps=2,
                     schedule="cosine", end_lr_factor=0.0, grad_clip_norm=1.0,
                     accumulate_steps=1, freeze=(), lr_multipliers=(),
                     layer_decay=0.0),
      init_from=dict(workdir="", rules=())))
  c.update_from_flattened_dict(kw)
  c.lock()
  return c


def optimizer_config(**kw):
  """A config.optimizer with nothing on but AdamW at a constant 0.1 (no
  decay, clipping, accumulation or freezing); `kw` overrides."""
  c = dict(name="adamw", learning_rate=0.1, b1=0.9, b2=0.999, eps=1e-8,
           weight_decay=0.0, warmup_steps=1, schedule="constant",
           end_lr_factor=0.0, grad_clip_norm=0.0, accumulate_steps=1,
           freeze=(), lr_multipliers=(), layer_decay=0.0)
  c.update(kw)
  return ml_collections.ConfigDict(c)


class Mlp(nn.Module):
  hidden: int
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, *, deterministic=True):
    h = nn.Dense(self.hidden, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "mlp")), name="dense_in")(x)
    h = nn.Dropout(self.dropout)(nn.relu(h), deterministic=deterministic)
    return nn.Dense(1, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("mlp", "embed")), name="dense_out")(h)


class RegressionTask:
  """y = sum(x * w_true); data item i is fixed by i (deterministic)."""

  def __init__(self, config):
    self.config = config
    self.model = Mlp(config.model.hidden, config.model.dropout)

  def _records(self):
    config = self.config
    rs = np.random.RandomState(0)
    f = config.data.features
    x = rs.randn(config.data.num_examples, f).astype(np.float32)
    w = np.resize(np.array([1.0, -2.0, 0.5, 3.0], np.float32), f)
    y = (x @ w)[:, None]
    if config.data.poison_after >= 0:
      y = y.copy()
      y[:] = np.nan
    return [{"x": x[i], "y": y[i]} for i in range(len(x))]

  def init_batch(self):
    b, f = self.config.batch_size, self.config.data.features
    return {"x": np.zeros((b, f), np.float32),
            "y": np.zeros((b, 1), np.float32)}

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch["x"])

  def loss_fn(self, params, batch, rng, train_):
    pred = self.model.apply({"params": params}, batch["x"],
                            deterministic=not train_, rngs={"dropout": rng})
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"mse": loss}

  def train_iterator(self, index, count):
    # Like mmtx.data: one global shuffle, host `index` takes every count-th
    # example, and batch_size is global.
    ds = grain.MapDataset.source(self._records()).shuffle(
        seed=self.config.seed).repeat()
    return iter(ds[index::count].batch(self.config.batch_size // count,
                                       drop_remainder=True))

  def evaluate(self, params, mesh):
    recs = self._records()
    x = np.stack([r["x"] for r in recs])
    y = np.stack([r["y"] for r in recs])
    mse = float(jnp.mean((self.model.apply({"params": params}, x) - y) ** 2))
    return {"neg_mse": -mse}, f"eval mse {mse:.4f}"
