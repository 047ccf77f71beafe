"""WiSE-FT (Wortsman et al. 2022): fine-tuned weights averaged with the
zero-shot ones they started from, theta(alpha) = (1 - alpha) * theta_0 +
alpha * theta_1, which keeps much of the zero-shot robustness that
fine-tuning loses (experiments/wise_ft.py sweeps alpha).

    params = interpolate(zero_shot_params, fine_tuned_params, alpha=0.5)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def interpolate(zero_shot, fine_tuned, alpha: float):
  """theta_0 + alpha * (theta_1 - theta_0) per leaf, in each leaf's dtype
  (alpha 0 gives `zero_shot`, 1 `fine_tuned`, bit for bit). The two trees
  must have the same paths and shapes (the same model config)."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"wise_ft.interpolate: alpha must be in [0, 1], got "
                     f"{alpha}.")
  paths0 = jax.tree_util.tree_flatten_with_path(zero_shot)[0]
  paths1 = jax.tree_util.tree_flatten_with_path(fine_tuned)[0]
  names0 = {jax.tree_util.keystr(p): jnp.shape(v) for p, v in paths0}
  names1 = {jax.tree_util.keystr(p): jnp.shape(v) for p, v in paths1}
  if names0 != names1:
    diff = sorted(k for k in set(names0) | set(names1)
                  if names0.get(k) != names1.get(k))
    raise ValueError(f"wise_ft.interpolate: the params differ in path or "
                     f"shape at {diff[:5]}: both must be of one model config.")

  def mix(a, b):
    if alpha == 0.0:
      return a
    if alpha == 1.0:
      return b
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return (a32 + alpha * (b32 - a32)).astype(jnp.asarray(a).dtype)

  return jax.tree_util.tree_map(mix, zero_shot, fine_tuned)
