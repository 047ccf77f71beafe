"""The trainer's knobs against independent references: gradient clipping
(a float64 numpy AdamW), accumulate_steps=k (one step on a k-times larger
batch), keep_checkpoints with best-checkpoint selection (a scripted eval
metric), and dropout's drop fraction and 1/(1-p) scale."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmtx import layers, optimizers, train
from toy_task import RegressionTask, base_config
from toy_task import optimizer_config as _opt_cfg




def _numpy_adam(grads, lr_at, b1=0.9, b2=0.999, eps=1e-8, clip=0.0):
  """float64 Adam on a list of flat gradient vectors; returns the summed
  update. clip > 0: each gradient scaled to global norm <= clip first."""
  m = v = 0.0
  total = 0.0
  for t, g in enumerate(grads, 1):
    g = np.asarray(g, np.float64)
    norm = np.linalg.norm(g)
    if clip and norm > clip:
      g = g * clip / norm
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    total = total - lr_at(t) * (m / (1 - b1 ** t)) / (
        np.sqrt(v / (1 - b2 ** t)) + eps)
  return total


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_gradient_clipping_matches_numpy_adam(clip):
  """Adam is scale-free per step, so clipping shows from the second step:
  a clipped large gradient followed by an unclipped small one."""
  params = {"a": {"kernel": jnp.ones((3, 4))}, "b": {"bias": jnp.ones(5)}}
  rs = np.random.RandomState(0)
  big = jax.tree_util.tree_map(lambda p: jnp.asarray(
      rs.randn(*p.shape) * 5.0, jnp.float32), params)
  small = jax.tree_util.tree_map(lambda p: jnp.asarray(
      rs.randn(*p.shape) * 0.05, jnp.float32), params)
  tx, _ = optimizers.make_optimizer(_opt_cfg(grad_clip_norm=clip), 100)
  state, p = tx.init(params), params
  for g in (big, small):
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
  flat = lambda t: np.concatenate(  # noqa: E731
      [np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
  got = flat(p) - flat(params)
  assert np.linalg.norm(flat(big)) > 1.0 > np.linalg.norm(flat(small))
  # Constant schedule with warmup 1: lr 0 at the first update, then 0.1.
  want = _numpy_adam([flat(big), flat(small)],
                     lambda t: 0.0 if t == 1 else 0.1, clip=clip)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
  unclipped = _numpy_adam([flat(big), flat(small)],
                          lambda t: 0.0 if t == 1 else 0.1)
  if clip:   # the case can tell clipping from none
    assert np.abs(want - unclipped).max() > 1e-3


def _final_params(tmp_path, name, **kw):
  cfg = base_config(eval_every=0, log_every=1, checkpoint_every=100,
                    **{"model.dropout": 0.0, **kw})
  train.train_and_evaluate(cfg, str(tmp_path / name), RegressionTask(cfg),
                           progress=False)
  from mmtx import checkpoint
  ck = checkpoint.Checkpointer(str(tmp_path / name / "checkpoints"),
                               async_save=False)
  p = ck.restore_params(ck.all_steps()[-1])["params"]
  ck.close()
  return jax.tree_util.tree_map(np.asarray, p)


def test_accumulate_steps_equals_one_step_on_a_k_times_larger_batch(tmp_path):
  """6 updates on batches of 16 (warmup 2) == 12 trainer steps on batches
  of 8 with accumulate_steps=2 (warmup 4 trainer steps): the toy task's
  batches of 8 are the halves of its batches of 16; cosine schedule and
  clipping as configured, both counted in trainer steps."""
  big = _final_params(tmp_path, "big", total_steps=6, batch_size=16)
  acc = _final_params(tmp_path, "acc", total_steps=12, batch_size=8,
                      **{"optimizer.accumulate_steps": 2,
                         "optimizer.warmup_steps": 4})
  one = _final_params(tmp_path, "one", total_steps=6, batch_size=8)
  for a, b, c in zip(jax.tree_util.tree_leaves(acc),
                     jax.tree_util.tree_leaves(big),
                     jax.tree_util.tree_leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # ... and not what 6 steps on the half batches give.
  assert any(not np.allclose(a, c, rtol=1e-3) for a, c in zip(
      jax.tree_util.tree_leaves(acc), jax.tree_util.tree_leaves(one)))


class _Scripted(RegressionTask):
  """Eval metric 'score' from a fixed list, one value per evaluation."""

  def __init__(self, config, scores):
    super().__init__(config)
    self.scores = list(scores)

  def evaluate(self, params, mesh):
    return {"score": self.scores.pop(0)}, ""


@pytest.mark.parametrize("mode,best_step", [("max", 4), ("min", 6)])
def test_keep_checkpoints_keeps_the_latest_and_the_best(tmp_path, mode,
                                                        best_step):
  """Checkpoints every step, evals at 2, 4, ..., 10 with scores 0.5, 0.9,
  0.1, 0.4, 0.6: keep_checkpoints=2 keeps steps 9 and 10, and the best eval
  step (max: 4, min: 6)."""
  cfg = base_config(total_steps=10, eval_every=2, checkpoint_every=1,
                    keep_checkpoints=2, best_metric="score", best_mode=mode,
                    log_every=5)
  train.train_and_evaluate(cfg, str(tmp_path), _Scripted(
      cfg, [0.5, 0.9, 0.1, 0.4, 0.6]), progress=False)
  from mmtx import checkpoint
  ck = checkpoint.Checkpointer(str(tmp_path / "checkpoints"),
                               async_save=False)
  steps = ck.all_steps()
  ck.close()
  assert steps == sorted({best_step, 9, 10}), steps


def _check_dropped(y, kept_value, rate):
  """A fraction `rate` of y is 0 (within 4 binomial std) and every other
  entry is kept_value / (1 - rate)."""
  y = np.asarray(y, np.float64)
  zero = np.mean(y == 0)
  assert abs(zero - rate) < 4 * np.sqrt(rate * (1 - rate) / y.size), zero
  np.testing.assert_allclose(y[y != 0], np.broadcast_to(
      kept_value / (1 - rate), y.shape)[y != 0], rtol=1e-5)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_mlp_dropout_drops_a_fraction_p_and_scales_by_1_over_1_minus_p(rate):
  """Mlp (relu) with identity weights and zero biases on a positive input:
  the output is the dropped hidden layer itself."""
  from mmtx.layers.transformer import Mlp
  d = 16
  x = jnp.asarray(np.random.RandomState(0).rand(32, 24, d) + 0.5,
                  jnp.float32)
  m = Mlp(d, "relu", rate)
  p = nn.meta.unbox(m.init(jax.random.key(0), x))
  p = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.eye(d) if path[-1].key == "kernel"
      else jnp.zeros_like(a), p)
  np.testing.assert_allclose(m.apply(p, x), x, rtol=1e-6)  # deterministic
  y = m.apply(p, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  _check_dropped(y, np.asarray(x), rate)


@pytest.mark.parametrize("rate", [0.1, 0.4])
def test_attention_dropout_drops_weights_and_scales_by_1_over_1_minus_p(rate):
  """One head, zero query/key kernels (uniform weights 1/T), identity value
  and output kernels, one-hot tokens: each output row is its query's dropped
  attention weights, 0 or (1/T) / (1 - p)."""
  t = 32
  x = jnp.broadcast_to(jnp.eye(t), (64, t, t))
  m = layers.MultiHeadAttention(num_heads=1, dropout_rate=rate)
  p = nn.meta.unbox(m.init(jax.random.key(0), x))
  eye = jnp.eye(t)

  def fill(path, a):
    name, leaf = path[-2].key, path[-1].key
    if leaf == "bias" or name in ("query", "key"):
      return jnp.zeros_like(a)
    return eye.reshape(a.shape)
  p = jax.tree_util.tree_map_with_path(fill, p)
  np.testing.assert_allclose(m.apply(p, x), np.full(x.shape, 1 / t),
                             rtol=1e-6)
  y = m.apply(p, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
  _check_dropped(y, np.full(x.shape, 1 / t), rate)
