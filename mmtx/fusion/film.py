"""FiLM: feature-wise linear modulation (Perez et al. 2018, "FiLM: Visual
Reasoning with a General Conditioning Layer", AAAI).

The target modality's tokens (the image's, as in the paper) pass through
`num_layers` residual blocks; in each, the features are scaled and shifted
per channel by a function of the other modalities (the question):

  c     = sum over the other modalities m of mean_t(x_{m,t} W_m + b_m)
  h     = ReLU(x W_1 + b_1)                       (the paper's 1x1 conv)
  h     = LN(h W_2 + b_2)                         (BN in the paper; no affine)
  h     = ReLU((1 + gamma_l(c)) * h + beta_l(c))  (FiLM; [gamma, beta] = c G_l + g_l)
  x     = x + h

The paper's 3x3 convolution is the position-wise Dense W_2 here (the tokens
carry their positions through the image tower's position embeddings; add
image self-attention with `ViT.depth` for spatial context). The generator
G_l is initialised to zero, so at initialisation every block is the
unconditioned residual block, and `1 + gamma` keeps the scale near 1 (the
paper notes this parametrisation as equivalent and more stable).

Why it is here beside the attention fusions: the modulation multiplies an
image feature by a question feature, so "the red object is on the left"
needs one product, not an attention pattern to be found first. In a probe
on Sort-of-CLEVR's non-relational questions alone (2-core CPU, 60 s, 16
images x 10 questions per step, same conv stem and text tower), FiLM with
max-pooling reached 88.9 % test accuracy where single-query
cross-attention was at 58 %; experiments/fusion_ablation.py compares every
strategy on all question types.
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from mmtx.fusion.base import (DirectionalFusion, check_inputs, dense,
                              final_norm, project)
from mmtx.layers import masked_mean


class FiLMFusion(DirectionalFusion):
  """FiLM residual blocks over the target, conditioned on the rest.

  Reads dim, num_layers, dtype, param_dtype, norm (the closing LayerNorm
  for 'pre') and target (default: first key in sorted order, 'image' before
  'text'). Returns the target's modulated tokens `[batch, n_target, dim]`
  and the target's mask. Params: `proj_{key}` per modality, and per block
  `layers_{l}` with `conv1`, `conv2`, `film` (the generator, zero init).
  """
  unread = ("num_heads", "mlp_dim", "dropout_rate", "attention_dropout_rate",
            "activation", "attention_impl")

  @nn.compact
  def __call__(self, tokens, masks, *, deterministic: bool = True):
    del deterministic  # no dropout
    who = type(self).__name__
    keys, tokens, masks = check_inputs(tokens, masks, who, min_modalities=2)
    target, context_keys = self._split(keys)
    x = project(self, target, tokens[target])
    cond = sum(masked_mean(project(self, k, tokens[k]), masks[k])
               for k in context_keys)                       # [batch, dim] f32
    d = self.dim
    for layer in range(self.num_layers):
      x = _FiLMBlock(d, self.dtype, self.param_dtype,
                     name=f"layers_{layer}")(x, cond)
    return final_norm(self, x, "ln_final"), masks[target]


class _FiLMBlock(nn.Module):
  dim: int
  dtype: object
  param_dtype: object

  @nn.compact
  def __call__(self, x, cond):
    d = self.dim
    h = nn.relu(dense(d, ("embed", "mlp"), self.dtype, self.param_dtype,
                      "conv1")(x))
    h = dense(d, ("mlp", "embed"), self.dtype, self.param_dtype, "conv2")(h)
    h = nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6,
                     dtype=self.dtype, name="norm")(h)
    gb = dense(2 * d, (None, "embed"), jnp.float32, self.param_dtype, "film",
               kernel_init=nn.initializers.zeros_init())(cond)
    gamma, beta = gb[:, None, :d], gb[:, None, d:]
    h = nn.relu((1.0 + gamma) * h.astype(jnp.float32) + beta)
    return x + h.astype(x.dtype)
