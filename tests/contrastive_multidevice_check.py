"""Checks the sharded contrastive losses on 8 simulated CPU devices.

Run as a script (tests/test_losses.py does, in a subprocess): the device count
must be set before jax is imported. Exits non-zero on a mismatch.
The reference is the one-device loss of `mmtx.losses`, itself checked against
float64 numpy and open_clip in tests/test_losses.py.
"""
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from mmtx import losses  # noqa: E402

BATCH, DIM = 16, 8


def features(seed):
  rng = np.random.default_rng(seed)
  img = rng.normal(size=(BATCH, DIM)).astype(np.float32)
  txt = rng.normal(size=(BATCH, DIM)).astype(np.float32)
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  # Make the pairs related so the positives matter.
  txt = 0.6 * img + 0.4 * txt
  return jnp.asarray(img), jnp.asarray(txt)


def one_device(kind, img, txt, scale, bias):
  if kind == "softmax":
    return losses.softmax_contrastive_loss(img, txt, scale)
  return losses.sigmoid_contrastive_loss(img, txt, scale, bias)


def main():
  assert jax.device_count() == 8, jax.devices()
  devices = np.array(jax.devices())
  layouts = [((2, 2, 2), ("data", "fsdp")), ((8, 1, 1), "data"),
             ((2, 2, 2), ("data",)), ((1, 4, 2), ("data", "fsdp"))]
  kinds = [("softmax", False), ("sigmoid", True), ("sigmoid", False)]
  img, txt = features(0)
  scale, bias = jnp.float32(7.3), jnp.float32(-2.1)
  failures = []
  for shape, axis_name in layouts:
    mesh = Mesh(devices.reshape(shape), ("data", "fsdp", "tensor"))
    for kind, ring in kinds:
      ref_fn = jax.jit(jax.value_and_grad(
          lambda *a, k=kind: one_device(k, *a), argnums=(0, 1, 2, 3)))
      fn = jax.jit(jax.value_and_grad(
          lambda i, t, s, b, k=kind, r=ring, m=mesh, ax=axis_name:
          losses.contrastive_loss_on_mesh(m, i, t, s, b, loss=k,
                                          axis_name=ax, ring=r),
          argnums=(0, 1, 2, 3)))
      ref_val, ref_grads = ref_fn(img, txt, scale, bias)
      val, grads = fn(img, txt, scale, bias)
      tag = f"{kind} ring={ring} mesh={shape} axis_name={axis_name}"
      errs = [abs(float(val) - float(ref_val))]
      for name, g, rg in zip(("img", "txt", "scale", "bias"), grads,
                             ref_grads):
        if kind == "softmax" and name == "bias":
          continue
        errs.append(float(jnp.max(jnp.abs(g - rg))))
        if not np.allclose(g, rg, rtol=2e-5, atol=2e-6):
          failures.append(f"{tag}: grad {name} max err {errs[-1]:.3g}")
      if not np.isclose(val, ref_val, rtol=2e-6, atol=1e-6):
        failures.append(f"{tag}: value {float(val)} vs {float(ref_val)}")
      print(f"{tag}: value {float(val):.6f} (one device {float(ref_val):.6f})"
            f" max abs err {max(errs):.2e}")
      if kind == "sigmoid":
        jaxpr = str(jax.make_jaxpr(fn)(img, txt, scale, bias))
        has_gather = "all_gather" in jaxpr
        if ring and (has_gather or "ppermute" not in jaxpr):
          failures.append(f"{tag}: ring form should use ppermute only")
        if not ring and not has_gather:
          failures.append(f"{tag}: gather form should all_gather")
  # A batch that does not divide over the devices is refused up front.
  mesh = Mesh(devices.reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  try:
    losses.contrastive_loss_on_mesh(mesh, img[:6], txt[:6], scale)
    failures.append("batch 6 over 4 devices was accepted")
  except ValueError as e:
    print("refused as expected:", e)
  # The tasks' loss: under the trainer's use_rules(mesh) it is the
  # shard_map form (same value); outside it, or on a batch that does not
  # divide over the devices, the one-device loss.
  from mmtx import sharding
  from mmtx.tasks.common import contrastive_loss
  mesh = Mesh(devices.reshape(4, 2, 1), ("data", "fsdp", "tensor"))
  for kind in ("softmax", "sigmoid"):
    want = float(losses.softmax_contrastive_loss(img, txt, scale)
                 if kind == "softmax" else
                 losses.sigmoid_contrastive_loss(img, txt, scale, bias))
    for rules, rows in ((True, BATCH), (False, BATCH), (True, 12)):
      fn = jax.jit(lambda i, t: contrastive_loss(kind, i, t, scale, bias))
      with sharding.use_rules(mesh if rules else None):
        jaxpr = str(jax.make_jaxpr(fn)(img[:rows], txt[:rows]))
        got = float(fn(img[:rows], txt[:rows]))
      ref = want if rows == BATCH else float(
          losses.softmax_contrastive_loss(img[:rows], txt[:rows], scale)
          if kind == "softmax" else losses.sigmoid_contrastive_loss(
              img[:rows], txt[:rows], scale, bias))
      tag = f"task loss {kind} rules={rules} batch={rows}"
      if ("shard_map" in jaxpr) != (rules and rows == BATCH):
        failures.append(f"{tag}: shard_map used={'shard_map' in jaxpr}")
      if abs(got - ref) > 1e-5 * max(1.0, abs(ref)):
        failures.append(f"{tag}: {got} != {ref}")
      print(f"{tag}: {got:.7f} (one device {ref:.7f})")
  if failures:
    print("FAILURES:\n" + "\n".join(failures))
    sys.exit(1)
  print("ALL OK")


if __name__ == "__main__":
  main()
