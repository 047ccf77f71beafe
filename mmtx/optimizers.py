"""The optax optimizer from `config.optimizer`.

AdamW (Loshchilov & Hutter 2019) with linear warmup and then cosine decay,
a constant rate, or warmup-stable-decay (constant, then a linear decay over
the last `decay_fraction` of the steps; Hu et al. 2024, MiniCPM), global-norm
clipping, no weight decay on biases / norms / embeddings (only `kernel`
leaves decay), gradient accumulation (optax.MultiSteps), freezing and per-group
learning-rate multipliers by regex on '/'-joined parameter paths, and optional
layer-wise learning-rate decay (BEiT / ELECTRA).
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def tree_paths(tree):
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def schedule(cfg, total_steps: int, every: int = 1):
  """Learning rate per optimizer update, when an update takes `every`
  trainer steps (optimizer.accumulate_steps): total_steps and
  cfg.warmup_steps count trainer steps, as the config does."""
  lr = cfg.learning_rate
  total_steps = max(int(total_steps) // every, 1)
  warmup = int(cfg.warmup_steps) // every
  if warmup >= total_steps:
    warmup = total_steps // 10
  warmup = max(warmup, 1)
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(total_steps, warmup + 1),
        end_value=lr * cfg.end_lr_factor)
  if cfg.schedule == "wsd":
    frac = float(cfg.get("decay_fraction", 0.2))
    if not 0.0 < frac <= 1.0:
      raise ValueError(f"optimizer.decay_fraction must be in (0, 1], got "
                       f"{frac}.")
    decay = max(int(round(frac * total_steps)), 1)
    stable = max(total_steps - decay, warmup)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr),
         optax.linear_schedule(lr, lr * cfg.end_lr_factor,
                               max(total_steps - stable, 1))],
        [warmup, stable])
  if cfg.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
        [warmup])
  raise ValueError(f"optimizer.schedule must be 'cosine', 'wsd' or "
                   f"'constant', got {cfg.schedule!r}.")


def _layer_scales(params, decay: float):
  """Per-leaf lr factor: decay^(L - i) for layer i of L, decay^(L+1) for the
  embeddings and 1 for everything after the last layer (heads, final norm)."""
  paths = tree_paths(params)
  leaves = jax.tree_util.tree_leaves(paths)
  nums = [int(m.group(1)) for p in leaves for m in [re.search(r"layers_(\d+)", p)]
          if m]
  stacked = [leaf.shape[0] for p, leaf in zip(
      leaves, jax.tree_util.tree_leaves(params)) if re.search(r"(^|/)layers/", p)]
  n = max(nums + [-1]) + 1 if nums else (max(stacked) if stacked else 0)

  def one(p, leaf):
    m = re.search(r"layers_(\d+)", p)
    if m:
      return jnp.asarray(decay ** (n - int(m.group(1))), jnp.float32)
    if re.search(r"(^|/)layers/", p):
      f = decay ** (n - np.arange(leaf.shape[0]))
      return jnp.asarray(f.reshape((-1,) + (1,) * (leaf.ndim - 1)), jnp.float32)
    if re.search(r"embedding|posemb|cls", p):
      return jnp.asarray(decay ** (n + 1), jnp.float32)
    return jnp.asarray(1.0, jnp.float32)

  return jax.tree_util.tree_map_with_path(lambda p, x: one(path_str(p), x),
                                          params)


def _scale_by_tree(scales_fn):
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    scales = scales_fn(updates)
    return jax.tree_util.tree_map(lambda u, s: u * s.astype(u.dtype), updates,
                                  scales), state
  return optax.GradientTransformation(init, update)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, Any]:
  """-> (optimizer, learning rate by trainer step).

  With accumulate_steps = k the optimizer updates once per k trainer steps
  and its schedule counts updates, so a run of total_steps trainer steps on
  batches of B follows the schedule of total_steps / k steps on batches of
  kB (warmup_steps likewise scaled)."""
  if cfg.name != "adamw":
    raise ValueError(f"optimizer.name {cfg.name!r} is not supported; use "
                     f"'adamw'.")
  every = max(int(cfg.accumulate_steps or 1), 1)
  sched = schedule(cfg, total_steps, every)
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
      lambda p, _: path_str(p).endswith("kernel"), params)
  chain = []
  if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  chain.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  if cfg.weight_decay:
    chain.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
  if cfg.layer_decay and cfg.layer_decay != 1.0:
    chain.append(_scale_by_tree(lambda u: _layer_scales(u, cfg.layer_decay)))
  if cfg.lr_multipliers:
    mults = [(re.compile(rx), float(m)) for rx, m in cfg.lr_multipliers]

    def mult_tree(u):
      def one(p):
        for rx, m in mults:
          if rx.search(p):
            return jnp.asarray(m, jnp.float32)
        return jnp.asarray(1.0, jnp.float32)
      return jax.tree_util.tree_map_with_path(lambda p, _: one(path_str(p)), u)
    chain.append(_scale_by_tree(mult_tree))
  chain.append(optax.scale_by_learning_rate(sched))
  tx = optax.chain(*chain)
  if cfg.freeze:
    frozen = [re.compile(rx) for rx in cfg.freeze]
    labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda p, _: "frozen" if any(r.search(path_str(p)) for r in frozen)
        else "train", params)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               labels)
  if every > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=every)
    return tx, lambda step: sched(step // every)
  return tx, sched
