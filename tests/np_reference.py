"""Float64 numpy implementations of the Transformer equations, for tests.

Written from the paper (Vaswani et al. 2017), not from mmtx's code; they read
weights from a parameter dict by name only.
"""
import math

import numpy as np


def f64(tree):
  if isinstance(tree, dict):
    return {k: f64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def layer_norm(x, p, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def softmax(x, axis=-1):
  x = x - x.max(axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis, keepdims=True)


def mha(p, xq, xkv, mask=None):
  """p: {'query','key','value': kernel [d, h, k], bias [h, k]; 'out': kernel
  [h, k, d], bias [d]}; mask [b, 1|h, q, kv] bool; masked-out rows -> 0."""
  q = np.einsum("btd,dhk->bthk", xq, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bsd,dhk->bshk", xkv, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bsd,dhk->bshk", xkv, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(mask, logits, -np.inf)
  w = np.zeros_like(logits)
  for idx in np.ndindex(*logits.shape[:-1]):
    row = logits[idx]
    if np.isfinite(row).any():
      w[idx] = softmax(np.where(np.isfinite(row), row, -1e300))
      if mask is not None:
        w[idx] = np.where(np.isfinite(row), w[idx], 0.0)
  heads = np.einsum("bhts,bshk->bthk", w, v)
  return np.einsum("bthk,hkd->btd", heads, p["out"]["kernel"]) + p["out"]["bias"]


def gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def ffn(p, x, activation):
  if activation == "swiglu":
    a = x @ p["wi_0"]["kernel"] + p["wi_0"]["bias"]
    b = x @ p["wi_1"]["kernel"] + p["wi_1"]["bias"]
    h = a / (1.0 + np.exp(-a)) * b
  else:
    h = x @ p["wi"]["kernel"] + p["wi"]["bias"]
    h = np.maximum(0.0, h) if activation == "relu" else gelu(h)
  return h @ p["wo"]["kernel"] + p["wo"]["bias"]


def encoder_block(p, x, mask, norm, activation):
  if norm == "post":
    z = layer_norm(x + mha(p["attention"], x, x, mask), p["ln_attention"])
    return layer_norm(z + ffn(p["mlp"], z, activation), p["ln_mlp"])
  h = layer_norm(x, p["ln_attention"])
  z = x + mha(p["attention"], h, h, mask)
  return z + ffn(p["mlp"], layer_norm(z, p["ln_mlp"]), activation)


def decoder_block(p, x, ctx, self_mask, cross_mask, norm, activation):
  subs = [("ln_self_attention", lambda h: mha(p["self_attention"], h, h,
                                              self_mask)),
          ("ln_cross_attention", lambda h: mha(p["cross_attention"], h, ctx,
                                               cross_mask)),
          ("ln_mlp", lambda h: ffn(p["mlp"], h, activation))]
  for ln, fn in subs:
    if norm == "post":
      x = layer_norm(x + fn(x), p[ln])
    else:
      x = x + fn(layer_norm(x, p[ln]))
  return x
