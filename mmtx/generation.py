"""Autoregressive decoding: greedy, beam search, top-k / nucleus sampling.

No model is imported here. A model is a `step_fn(tokens, cache, positions) ->
(logits, cache)`: tokens `[batch, chunk]` int32, positions `[chunk]` int32
(where the chunk sits in the sequence, prompt included), logits `[batch, chunk,
vocab]`; `cache` is any pytree the step_fn keeps (a KV cache, or for
`uncached_step_fn` the tokens so far). The prompt `[batch, prompt_len]` is fed
in one chunk (prefill), then one token per step inside `jax.lax.while_loop`,
so a cache must hold `prompt_len + max_new_tokens - 1` positions. Call the
decoders inside `jax.jit` with the step_fn built there from traced params.

Outputs hold the new tokens only, `[batch, max_new_tokens]`, with `pad_id`
after EOS; a length counts the EOS token. `pad_id` is never generated (its
logit is masked before the softmax, so log-probs are over the other tokens).
Beam scores are GNMT's log P / lp(len), lp = ((5 + len) / 6)^alpha (Wu et al.
2016, Eq. 14); sampling is top-k (Fan et al. 2018) and nucleus / top-p
(Holtzman et al. 2020) with a temperature.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Any, Array], tuple[Array, Any]]


class Output(NamedTuple):
  """tokens `[batch, max_new]` (pad after EOS); lengths `[batch]` (EOS
  counted); scores `[batch]` sum of the tokens' log-probs (float32)."""
  tokens: Array
  lengths: Array
  scores: Array


class BeamOutput(NamedTuple):
  """The best finished beam (`tokens`, `lengths`, `scores` = length-penalised)
  and all `beam_size` finished beams, best first: `beams` `[batch, beams,
  max_new]`, `beam_lengths`, `beam_scores` (-inf where fewer hypotheses
  exist; their tokens are pad)."""
  tokens: Array
  lengths: Array
  scores: Array
  beams: Array
  beam_lengths: Array
  beam_scores: Array


# ----------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------
def length_penalty(length: Array, alpha: float) -> Array:
  """GNMT length penalty ((5 + length) / 6)^alpha (Wu et al. 2016, Eq. 14)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def filter_logits(logits: Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
  """logits `[..., vocab]` / temperature, then -inf outside the top k (0 = off)
  and outside the smallest set of most likely tokens with mass >= top_p (1.0 =
  off). Ties at either cut-off are all kept. Returns float32."""
  _check_sampling(temperature, top_k, top_p, logits.shape[-1])
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ranked = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ranked, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # Keep ranked token i while the tokens above it have mass < top_p; the
    # most likely token is always kept.
    keep = (mass_before < top_p).at[..., 0].set(True)
    cutoff = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def repeat_beams(x: Array, beam_size: int) -> Array:
  """`[batch, ...]` -> `[batch * beam_size, ...]`, row i*k + j = beam j of i:
  the layout `beam_search` expects of a cache and of a step_fn's context."""
  return jnp.repeat(x, beam_size, axis=0)


def uncached_step_fn(logits_fn: Callable[[Array], Array], batch: int,
                     max_len: int) -> tuple[StepFn, Any]:
  """A reference step_fn without a KV cache: the "cache" is the token buffer
  `[batch, max_len]` (pad = 0 where not written yet) and every call runs the
  whole causal `logits_fn(tokens [batch, max_len]) -> [batch, max_len, vocab]`
  again, returning the chunk's rows. Cost per step: a full max_len forward.
  Returns `(step_fn, cache)`."""
  def step_fn(tokens, cache, positions):
    buf = jax.lax.dynamic_update_slice(cache["tokens"],
                                       tokens.astype(jnp.int32),
                                       (0, positions[0]))
    logits = logits_fn(buf)
    out = jax.lax.dynamic_slice_in_dim(logits, positions[0], tokens.shape[1],
                                       axis=1)
    return out, {"tokens": buf}
  return step_fn, {"tokens": jnp.zeros((batch, max_len), jnp.int32)}


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------
def _check_common(prompt, max_new_tokens, eos_id, pad_id):
  if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(
      prompt.dtype, jnp.integer):
    raise ValueError(f"prompt: expected int token ids [batch, prompt_len >= 1]"
                     f" (e.g. [[BOS]]), got shape {prompt.shape} dtype "
                     f"{prompt.dtype}.")
  if int(max_new_tokens) < 1:
    raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}.")
  if eos_id is not None and eos_id == pad_id:
    raise ValueError(f"eos_id: must differ from pad_id={pad_id} (padding fills"
                     f" the positions after EOS).")


def _check_sampling(temperature, top_k, top_p, vocab=None):
  if not temperature > 0.0:
    raise ValueError(f"temperature: expected > 0 (use greedy for 0), got "
                     f"{temperature}.")
  if top_k < 0 or (vocab is not None and top_k > vocab):
    raise ValueError(f"top_k: expected an int in [0, vocab={vocab}] (0 = off),"
                     f" got {top_k}.")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p: expected a mass in (0, 1], got {top_p}.")


def _check_beam_cache(cache, n_rows):
  for x in jax.tree_util.tree_leaves(cache):
    if jnp.ndim(x) and x.shape[0] != n_rows:
      raise ValueError(
          f"cache: beam search needs every non-scalar cache leaf batch-major, "
          f"[batch * beam_size = {n_rows}, ...]; got a leaf of shape "
          f"{x.shape}. Build the cache (and the step_fn's context) for batch *"
          f" beam_size rows, e.g. with repeat_beams.")


def _prefill(step_fn, cache, prompt):
  """Feeds the whole prompt; returns the last position's logits `[b, V]`."""
  b, p = prompt.shape
  logits, cache = step_fn(prompt.astype(jnp.int32), cache,
                          jnp.arange(p, dtype=jnp.int32))
  if logits.ndim != 3 or logits.shape[:2] != (b, p):
    raise ValueError(f"step_fn: expected logits [batch, chunk, vocab] with "
                     f"(batch, chunk) = {(b, p)} for the prompt, got shape "
                     f"{logits.shape}.")
  return logits[:, -1], cache


def _log_probs(logits, pad_id):
  """log_softmax over every token but `pad_id`, float32 `[..., vocab]`."""
  logits = logits.astype(jnp.float32).at[..., pad_id].set(-jnp.inf)
  return jax.nn.log_softmax(logits, axis=-1)


def _is_eos(tok, eos_id):
  if eos_id is None:
    return jnp.zeros(tok.shape, bool)
  return tok == eos_id


# ----------------------------------------------------------------------------
# Greedy and sampling: one token per row per step.
# ----------------------------------------------------------------------------
def _one_per_step(step_fn, cache, prompt, choose, max_new_tokens, eos_id,
                  pad_id):
  _check_common(prompt, max_new_tokens, eos_id, pad_id)
  b, p = prompt.shape
  n = int(max_new_tokens)
  last, cache = _prefill(step_fn, cache, prompt)

  def pick(i, last, tokens, lengths, scores, finished):
    logp = _log_probs(last, pad_id)
    tok = choose(i, logp).astype(jnp.int32)
    tok_logp = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
    tok = jnp.where(finished, pad_id, tok)
    tokens = tokens.at[:, i].set(tok)
    lengths = lengths + (~finished).astype(jnp.int32)
    scores = scores + jnp.where(finished, 0.0, tok_logp)
    finished = finished | _is_eos(tok, eos_id)
    return tok, tokens, lengths, scores, finished

  state = pick(0, last, jnp.full((b, n), pad_id, jnp.int32),
               jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.float32),
               jnp.zeros((b,), bool))

  def cond(carry):
    i, _, _, _, _, finished, _ = carry
    return (i < n) & ~jnp.all(finished)

  def body(carry):
    i, tok, tokens, lengths, scores, finished, cache = carry
    pos = (p + i - 1)[None].astype(jnp.int32)
    logits, cache = step_fn(tok[:, None], cache, pos)
    return (i + 1,) + pick(i, logits[:, -1], tokens, lengths, scores,
                           finished) + (cache,)

  carry = jax.lax.while_loop(cond, body, (jnp.array(1, jnp.int32),) + state
                             + (cache,))
  _, _, tokens, lengths, scores, _, _ = carry
  return Output(tokens, lengths, scores)


def greedy(step_fn: StepFn, cache: Any, prompt: Array, *,
           max_new_tokens: int, eos_id: Optional[int],
           pad_id: int = 0) -> Output:
  """Greedy decoding: the argmax token each step (lowest id on ties).

  Args:
    step_fn: `(tokens [b, chunk], cache, positions [chunk]) -> (logits [b,
      chunk, vocab], cache)`.
    cache: the step_fn's cache for batch b, `prompt_len + max_new_tokens - 1`
      long.
    prompt: `[b, prompt_len]` int32, e.g. `[[BOS]]` or BOS + a question.
    max_new_tokens: tokens generated after the prompt, EOS included.
    eos_id: a row stops after it (None = always max_new_tokens).
    pad_id: fills the positions after EOS; never generated.
  Returns:
    `Output`; stops early once every row has produced EOS.
  """
  choose = lambda i, logp: jnp.argmax(logp, axis=-1)  # noqa: E731
  return _one_per_step(step_fn, cache, prompt, choose, max_new_tokens, eos_id,
                       pad_id)


def sample(step_fn: StepFn, cache: Any, prompt: Array, rng: Array, *,
           max_new_tokens: int, eos_id: Optional[int],
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           pad_id: int = 0) -> Output:
  """Ancestral sampling from `filter_logits(logits, temperature, top_k,
  top_p)`; arguments as `greedy`, plus a PRNG key `rng` (step i uses
  `fold_in(rng, i)`). `scores` are the model's log-probs (temperature 1,
  unfiltered) of the sampled tokens."""
  _check_sampling(temperature, top_k, top_p)

  def choose(i, logp):
    z = filter_logits(logp, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(jax.random.fold_in(rng, i), z, axis=-1)

  return _one_per_step(step_fn, cache, prompt, choose, max_new_tokens, eos_id,
                       pad_id)


# ----------------------------------------------------------------------------
# Beam search
# ----------------------------------------------------------------------------
def _reorder(cache, rows):
  """Gathers the batch-major cache leaves `[batch * beams, ...]` by `rows`;
  scalars (e.g. a shared cache index) stay."""
  return jax.tree_util.tree_map(
      lambda x: x if jnp.ndim(x) == 0 else jnp.take(x, rows, axis=0), cache)


def beam_search(step_fn: StepFn, cache: Any, prompt: Array, *,
                beam_size: int, max_new_tokens: int, eos_id: Optional[int],
                alpha: float = 0.6, pad_id: int = 0) -> BeamOutput:
  """Beam search with GNMT's length penalty (Wu et al. 2016, Sec. 7).

  Each step extends every alive beam by every token, keeps the 2k best by
  log-prob, moves those ending in EOS to the finished set (scored log P /
  lp(len)), and the k best others stay alive. Finished beams are kept; a beam
  that reaches max_new_tokens finishes there. The loop stops at
  max_new_tokens, or once no alive beam can beat the k-th finished one.

  Args:
    step_fn, eos_id, pad_id: as `greedy`.
    cache: the step_fn's cache for `batch * beam_size` rows (row i*k + j is
      beam j of item i; see `repeat_beams`), all non-scalar leaves
      batch-major; it is reordered by `jnp.take` on axis 0 each step.
    prompt: `[batch, prompt_len]` int32 (repeated over the beams here).
    beam_size: k.
    max_new_tokens: the longest hypothesis, EOS included.
    alpha: length-penalty exponent (0 = plain log-prob).
  Returns:
    `BeamOutput`.
  """
  _check_common(prompt, max_new_tokens, eos_id, pad_id)
  if int(beam_size) < 1:
    raise ValueError(f"beam_size: expected >= 1, got {beam_size}.")
  b, p = prompt.shape
  k, n = int(beam_size), int(max_new_tokens)
  bk = b * k
  _check_beam_cache(cache, bk)
  last, cache = _prefill(step_fn, cache, repeat_beams(prompt, k))
  neg = jnp.float32(-jnp.inf)
  lp_max = length_penalty(n, alpha)

  def select(i, last, alive_seq, alive_logp, fin_seq, fin_score, fin_len):
    logp = _log_probs(last, pad_id)
    vocab = logp.shape[-1]
    cand = (alive_logp[:, :, None] + logp.reshape(b, k, vocab)).reshape(
        b, k * vocab)
    cand_logp, idx = jax.lax.top_k(cand, min(2 * k, k * vocab))
    parent, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
    seq = jnp.take_along_axis(alive_seq, parent[:, :, None], axis=1)
    seq = seq.at[:, :, i].set(tok)
    ends = _is_eos(tok, eos_id) | (i == n - 1)
    # Finished: merge the candidates ending here with the kept ones.
    new_score = jnp.where(ends, cand_logp / length_penalty(i + 1, alpha), neg)
    all_score = jnp.concatenate([fin_score, new_score], axis=1)
    all_seq = jnp.concatenate([fin_seq, seq], axis=1)
    all_len = jnp.concatenate(
        [fin_len, jnp.full(new_score.shape, i + 1, jnp.int32)], axis=1)
    fin_score, top = jax.lax.top_k(all_score, k)
    fin_seq = jnp.take_along_axis(all_seq, top[:, :, None], axis=1)
    fin_len = jnp.take_along_axis(all_len, top, axis=1)
    # Alive: the k best that did not end.
    alive_logp, top = jax.lax.top_k(jnp.where(ends, neg, cand_logp), k)
    alive_seq = jnp.take_along_axis(seq, top[:, :, None], axis=1)
    parent = jnp.take_along_axis(parent, top, axis=1)
    rows = (jnp.arange(b)[:, None] * k + parent).reshape(-1)
    feed = jnp.take_along_axis(tok, top, axis=1).reshape(-1)
    return rows, feed, alive_seq, alive_logp, fin_seq, fin_score, fin_len

  zeros_seq = jnp.full((b, k, n), pad_id, jnp.int32)
  alive_logp0 = jnp.full((b, k), neg).at[:, 0].set(0.0)  # beams start equal
  state = select(0, last, zeros_seq, alive_logp0, zeros_seq,
                 jnp.full((b, k), neg), jnp.zeros((b, k), jnp.int32))

  def cond(carry):
    i, _, _, _, alive_logp, _, fin_score, _, _ = carry
    # An alive beam's final score is at most log P / lp(L) for the longest
    # (alpha >= 0) or shortest (alpha < 0) length it can still reach.
    best = jnp.max(alive_logp, axis=1)
    bound = jnp.maximum(best / lp_max, best / length_penalty(i + 1, alpha))
    can_improve = jnp.any(bound > jnp.min(fin_score, axis=1))
    return (i < n) & can_improve

  def body(carry):
    i, rows, feed, alive_seq, alive_logp, fin_seq, fin_score, fin_len, cache \
        = carry
    cache = _reorder(cache, rows)
    logits, cache = step_fn(feed[:, None], cache,
                            (p + i - 1)[None].astype(jnp.int32))
    return (i + 1,) + select(i, logits[:, -1], alive_seq, alive_logp, fin_seq,
                             fin_score, fin_len) + (cache,)

  carry = jax.lax.while_loop(cond, body, (jnp.array(1, jnp.int32),) + state
                             + (cache,))
  fin_seq, fin_score, fin_len = carry[5], carry[6], carry[7]
  valid = fin_score > neg
  fin_seq = jnp.where(valid[:, :, None], fin_seq, pad_id)
  fin_len = jnp.where(valid, fin_len, 0)
  return BeamOutput(fin_seq[:, 0], fin_len[:, 0], fin_score[:, 0], fin_seq,
                    fin_len, fin_score)
