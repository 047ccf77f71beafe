"""Pretraining and task losses: contrastive, ITM, MLM, LM, VQA, classification.

Every loss computes in float32 (inputs may be bfloat16) and returns a scalar.
Shapes are checked at the boundary and a wrong one raises a `ValueError` that
names the argument. No model is imported here.

Contrastive losses, on one device:
  softmax (CLIP, Radford et al. 2021, Fig. 3): logits = s * img_emb @ txt_emb.T,
    loss = (CE(logits, diag) + CE(logits.T, diag)) / 2.
  sigmoid (SigLIP, Zhai et al. 2023, Alg. 1): logits = s * img_emb @ txt_emb.T
    + b, loss = -sum(log_sigmoid(z * logits)) / batch, z = +1 on the diagonal
    else -1.
Inside `jax.shard_map` the `*_sharded` forms give each device its local loss
for its local rows; their mean over devices is the loss above on the global
batch, and gradients flow through the collectives. `contrastive_loss_on_mesh`
does the `shard_map` for global arrays.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

Array = jax.Array
AxisName = Union[str, Sequence[str]]

# Learnable temperature conventions. Parameters are stored as log(scale).
SOFTMAX_LOGIT_SCALE_INIT = 1.0 / 0.07   # CLIP
SOFTMAX_LOGIT_SCALE_MAX = 100.0         # CLIP clamps the multiplier at 100
SIGMOID_LOGIT_SCALE_INIT = 10.0         # SigLIP: t' = log 10
SIGMOID_LOGIT_BIAS_INIT = -10.0         # SigLIP: b = -10

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------
def _shape(x) -> tuple:
  return tuple(jnp.shape(x))


def _check_rank(x, rank: int, name: str, doc: str):
  if len(_shape(x)) != rank:
    raise ValueError(f"{name}: expected shape {doc}, got {_shape(x)}.")


def _check_same(x, y, name_x: str, name_y: str, doc: str):
  if _shape(x) != _shape(y):
    raise ValueError(
        f"{name_y}: expected the same shape {doc} as {name_x} {_shape(x)},"
        f" got {_shape(y)}.")


def _scalar(x, name: str) -> Array:
  """Accepts a scalar or a size-1 array (a Flax param of shape [1])."""
  if int(math.prod(_shape(x))) != 1:
    raise ValueError(f"{name}: expected a scalar (shape [] or [1]), got shape"
                     f" {_shape(x)}.")
  return jnp.reshape(jnp.asarray(x), ()).astype(jnp.float32)


def _check_pair(img_emb, txt_emb):
  _check_rank(img_emb, 2, "img_emb", "[batch, dim]")
  _check_rank(txt_emb, 2, "txt_emb", "[batch, dim]")
  _check_same(img_emb, txt_emb, "img_emb", "txt_emb", "[batch, dim]")


def _f32(x) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


# ----------------------------------------------------------------------------
# Temperature
# ----------------------------------------------------------------------------
def logit_scale_init(scale: float = SOFTMAX_LOGIT_SCALE_INIT):
  """Flax initializer `(key, shape, dtype) -> log(scale)` for a log-scale param.

  Use `scale=SIGMOID_LOGIT_SCALE_INIT` for SigLIP; the SigLIP bias is stored
  as is (`nn.initializers.constant(SIGMOID_LOGIT_BIAS_INIT)`).
  """
  def init(key, shape=(), dtype=jnp.float32):
    del key
    return jnp.full(shape, math.log(scale), dtype)
  return init


def logit_scale_from_param(log_scale: Array,
                           max_scale: Optional[float] = SOFTMAX_LOGIT_SCALE_MAX
                           ) -> Array:
  """The multiplier exp(log_scale), clamped to at most `max_scale` (CLIP: 100).

  The clamp acts in log space, like CLIP's `clamp(0, log 100)` on the stored
  parameter; pass `max_scale=None` for SigLIP, which does not clamp.
  """
  log_scale = _f32(log_scale)
  if max_scale is not None:
    log_scale = jnp.minimum(log_scale, math.log(max_scale))
  return jnp.exp(log_scale)


# ----------------------------------------------------------------------------
# Contrastive, one device
# ----------------------------------------------------------------------------
def _similarity(a: Array, b: Array) -> Array:
  """`[n, d] x [m, d] -> [n, m]` in float32 at full matmul precision."""
  return jnp.einsum("nd,md->nm", _f32(a), _f32(b), precision=_HIGHEST)


def softmax_contrastive_loss(img_emb: Array, txt_emb: Array,
                             logit_scale: Array) -> Array:
  """CLIP InfoNCE loss; image i is paired with text i.

  Args:
    img_emb: `[batch, dim]` image embeddings (L2-normalised by the model).
    txt_emb: `[batch, dim]` text embeddings.
    logit_scale: scalar multiplier, already exponentiated (1/temperature).
  Returns:
    Scalar float32: mean of the image->text and text->image cross-entropies
    (open_clip `ClipLoss` on one device).
  """
  _check_pair(img_emb, txt_emb)
  logits = _scalar(logit_scale, "logit_scale") * _similarity(img_emb, txt_emb)
  i2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  t2i = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  return 0.5 * (i2t + t2i)


def _sigmoid_pair_sum(img_emb, txt_emb, scale, bias, positives: bool) -> Array:
  """-sum(log_sigmoid(z * logits)) for one block; z = 2 * eye - 1 or -1."""
  logits = scale * _similarity(img_emb, txt_emb) + bias
  if positives:
    eye = jnp.eye(logits.shape[0], logits.shape[1], dtype=bool)
    logits = jnp.where(eye, logits, -logits)
  else:
    logits = -logits
  return -jnp.sum(jax.nn.log_sigmoid(logits))


def sigmoid_contrastive_loss(img_emb: Array, txt_emb: Array,
                             logit_scale: Array, logit_bias: Array) -> Array:
  """SigLIP pairwise sigmoid loss; image i is paired with text i.

  Args:
    img_emb, txt_emb: `[batch, dim]` embeddings.
    logit_scale: scalar multiplier, already exponentiated.
    logit_bias: scalar bias.
  Returns:
    Scalar float32 -sum_ij log_sigmoid(z_ij * logits_ij) / batch (open_clip
    `SigLipLoss` on one device).
  """
  _check_pair(img_emb, txt_emb)
  scale = _scalar(logit_scale, "logit_scale")
  bias = _scalar(logit_bias, "logit_bias")
  return _sigmoid_pair_sum(img_emb, txt_emb, scale, bias, True) / (
      img_emb.shape[0])


# ----------------------------------------------------------------------------
# Contrastive, inside shard_map
# ----------------------------------------------------------------------------
def _axes(axis_name: AxisName):
  return axis_name if isinstance(axis_name, str) else tuple(axis_name)


def softmax_contrastive_loss_sharded(img_emb: Array, txt_emb: Array,
                                     logit_scale: Array, *,
                                     axis_name: AxisName) -> Array:
  """CLIP loss of this device's rows against the gathered global batch.

  Call inside `jax.shard_map` with the batch sharded over `axis_name` (a name
  or a tuple such as `('data', 'fsdp')`). Features of all devices are gathered
  with gradient and this device's rows are scored against all columns
  (open_clip `ClipLoss(local_loss=True, gather_with_grad=True)`). Memory is
  `[local_batch, global_batch]`.

  Args:
    img_emb, txt_emb: `[local_batch, dim]` this device's embeddings.
    logit_scale: scalar multiplier (replicated).
    axis_name: the mesh axes the batch is sharded over.
  Returns:
    This device's loss; `jax.lax.pmean(loss, axis_name)` is
    `softmax_contrastive_loss` on the global batch.
  """
  _check_pair(img_emb, txt_emb)
  axes = _axes(axis_name)
  scale = _scalar(logit_scale, "logit_scale")
  all_img = jax.lax.all_gather(img_emb, axes, tiled=True)
  all_txt = jax.lax.all_gather(txt_emb, axes, tiled=True)
  b = img_emb.shape[0]
  cols = jax.lax.axis_index(axes) * b + jnp.arange(b)
  def ce(rows, all_cols):
    logp = jax.nn.log_softmax(scale * _similarity(rows, all_cols), axis=1)
    return -jnp.mean(jnp.take_along_axis(logp, cols[:, None], axis=1))
  return 0.5 * (ce(img_emb, all_txt) + ce(txt_emb, all_img))


def sigmoid_contrastive_loss_sharded(img_emb: Array, txt_emb: Array,
                                     logit_scale: Array, logit_bias: Array, *,
                                     axis_name: AxisName,
                                     ring: bool = True) -> Array:
  """SigLIP loss of this device's images against every text of the global batch.

  Call inside `jax.shard_map` with the batch sharded over `axis_name`.
  `ring=True` (SigLIP Sec. 3.3, open_clip's neighbour exchange): text blocks
  travel round the devices with `jax.lax.ppermute`, one step per device, so a
  device holds one `[local_batch, local_batch]` block at a time, also in the
  backward pass (each block's logits are rematerialised). `ring=False` gathers
  all texts (`[local_batch, global_batch]` logits).

  Args:
    img_emb, txt_emb: `[local_batch, dim]` this device's embeddings.
    logit_scale, logit_bias: scalars (replicated).
    axis_name: the mesh axes the batch is sharded over.
    ring: ppermute ring (True) or all-gather (False).
  Returns:
    This device's loss normalised by the local batch; its `pmean` over
    `axis_name` is `sigmoid_contrastive_loss` on the global batch.
  """
  _check_pair(img_emb, txt_emb)
  axes = _axes(axis_name)
  scale = _scalar(logit_scale, "logit_scale")
  bias = _scalar(logit_bias, "logit_bias")
  b = img_emb.shape[0]
  if not ring:
    all_txt = jax.lax.all_gather(txt_emb, axes, tiled=True)
    logits = scale * _similarity(img_emb, all_txt) + bias
    cols = jax.lax.axis_index(axes) * b + jnp.arange(b)
    pos = cols[:, None] == jnp.arange(all_txt.shape[0])[None, :]
    z = jnp.where(pos, 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / b

  n_dev = jax.lax.axis_size(axes)
  perm = [(i, (i + 1) % n_dev) for i in range(n_dev)]
  own = _sigmoid_pair_sum(img_emb, txt_emb, scale, bias, True)
  # Remat the block so the backward pass keeps text blocks, not logits.
  negatives = jax.checkpoint(
      lambda img, txt, s, b: _sigmoid_pair_sum(img, txt, s, b, False))

  def step(carry, _):
    txt, total = carry
    txt = jax.lax.ppermute(txt, axes, perm)   # the block of device (i - k)
    return (txt, total + negatives(img_emb, txt, scale, bias)), None

  (_, total), _ = jax.lax.scan(step, (txt_emb, own), None, length=n_dev - 1)
  return total / b


def contrastive_loss_on_mesh(mesh: Mesh, img_emb: Array, txt_emb: Array,
                             logit_scale: Array,
                             logit_bias: Optional[Array] = None, *,
                             loss: str = "softmax",
                             axis_name: AxisName = ("data", "fsdp"),
                             ring: bool = True) -> Array:
  """Global contrastive loss of global arrays, computed with `jax.shard_map`.

  Args:
    mesh: the device mesh (axes `data`, `fsdp`, `tensor`).
    img_emb, txt_emb: `[global_batch, dim]`; `global_batch` must divide evenly
      over the devices of `axis_name`.
    logit_scale: scalar multiplier; logit_bias: scalar (sigmoid only).
    loss: `'softmax'` (CLIP) or `'sigmoid'` (SigLIP).
    axis_name: mesh axes the batch is sharded over.
    ring: for `'sigmoid'`, use the ppermute ring instead of an all-gather.
  Returns:
    Scalar float32, equal to the one-device loss on the same arrays;
    differentiable.
  """
  if loss not in ("softmax", "sigmoid"):
    raise ValueError(f"loss: expected 'softmax' or 'sigmoid', got {loss!r}.")
  if loss == "sigmoid" and logit_bias is None:
    raise ValueError("logit_bias: the sigmoid loss needs a scalar logit_bias.")
  _check_pair(img_emb, txt_emb)
  axes = _axes(axis_name)
  names = (axes,) if isinstance(axes, str) else axes
  for name in names:
    if name not in mesh.shape:
      raise ValueError(f"axis_name: {name!r} is not an axis of the mesh"
                       f" {tuple(mesh.axis_names)}.")
  n_dev = math.prod(mesh.shape[name] for name in names)
  if img_emb.shape[0] % n_dev:
    raise ValueError(
        f"img_emb: the batch ({img_emb.shape[0]}) must divide evenly over the"
        f" {n_dev} devices of mesh axes {names}.")
  scale = _scalar(logit_scale, "logit_scale")
  bias = _scalar(0.0 if logit_bias is None else logit_bias, "logit_bias")

  def local(img, txt, s, b):
    if loss == "softmax":
      value = softmax_contrastive_loss_sharded(img, txt, s, axis_name=axes)
    else:
      value = sigmoid_contrastive_loss_sharded(img, txt, s, b, axis_name=axes,
                                               ring=ring)
    return jax.lax.pmean(value, axes)

  batch = P(axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(batch, batch, P(), P()),
                       out_specs=P())(img_emb, txt_emb, scale, bias)


# ----------------------------------------------------------------------------
# Image-text matching (ALBEF, Li et al. 2021, Sec. 3.2)
# ----------------------------------------------------------------------------
class HardNegatives(NamedTuple):
  """For each image a negative text, for each text a negative image.

  `*_valid` is False for a row with no candidate (every entry positive); its
  index is then the row's own (positive) index and must be given zero weight.
  """
  txt_idx: Array    # [batch] int32: negative text for image i
  txt_valid: Array  # [batch] bool
  img_idx: Array    # [batch] int32: negative image for text j
  img_valid: Array  # [batch] bool


def positive_mask_from_ids(ids: Array) -> Array:
  """`[batch]` image ids -> `[batch, batch]`, True where two share an image."""
  _check_rank(ids, 1, "ids", "[batch]")
  ids = jnp.asarray(ids)
  return ids[:, None] == ids[None, :]


def positive_mask_from_caption_sets(caption_sets: Array) -> Array:
  """`[batch, K]` caption fingerprints -> `[batch, batch]` `[image, text]`
  mask, True where text j (row j's caption, `caption_sets[j, 0]`) is one of
  image i's captions (any of `caption_sets[i]`; -1 = none). Another image's
  caption that is word for word one of image i's ("a red circle." under
  every red circle of easy-VQA, whichever caption row i drew) is true of
  image i, so it is no ITM negative for it. Built by the 'contrastive' data
  view ('caption_set', see `mmtx.data.views.caption_set`)."""
  _check_rank(caption_sets, 2, "caption_sets", "[batch, K]")
  sets = jnp.asarray(caption_sets)
  texts = sets[:, 0]
  return jnp.any((sets[:, :, None] == texts[None, None, :]) &
                 (texts >= 0)[None, None, :], axis=1)


def _sample_excluding(rng: Array, logits: Array, excluded: Array):
  """One draw per row from softmax(logits) over ~excluded (Gumbel-max)."""
  candidates = ~excluded & (logits > -jnp.inf)   # drops -inf and NaN entries
  gumbel = jax.random.gumbel(rng, logits.shape, jnp.float32)
  scores = jnp.where(candidates, logits + gumbel, -jnp.inf)
  valid = jnp.any(candidates, axis=1)
  idx = jnp.argmax(scores, axis=1).astype(jnp.int32)
  own = jnp.arange(logits.shape[0], dtype=jnp.int32)
  return jnp.where(valid, idx, own), valid


def itm_hard_negatives(rng: Array, sim: Array,
                       positive_mask: Optional[Array] = None,
                       random_fraction: float = 0.0) -> HardNegatives:
  """Samples hard negatives for ITM from contrastive similarities.

  Image i draws a text j with probability softmax_j(sim[i]) over the texts
  that are not positive for it; text j draws an image from softmax_i(sim[:, j])
  likewise. Positives are the diagonal plus `positive_mask` (e.g. other
  captions of the same image, see `positive_mask_from_ids`, and other
  images' captions that are also this image's,
  `positive_mask_from_caption_sets`); the mask is indexed [image, text].
  With `random_fraction` = r, each draw is instead uniform over the same
  candidates with probability r (ALBEF: r = 0). Pure hard negatives can
  stall ITM where ITC learns one attribute before the fusion reads any:
  every negative then differs from its image only in what neither sees yet.

  Args:
    rng: PRNG key.
    sim: `[batch, batch]` image-text logits (similarity / temperature); pair i
      is (image i, text i). No gradient flows through the sampling.
    positive_mask: optional `[batch, batch]` bool, True = also a positive.
    random_fraction: a Python float in [0, 1], the chance that a draw
      ignores `sim` (at 0 the draws are the pure hard ones).
  Returns:
    `HardNegatives`; rows without any candidate have `valid=False`.
  """
  _check_rank(sim, 2, "sim", "[batch, batch]")
  n = sim.shape[0]
  if sim.shape[1] != n:
    raise ValueError(f"sim: expected a square [batch, batch] matrix (pair i is"
                     f" image i with text i), got {_shape(sim)}.")
  if not 0.0 <= float(random_fraction) <= 1.0:
    raise ValueError(f"random_fraction: expected a probability in [0, 1], "
                     f"got {random_fraction!r}.")
  excluded = jnp.eye(n, dtype=bool)
  if positive_mask is not None:
    if _shape(positive_mask) != (n, n):
      raise ValueError(f"positive_mask: expected shape [batch, batch] ="
                       f" {(n, n)}, got {_shape(positive_mask)}.")
    excluded = excluded | jnp.asarray(positive_mask).astype(bool)
  logits = jax.lax.stop_gradient(_f32(sim))
  rng_txt, rng_img = jax.random.split(rng)
  if random_fraction:   # these draws see equal logits: uniform
    uniform = jax.random.bernoulli(jax.random.fold_in(rng, 2),
                                   float(random_fraction), (2, n))
    finite = jnp.where(logits > -jnp.inf, 0.0, logits)  # keeps -inf / NaN out
    txt_logits = jnp.where(uniform[0][:, None], finite, logits)
    img_logits = jnp.where(uniform[1][:, None], finite.T, logits.T)
  else:
    txt_logits, img_logits = logits, logits.T
  txt_idx, txt_valid = _sample_excluding(rng_txt, txt_logits, excluded)
  img_idx, img_valid = _sample_excluding(rng_img, img_logits, excluded.T)
  return HardNegatives(txt_idx, txt_valid, img_idx, img_valid)


def _weighted_mean(values: Array, weights: Optional[Array]) -> Array:
  """sum(w * v) / sum(w); 0 (with zero gradient) when sum(w) == 0."""
  if weights is None:
    return jnp.mean(values)
  weights = _f32(weights)
  total = jnp.sum(weights)
  safe = jnp.where(total > 0, total, 1.0)
  return jnp.where(total > 0, jnp.sum(weights * values) / safe, 0.0)


def itm_loss(itm_logits: Array, labels: Array,
             weights: Optional[Array] = None) -> Array:
  """2-way cross-entropy for image-text matching.

  Args:
    itm_logits: `[n, 2]` logits (class 1 = matched).
    labels: `[n]` int in {0, 1}.
    weights: optional `[n]` (e.g. a `HardNegatives` valid mask).
  Returns:
    Scalar float32 weighted mean cross-entropy.
  """
  _check_rank(itm_logits, 2, "itm_logits", "[n, 2]")
  n = itm_logits.shape[0]
  if itm_logits.shape[1] != 2:
    raise ValueError(f"itm_logits: expected shape [n, 2], got"
                     f" {_shape(itm_logits)}.")
  if _shape(labels) != (n,):
    raise ValueError(f"labels: expected shape [n] = {(n,)}, got"
                     f" {_shape(labels)}.")
  if weights is not None and _shape(weights) != (n,):
    raise ValueError(f"weights: expected shape [n] = {(n,)}, got"
                     f" {_shape(weights)}.")
  ce = optax.softmax_cross_entropy_with_integer_labels(_f32(itm_logits),
                                                       jnp.asarray(labels))
  return _weighted_mean(ce, weights)


# ----------------------------------------------------------------------------
# Masked and causal language modelling
# ----------------------------------------------------------------------------
def mlm_mask(rng: Array, tokens: Array, *, vocab_size: int, mask_id: int,
             special_ids: Sequence[int], prob: float = 0.15, pad_id: int = 0):
  """BERT masking (Devlin et al. 2019, Sec. 3.1).

  Each token that is not padding, `mask_id` or in `special_ids` is selected
  with probability `prob`; a selected token becomes `mask_id` (80%), a token
  drawn uniformly from the non-special vocabulary (10%), or stays (10%).

  Args:
    rng: PRNG key.
    tokens: `[batch, length]` int token ids.
    vocab_size: number of token ids; random tokens are drawn from
      `[0, vocab_size)` minus `special_ids`, `mask_id` and `pad_id`.
    mask_id: the [MASK] id; special_ids: ids never selected nor drawn.
    prob: selection probability; pad_id: padding id (never selected).
  Returns:
    `(masked_tokens, targets, weights)`: `[batch, length]` int inputs, the
    original tokens, and float32 1.0 where a token was selected.
  """
  _check_rank(tokens, 2, "tokens", "[batch, length]")
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f"prob: expected a probability in [0, 1], got {prob}.")
  specials = sorted({int(s) for s in special_ids} | {int(mask_id), int(pad_id)})
  for s in specials:
    if not 0 <= s < vocab_size:
      raise ValueError(f"special_ids/mask_id/pad_id: id {s} is outside the"
                       f" vocabulary [0, {vocab_size}).")
  n_regular = vocab_size - len(specials)
  if n_regular < 1:
    raise ValueError(f"vocab_size: {vocab_size} leaves no non-special token"
                     f" to draw from ({len(specials)} special ids).")
  tokens = jnp.asarray(tokens)
  rng_sel, rng_kind, rng_tok = jax.random.split(rng, 3)
  eligible = ~jnp.isin(tokens, jnp.asarray(specials, tokens.dtype))
  selected = eligible & (jax.random.uniform(rng_sel, tokens.shape) < prob)
  u = jax.random.uniform(rng_kind, tokens.shape)
  # The r-th regular id: skip over each special id, in ascending order.
  random_tok = jax.random.randint(rng_tok, tokens.shape, 0, n_regular,
                                  dtype=tokens.dtype)
  for s in specials:
    random_tok = random_tok + (random_tok >= s).astype(tokens.dtype)
  masked = jnp.where(selected & (u < 0.8), jnp.asarray(mask_id, tokens.dtype),
                     jnp.where(selected & (u >= 0.8) & (u < 0.9), random_tok,
                               tokens))
  return masked, tokens, selected.astype(jnp.float32)


def _token_nll(logits, targets, weights, name: str,
               label_smoothing: float = 0.0):
  _check_rank(logits, 3, "logits", "[batch, length, vocab]")
  if _shape(targets) != _shape(logits)[:2]:
    raise ValueError(f"targets: expected shape [batch, length] ="
                     f" {_shape(logits)[:2]}, got {_shape(targets)}.")
  if weights is not None and _shape(weights) != _shape(logits)[:2]:
    raise ValueError(f"weights: expected shape [batch, length] ="
                     f" {_shape(logits)[:2]}, got {_shape(weights)}.")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing: expected a value in [0, 1), got"
                     f" {label_smoothing} ({name}).")
  logp = jax.nn.log_softmax(_f32(logits), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.asarray(targets)[..., None],
                             axis=-1)[..., 0]
  if label_smoothing:
    # CE against (1 - a) * onehot + a / vocab, as optax.smooth_labels.
    nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, -1)
  return _weighted_mean(nll, weights)


def mlm_loss(logits: Array, targets: Array, weights: Array) -> Array:
  """Masked-LM cross-entropy averaged over the selected tokens.

  Args:
    logits: `[batch, length, vocab]`; targets: `[batch, length]` int;
    weights: `[batch, length]` (1.0 on selected tokens, from `mlm_mask`).
  Returns:
    Scalar float32 sum(w * CE) / sum(w) (0 when nothing is selected).
  """
  return _token_nll(logits, targets, weights, "mlm_loss")


def lm_loss(logits: Array, targets: Array, weights: Optional[Array],
            label_smoothing: float = 0.0) -> Array:
  """Captioning / causal LM cross-entropy with label smoothing.

  Args:
    logits: `[batch, length, vocab]` next-token logits.
    targets: `[batch, length]` int next tokens.
    weights: `[batch, length]` (0 on padding), or None for all ones.
    label_smoothing: a; the target is (1 - a) * onehot + a / vocab
      (`optax.smooth_labels`; Szegedy et al. 2016, Sec. 7).
  Returns:
    Scalar float32 weighted mean token cross-entropy.
  """
  return _token_nll(logits, targets, weights, "lm_loss", label_smoothing)


# ----------------------------------------------------------------------------
# VQA and classification
# ----------------------------------------------------------------------------
def vqa_soft_loss(logits: Array, soft_targets: Array) -> Array:
  """Binary cross-entropy with soft VQA scores (Teney et al. 2018, Sec. 3.6).

  Args:
    logits: `[batch, n_answers]`.
    soft_targets: `[batch, n_answers]` scores in [0, 1], e.g.
      min(1, #annotators / 3).
  Returns:
    Scalar float32: BCE summed over answers, averaged over the batch (as the
    bottom-up top-down code: mean BCE * n_answers).
  """
  _check_rank(logits, 2, "logits", "[batch, n_answers]")
  _check_same(logits, soft_targets, "logits", "soft_targets",
              "[batch, n_answers]")
  bce = optax.sigmoid_binary_cross_entropy(_f32(logits), _f32(soft_targets))
  return jnp.mean(jnp.sum(bce, axis=-1))


def classification_loss(logits: Array, labels: Array,
                        weights: Optional[Array] = None) -> Array:
  """Softmax cross-entropy; logits `[batch, classes]`, labels `[batch]` int.

  The mean over the batch, or with `weights` `[batch]` (e.g. a bool mask of
  real examples) sum(w * ce) / max(sum(w), 1).
  """
  _check_rank(logits, 2, "logits", "[batch, classes]")
  if _shape(labels) != _shape(logits)[:1]:
    raise ValueError(f"labels: expected shape [batch] = {_shape(logits)[:1]},"
                     f" got {_shape(labels)}.")
  ce = optax.softmax_cross_entropy_with_integer_labels(
      _f32(logits), jnp.asarray(labels))
  if weights is None:
    return jnp.mean(ce)
  if _shape(weights) != _shape(logits)[:1]:
    raise ValueError(f"weights: expected shape [batch] = "
                     f"{_shape(logits)[:1]}, got {_shape(weights)}.")
  w = _f32(weights)
  return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)
