"""Device mesh, logical-axis rules and shardings (jit + jax.sharding, no pmap).

The mesh has the axes ('data', 'fsdp', 'tensor'). Parameters carry logical
axis names (nn.with_logical_partitioning) and activations are constrained by
logical names (`constrain`, inside `use_rules`); `RULES` map both to mesh
axes. A parameter dimension that the mesh axis does not divide stays
replicated; an activation rule that cannot apply is logged once.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import warnings
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

log = logging.getLogger(__name__)

# logical name -> mesh axis (or None = replicated). Parameters use the plain
# names; activations the `act_` ones (an activation's embed dim stays whole
# while its batch dim takes 'fsdp').
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("layers", None),
    ("channels", None),
    ("act_batch", BATCH_AXES),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
)
# Names of activations: [batch, tokens, features] and [batch, tokens, heads,
# head_dim].
TOKENS = ("act_batch", "act_len", "act_embed")
HEADS = ("act_batch", "act_len", "act_heads", "act_kv")
MLP_HIDDEN = ("act_batch", "act_len", "act_mlp")


def maybe_initialize_distributed():
  """`jax.distributed.initialize()` when launched as one of several processes.

  Local / hand-made launches set MMTX_NUM_PROCESSES, MMTX_PROCESS_ID and
  JAX_COORDINATOR_ADDRESS (host:port of process 0); on CPU the processes talk
  through gloo collectives. Cluster launchers JAX detects itself (SLURM, TPU
  pods, ...) need nothing. A single process does nothing.
  """
  if jax.distributed.is_initialized():
    return
  n = int(os.environ.get("MMTX_NUM_PROCESSES", "1"))
  if n > 1:
    missing = [v for v in ("MMTX_PROCESS_ID", "JAX_COORDINATOR_ADDRESS")
               if v not in os.environ]
    if missing:
      raise ValueError(f"MMTX_NUM_PROCESSES={n} needs {missing} set too "
                       f"(this process's id, and host:port of process 0).")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=n, process_id=int(os.environ["MMTX_PROCESS_ID"]))
  elif (int(os.environ.get("SLURM_NTASKS", "1")) > 1 or
        "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")):
    jax.distributed.initialize()


def set_cpu_sync_dispatch() -> bool:
  """Runs single-device CPU programs on the calling thread (JAX's
  jax_cpu_enable_async_dispatch=False; multi-device programs are not
  affected).

  XLA:CPU allocates a program's temporaries afresh on every call. On
  JAX's dispatch thread, glibc serves blocks over 64 MiB from new mappings
  and unmaps them on free, so each training step faulted its whole working
  set back in (experiments/benchmarks/cpu_step.py's CLIP: 66k page faults,
  ~100 ms of a 210 ms step); on the calling thread, with run.sh's
  GLIBC_TUNABLES (no mappings, no trimming), a step reuses the previous
  step's memory: 16 faults, 151 ms. The Python loop then waits for each
  step, which the input pipeline's own threads make up for. Must run before
  JAX starts its backends; returns whether it took effect (False after,
  with a warning).
  """
  if not jax.config.read("jax_cpu_enable_async_dispatch"):
    return True   # already set (e.g. by the first of several runs)
  from jax._src import xla_bridge  # no public way to ask (JAX 0.10-0.11)
  started = getattr(xla_bridge, "backends_are_initialized", lambda: False)()
  if started:
    warnings.warn("set_cpu_sync_dispatch: not applied, JAX's backends are "
                  "already running; call it before any JAX operation.")
    return False
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True


def set_cpu_devices(n: int) -> bool:
  """Splits this host's CPU into `n` XLA devices (0 = JAX's default, one).

  XLA:CPU leaves cores idle on small programs; data parallelism over two
  CPU devices runs two half-batch programs side by side (the default job
  on a 2-core box: 368 -> 411 images/s). It must happen before JAX
  starts its backends: `mmtx.main` calls it first thing with
  config.mesh.cpu_devices. Returns whether the count is now `n`; after JAX
  has started it warns and changes nothing. Accelerator backends are not
  affected, and an explicit XLA_FLAGS=--xla_force_host_platform_device_count
  wins (returns False).
  """
  if n <= 0 or jax.config.jax_num_cpu_devices == n:
    return n > 0
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return False
  try:
    jax.config.update("jax_num_cpu_devices", int(n))
  except RuntimeError:
    warnings.warn(f"mesh.cpu_devices={n} not applied: JAX's backends are "
                  f"already running; set it before any JAX operation "
                  f"(jax.config.update('jax_num_cpu_devices', {n})).")
    return False
  return True


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              num_devices: int = -1,
              devices: Sequence[jax.Device] | None = None,
              cpu_devices: int = 0) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over the first `num_devices` devices
  (-1: all); a -1 axis size takes the remaining devices. `cpu_devices` is
  config.mesh's request for `set_cpu_devices`, which must run before JAX
  starts; here it is only checked (a warning when it did not take effect)."""
  devices = list(devices if devices is not None else jax.devices())
  if (cpu_devices > 0 and devices and devices[0].platform == "cpu"
      and len(devices) != cpu_devices):
    warnings.warn(f"mesh.cpu_devices={cpu_devices} but JAX has "
                  f"{len(devices)} CPU device(s): call "
                  f"sharding.set_cpu_devices({cpu_devices}) before any JAX "
                  f"operation (python -m mmtx.main does).")
  if num_devices != -1:
    if not 0 < num_devices <= len(devices):
      raise ValueError(f"mesh.num_devices={num_devices} but {len(devices)} "
                       f"devices are present.")
    devices = devices[:num_devices]
  n = len(devices)
  sizes = [data, fsdp, tensor]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got "
                     f"{sizes}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes) or n % known:
    raise ValueError(f"mesh: data*fsdp*tensor = {sizes} does not fit {n} "
                     f"devices; the product must divide the device count.")
  sizes = [n // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != n:
    raise ValueError(f"mesh: data*fsdp*tensor = {sizes} uses "
                     f"{int(np.prod(sizes))} devices but {n} are present.")
  arr = np.asarray(devices).reshape(sizes)
  return Mesh(arr, MESH_AXES)


def _spec_for(names, shape, mesh: Mesh, rules) -> P:
  table = dict(rules)
  used, out = set(), []
  for name, dim in zip(names, shape):
    axis = table.get(name) if name is not None else None
    axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if not axes or size == 1 or dim % size or used & set(axes):
      out.append(None)
    else:
      used |= set(axes)
      out.append(axes[0] if len(axes) == 1 else axes)
  # FSDP: a parameter whose 'embed' dim the fsdp axis does not divide is
  # sharded on its largest dim that it does divide, so every big array is
  # split (ZeRO-3 style); scalars and odd shapes stay replicated. Never the
  # stacked 'layers' dim of nn.scan'd params: each scan iteration reads one
  # layer, which would then live on one device.
  f = mesh.shape.get("fsdp", 1)
  if f > 1 and "fsdp" not in used:
    free = [i for i, a in enumerate(out) if a is None and shape[i] % f == 0
            and names[i] != "layers"]
    if free:
      i = max(free, key=lambda j: shape[j])
      out[i] = "fsdp"
  return P(*out)


def param_shardings(abstract_boxed, mesh: Mesh, rules=RULES):
  """Shardings for a (boxed, abstract) param tree from its logical names."""
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return NamedSharding(mesh, _spec_for(leaf.names, leaf.value.shape, mesh,
                                           rules))
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, _spec_for((None,) * len(shape), shape, mesh,
                                         rules))
  return jax.tree_util.tree_map(
      one, abstract_boxed,
      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axes=("data", "fsdp")) -> NamedSharding:
  """Shards dim 0 (the batch) over those of `axes` that `mesh` has."""
  names = tuple(a for a in axes if a in mesh.axis_names)
  return NamedSharding(mesh, PartitionSpec(names if names else None))


def to_device(batch: dict, sharding: NamedSharding) -> dict:
  """Host-local numpy batch -> global `jax.Array`s sharded on the batch dim.

  Each process passes its own rows; the global batch is their concatenation
  in process order (`jax.make_array_from_process_local_data`). Non-numeric
  entries (strings) are dropped.
  """
  out = {}
  spec = sharding.spec[0] if len(sharding.spec) else None
  names = (spec,) if isinstance(spec, str) else (spec or ())
  ways = math.prod(sharding.mesh.shape[a] for a in names)
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "OUS":
      continue
    global_b = value.shape[0] * jax.process_count()
    if global_b % ways:
      per_host = ways // math.gcd(ways, jax.process_count())
      raise ValueError(f"to_device: batch['{key}'] has {value.shape[0]} rows "
                       f"per host ({global_b} in all), not divisible by the "
                       f"{ways} shards of mesh axes {names}; pick a batch size "
                       f"that is a multiple of {per_host} per host.")
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global arrays sharded over ('data', 'fsdp')."""
  return to_device(batch, batch_sharding(mesh))


# ----------------------------------------------------------- activations
_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    "mmtx_sharding_mesh", default=None)


@contextlib.contextmanager
def use_rules(mesh: Mesh | None, rules=RULES):
  """The context a step is traced in: `rules` as Flax's logical axis rules
  (`nn.logical_axis_rules`) over `mesh`, so that `constrain` pins
  activations (the trainer wraps its train and eval steps in it; None: no
  context). The mesh is not made JAX's global mesh: under one, Flax's
  `LogicallyPartitioned` would constrain parameters too, by Flax's rules
  instead of `param_shardings`.

  Without it XLA's sharding propagation may follow the FSDP-sharded weights
  instead and gather activations for the whole global batch on every
  device (per-device temp memory then grows with the device count; see
  experiments/benchmarks/scaling.py). Outside it `constrain` is a no-op.
  """
  if mesh is None:
    yield
    return
  token = _MESH.set(mesh)
  try:
    with nn.logical_axis_rules(rules):
      yield
  finally:
    _MESH.reset(token)


def current_mesh() -> Mesh | None:
  """The mesh of the enclosing `use_rules` context; None outside one."""
  return _MESH.get()


_LOGGED: set = set()


def _log_once(key, msg):
  if key not in _LOGGED:
    _LOGGED.add(key)
    log.warning(msg)


def constrain(x, names: Sequence[str | None]):
  """`nn.with_logical_constraint(x, names)` under the rules and mesh of
  `use_rules`; `x` unchanged outside it.

  A name whose rule cannot apply (no rule, a mesh axis the mesh lacks or an
  earlier dimension took, a size the mesh axes do not divide) leaves that
  dimension unconstrained and is logged once, with the shape and the rule.
  """
  rules = nn.get_logical_axis_rules()
  mesh = _MESH.get()
  if not rules or mesh is None or not hasattr(x, "shape"):
    return x
  names = tuple(names)
  if len(names) != x.ndim:
    raise ValueError(f"constrain: {len(names)} names {names} for an array of "
                     f"shape {x.shape}.")
  sizes = dict(mesh.shape)
  known = {r for r, _ in rules}
  kept = list(names)
  for name in names:
    if name is not None and name not in known:
      kept[names.index(name)] = P.UNCONSTRAINED
      _log_once(("norule", name), f"sharding: no rule for the logical axis "
                f"{name!r} (of an activation {names}); left unconstrained.")
  done, used = set(), set()
  for rule_name, axes in rules:
    if rule_name not in names or rule_name in done:
      continue
    pos = names.index(rule_name)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    why = None
    missing = [a for a in axes if a not in sizes]
    if missing:
      why = f"the mesh {sizes} has no axis {missing}"
    elif used & set(axes):
      why = f"mesh axes {sorted(used & set(axes))} are taken by another dim"
    elif x.shape[pos] % math.prod(sizes[a] for a in axes):
      why = (f"size {x.shape[pos]} is not divisible by mesh axes {axes} of "
             f"size {math.prod(sizes[a] for a in axes)}")
    if why:
      kept[pos] = P.UNCONSTRAINED
      _log_once((names, pos, x.shape[pos], why),
                f"sharding: rule {rule_name!r} -> {axes} cannot apply to dim "
                f"{pos} of an activation {names} of shape {tuple(x.shape)}: "
                f"{why}; that dim is left unconstrained.")
    else:
      done.add(rule_name)
      used |= set(axes)
  return nn.with_logical_constraint(x, tuple(kept), mesh=mesh)
