"""config.optimizer features against hand-computed updates."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmtx import optimizers
from toy_task import optimizer_config as cfg




PARAMS = {
    "embedding": {"embedding": jnp.ones((3, 2))},
    "layers_0": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}},
    "layers_1": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}},
    "head": {"kernel": jnp.ones((2, 1)), "bias": jnp.ones(1)},
}


def one_update(c, grads=None, steps=1):
  tx, _ = optimizers.make_optimizer(c, total_steps=100)
  state = tx.init(PARAMS)
  grads = grads or jax.tree_util.tree_map(jnp.ones_like, PARAMS)
  params = PARAMS
  for _ in range(steps):
    upd, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, upd)
  return jax.tree_util.tree_map(lambda a, b: np.asarray(a - b), params, PARAMS)


def test_adam_first_step_is_minus_lr_times_sign():
  # Adam's first step: m/(sqrt(v)+eps) = g/|g| = 1; constant schedule after a
  # 1-step warmup starts at lr * 0 at step 0 -> use step 2 instead.
  d = one_update(cfg(), steps=2)
  # step 0: lr 0; step 1: lr 0.1 * 1 (bias-corrected Adam ratio is 1).
  np.testing.assert_allclose(d["head"]["kernel"], -0.1, rtol=1e-4)


def test_weight_decay_only_on_kernels():
  zero = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
  d = one_update(cfg(weight_decay=0.5), grads=zero, steps=2)
  # decoupled decay: -lr * wd * param = -0.1 * 0.5 * 1 at the second step.
  np.testing.assert_allclose(d["head"]["kernel"], -0.05, rtol=1e-4)
  np.testing.assert_allclose(d["layers_0"]["dense"]["kernel"], -0.05, rtol=1e-4)
  for leaf in (d["head"]["bias"], d["layers_0"]["dense"]["bias"],
               d["embedding"]["embedding"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_freeze_by_regex():
  d = one_update(cfg(freeze=("^layers_0/", "embedding")), steps=2)
  np.testing.assert_array_equal(d["layers_0"]["dense"]["kernel"], 0.0)
  np.testing.assert_array_equal(d["embedding"]["embedding"], 0.0)
  np.testing.assert_allclose(d["layers_1"]["dense"]["kernel"], -0.1, rtol=1e-4)


def test_lr_multipliers_by_regex():
  d = one_update(cfg(lr_multipliers=(("^head/", 0.25),)), steps=2)
  np.testing.assert_allclose(d["head"]["kernel"], -0.025, rtol=1e-4)
  np.testing.assert_allclose(d["layers_1"]["dense"]["kernel"], -0.1, rtol=1e-4)


def test_layer_wise_lr_decay():
  d = one_update(cfg(layer_decay=0.5), steps=2)
  # L = 2 layers: layer i gets 0.5^(2 - i), embeddings 0.5^3, the head 1.
  np.testing.assert_allclose(d["layers_0"]["dense"]["kernel"], -0.1 * 0.25,
                             rtol=1e-4)
  np.testing.assert_allclose(d["layers_1"]["dense"]["kernel"], -0.1 * 0.5,
                             rtol=1e-4)
  np.testing.assert_allclose(d["embedding"]["embedding"], -0.1 * 0.125,
                             rtol=1e-4)
  np.testing.assert_allclose(d["head"]["kernel"], -0.1, rtol=1e-4)


def test_layer_decay_on_scanned_layers_matches_loop():
  scales = optimizers._layer_scales(  # noqa: SLF001
      {"layers": {"w": jnp.ones((3, 2))}, "head": {"w": jnp.ones(2)}}, 0.5)
  np.testing.assert_allclose(np.asarray(scales["layers"]["w"])[:, 0],
                             [0.125, 0.25, 0.5])


def test_gradient_accumulation_equals_mean_gradient_step():
  g1 = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 1.0), PARAMS)
  g2 = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 3.0), PARAMS)
  c = cfg(schedule="constant", warmup_steps=1, learning_rate=0.1)
  acc, _ = optimizers.make_optimizer(cfg(accumulate_steps=2), 100)
  plain, _ = optimizers.make_optimizer(c, 100)
  s_acc, s_plain = acc.init(PARAMS), plain.init(PARAMS)
  p_acc = PARAMS
  for g in (g1, g2, g1, g2):
    u, s_acc = acc.update(g, s_acc, p_acc)
    p_acc = optax.apply_updates(p_acc, u)
  p_plain = PARAMS
  mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, g1, g2)
  for _ in range(2):
    u, s_plain = plain.update(mean, s_plain, p_plain)
    p_plain = optax.apply_updates(p_plain, u)
  for a, b in zip(jax.tree_util.tree_leaves(p_acc),
                  jax.tree_util.tree_leaves(p_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_unknown_optimizer_and_schedule_are_errors():
  with pytest.raises(ValueError, match="adamw"):
    optimizers.make_optimizer(cfg(name="sgd"), 10)
  with pytest.raises(ValueError, match="cosine"):
    optimizers.make_optimizer(cfg(schedule="step"), 10)


def test_warmup_cosine_schedule_values():
  _, sched = optimizers.make_optimizer(
      cfg(schedule="cosine", warmup_steps=10, end_lr_factor=0.1), 110)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(5)), 0.05, rtol=1e-6)
  np.testing.assert_allclose(float(sched(10)), 0.1, rtol=1e-6)
  # half way through the cosine: end + (peak - end) * 0.5
  np.testing.assert_allclose(float(sched(60)), 0.01 + 0.09 * 0.5, rtol=1e-4)
  np.testing.assert_allclose(float(sched(110)), 0.01, rtol=1e-4)


def test_warmup_stable_decay_schedule_values():
  # 110 steps, warmup 10, decay_fraction 0.2: constant 0.1 until step 88,
  # then a straight line to 0.1 * 0.1 at step 110.
  _, sched = optimizers.make_optimizer(
      cfg(schedule="wsd", warmup_steps=10, end_lr_factor=0.1,
          decay_fraction=0.2), 110)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(5)), 0.05, rtol=1e-6)
  np.testing.assert_allclose(float(sched(10)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(sched(88)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(sched(99)), 0.1 - 0.09 * 11 / 22, rtol=1e-5)
  np.testing.assert_allclose(float(sched(110)), 0.01, rtol=1e-5)
  np.testing.assert_allclose(float(sched(500)), 0.01, rtol=1e-5)
  with pytest.raises(ValueError, match="decay_fraction"):
    optimizers.make_optimizer(cfg(schedule="wsd", decay_fraction=0.0), 10)
