"""Weights in and out by a table: one `Rule` per mmtx parameter names the
source tensor it comes from and how its layout changes (`CODECS`).

`to_params` reads a source state dict (name -> numpy array) into the nested
mmtx params: every mmtx parameter needs its tensor, every tensor's shape must
be the one the config implies, and every tensor must be used; otherwise a
`ValueError` names the tensor and both shapes (or lists the unused ones).
`to_state` runs the same table backwards, so `to_params(to_state(p)) == p`
bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import numpy as np


class Rule(NamedTuple):
  """mmtx parameter `path` ('img/encoder/layers_0/mlp/wi/kernel') <- source
  tensor `key` through `codec`. `part=(i, n)`: the tensor is n equal blocks
  along its first axis (a packed q/k/v projection) and this is block i."""
  path: str
  key: str
  codec: str = "copy"
  part: Optional[tuple[int, int]] = None


class Codec(NamedTuple):
  to_mmtx: Callable[[np.ndarray, tuple], np.ndarray]  # (source, mmtx shape)
  to_source: Callable[[np.ndarray], np.ndarray]
  source_shape: Callable[[tuple], tuple]               # from the mmtx shape


def _heads_in(src, shape):
  return src.T.reshape(shape)


CODECS = {
    "copy": Codec(lambda s, shape: s, lambda m: m, lambda shape: shape),
    # torch Linear weight [out, in] <-> Dense kernel [in, out].
    "linear": Codec(lambda s, shape: s.T, lambda m: m.T,
                    lambda shape: shape[::-1]),
    # [heads * head_dim, dim] <-> DenseGeneral kernel [dim, heads, head_dim].
    "heads_in": Codec(_heads_in, lambda m: m.reshape(m.shape[0], -1).T,
                      lambda shape: (shape[1] * shape[2], shape[0])),
    "heads_bias": Codec(lambda s, shape: s.reshape(shape),
                        lambda m: m.reshape(-1),
                        lambda shape: (shape[0] * shape[1],)),
    # [dim, heads * head_dim] <-> out kernel [heads, head_dim, dim].
    "heads_out": Codec(_heads_in, lambda m: m.reshape(-1, m.shape[-1]).T,
                       lambda shape: (shape[2], shape[0] * shape[1])),
    # Conv2d weight [out, in, kh, kw] <-> Conv kernel [kh, kw, in, out].
    "conv": Codec(lambda s, shape: s.transpose(2, 3, 1, 0),
                  lambda m: m.transpose(3, 2, 0, 1),
                  lambda shape: (shape[3], shape[2], shape[0], shape[1])),
    # A tensor with a leading axis of 1 (timm's pos_embed) <-> without it.
    "lead1": Codec(lambda s, shape: s.reshape(shape), lambda m: m[None],
                   lambda shape: (1,) + tuple(shape)),
    # A tensor <-> the mmtx param with a leading axis of 1 (a pool's queries).
    "add1": Codec(lambda s, shape: s.reshape(shape), lambda m: m[0],
                  lambda shape: tuple(shape[1:])),
    # A [1] tensor <-> a scalar.
    "scalar1": Codec(lambda s, shape: s.reshape(()), lambda m: m.reshape(1),
                     lambda shape: (1,)),
    # Class embedding [dim] <-> the ViT's cls [1, 1, dim].
    "cls": Codec(lambda s, shape: s.reshape(shape), lambda m: m.reshape(-1),
                 lambda shape: (shape[-1],)),
}


def _flat(tree) -> dict[str, object]:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def param_shapes(model, *args) -> dict[str, tuple]:
  """'path' -> shape of every parameter `model.init(key, *args)` makes,
  without allocating them (`jax.eval_shape`)."""
  tree = jax.eval_shape(lambda: nn.meta.unbox(
      model.init(jax.random.key(0), *args)["params"]))
  return {k: tuple(v.shape) for k, v in _flat(tree).items()}


def flat_params(params) -> dict[str, np.ndarray]:
  """Flat 'path' -> numpy float32 array of `params` (boxed or not)."""
  return {k: np.asarray(v, np.float32)
          for k, v in _flat(nn.meta.unbox(params)).items()}


def unscan(flat: dict[str, np.ndarray], config: dict) -> tuple[dict, dict]:
  """Params of towers built with `scan=True` (layers stacked under
  'layers', leading axis = layer) -> the `layers_i` layout, and the config
  with scan=False; others pass through."""
  config = dict(config)
  for tower, key in (("img", "image"), ("txt", "text")):
    if not config[key].get("scan"):
      continue
    config[key] = {**config[key], "scan": False}
    stacked = f"{tower}/encoder/layers/"
    out = {}
    for path, x in flat.items():
      if not path.startswith(stacked):
        out[path] = x
        continue
      for i in range(x.shape[0]):
        out[f"{tower}/encoder/layers_{i}/{path[len(stacked):]}"] = x[i]
    flat = out
  return flat, config


def clamp_logit_scale(flat: dict[str, np.ndarray], config: dict) -> dict:
  """The logit scale DualEncoder uses (it clamps at max_logit_scale; HF and
  open_clip do not), so an exported model gives the same logits. Below the
  clamp, as always after an import, the value is unchanged bit for bit."""
  top = np.float32(math.log(config.get("max_logit_scale", 100.0)))
  return {**flat, "logit_scale": np.minimum(flat["logit_scale"], top)}


def check_params(flat: dict[str, np.ndarray], shapes: dict[str, tuple],
                 who: str) -> dict:
  """Checks `flat_params` output against the config's `shapes`: an error
  names each missing, extra or misshapen parameter."""
  missing = sorted(set(shapes) - set(flat))
  extra = sorted(set(flat) - set(shapes))
  if missing or extra:
    raise ValueError(f"{who}: the params do not fit the config: missing "
                     f"{missing}, not in the config {extra}.")
  for k, want in shapes.items():
    if flat[k].shape != want:
      raise ValueError(f"{who}: parameter {k!r} has shape {flat[k].shape}; "
                       f"the config needs {want}.")
  return flat


def _check_rules(rules: Iterable[Rule], shapes: dict[str, tuple]):
  paths = [r.path for r in rules]
  if sorted(paths) != sorted(shapes):
    raise AssertionError(
        f"interop table out of date: params without a rule "
        f"{sorted(set(shapes) - set(paths))}, rules without a param "
        f"{sorted(set(paths) - set(shapes))}.")


def _source_shape(rule: Rule, mmtx_shape: tuple) -> tuple:
  shape = CODECS[rule.codec].source_shape(mmtx_shape)
  if rule.part:
    shape = (shape[0] * rule.part[1],) + tuple(shape[1:])
  return tuple(shape)


def to_params(state: dict[str, np.ndarray], rules: list[Rule],
              shapes: dict[str, tuple], who: str) -> dict:
  """Source tensors -> nested mmtx params (float32 numpy)."""
  _check_rules(rules, shapes)
  out, used = {}, set()
  for rule in rules:
    want = _source_shape(rule, shapes[rule.path])
    if rule.key not in state:
      raise ValueError(f"{who}: tensor {rule.key!r} is missing (the config "
                       f"needs it with shape {want} for {rule.path}).")
    src = np.asarray(state[rule.key], np.float32)
    if src.shape != want:
      raise ValueError(f"{who}: tensor {rule.key!r} has shape {src.shape}; "
                       f"the config needs {want} (for {rule.path}).")
    if rule.part:
      src = np.split(src, rule.part[1], axis=0)[rule.part[0]]
    x = CODECS[rule.codec].to_mmtx(src, shapes[rule.path])
    used.add(rule.key)
    out[rule.path] = np.array(x, np.float32, order="C")
  unused = sorted(set(state) - used)
  if unused:
    listed = ", ".join(f"{k} {tuple(np.shape(state[k]))}" for k in unused)
    raise ValueError(f"{who}: {len(unused)} source tensor(s) have no place in "
                     f"the mmtx model, so loading would drop them: {listed}.")
  return flax.traverse_util.unflatten_dict(out, sep="/")


def to_state(flat_params: dict[str, np.ndarray],
             rules: list[Rule]) -> dict[str, np.ndarray]:
  """Flat mmtx params -> source tensors (the table run backwards)."""
  state, parts = {}, {}
  for rule in rules:
    x = CODECS[rule.codec].to_source(np.asarray(flat_params[rule.path]))
    if rule.part:
      parts.setdefault(rule.key, {})[rule.part[0]] = x
    else:
      state[rule.key] = x
  for key, blocks in parts.items():
    state[key] = np.concatenate([blocks[i] for i in sorted(blocks)], axis=0)
  return {k: np.array(v, np.float32, order="C") for k, v in state.items()}


def torch_state(module, skip: Iterable[str] = ()) -> dict[str, np.ndarray]:
  """A torch module's state dict as float32 numpy, without the buffers
  named in `skip` (derived ones such as position ids or a causal mask)."""
  skip = set(skip)
  return {k: v.detach().cpu().float().numpy()
          for k, v in module.state_dict().items() if k not in skip}


def load_torch_state(module, state: dict[str, np.ndarray],
                     skip: Iterable[str] = ()):
  """Copies `state` into a torch module; every tensor of its state dict but
  those in `skip` must be set, and no other."""
  import torch  # pylint: disable=g-import-not-at-top
  sd = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
  missing, unexpected = module.load_state_dict(sd, strict=False)
  missing = sorted(set(missing) - set(skip))
  if missing or unexpected:
    raise AssertionError(f"export table out of date: unset {missing}, "
                         f"unknown {unexpected}")
  return module
