"""Caption decoding speed: the KV cache vs recomputing the prefix, and vs
open_clip's CoCa `generate`, on the same tiny CoCa shape in the same run.

  python experiments/benchmarks/caption_decode.py [--batch 8] [--new_tokens 24]
      [--beam 4] [--repeats 3] [--quick]

Random weights (speed only). Every method produces `new_tokens` tokens per
row after a BOS prompt (no EOS stop: mmtx gets eos_id=None, open_clip a
min_seq_len that suppresses EOS), same batch and beam size. Rows:
  mmtx KV cache   `mmtx.models.captioner.generate` (jit, while_loop, cache).
  mmtx recompute  the same loop with `reference_fns`: each step reruns the
                  decoders over the whole [batch, prompt + new_tokens] buffer
                  (a fixed-shape recompute: up to 2x the work of a growing
                  prefix).
  open_clip       `open_clip.CoCa.generate` (eager PyTorch; reruns the growing
                  prefix every step, no cache); greedy = top_k with k=1, beam =
                  beam_search with one beam group.
tokens/s = batch * new_tokens / median seconds per call after one warm-up
(compile) call; "x KV cache" is tokens/s over the KV-cache row's.
"""
import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmtx.models import captioner as cap

BOS = 2


def configs(a):
  """mmtx config and the open_clip CoCa kwargs with the same shapes."""
  head_dim = 32 if a.quick else 64
  mmtx = dict(
      image=dict(patch_size=a.patch, width=a.img_width, depth=a.img_depth,
                 mlp_dim=4 * a.img_width, num_heads=a.img_width // head_dim),
      text=dict(vocab_size=a.vocab, width=a.width, depth=a.depth,
                mlp_dim=4 * a.width, num_heads=a.width // head_dim,
                max_len=1 + a.new_tokens),
      decoder_depth=a.depth, embed_dim=a.width, num_queries=a.queries,
      tie_embeddings=False)
  heads = a.width // head_dim
  oc = dict(
      embed_dim=a.width,  # open_clip projects the image tokens to embed_dim
      multimodal_cfg=dict(context_length=1 + a.new_tokens,
                          vocab_size=a.vocab, width=a.width, heads=heads,
                          layers=a.depth, attn_pooler_heads=heads),
      text_cfg=dict(context_length=1 + a.new_tokens, vocab_size=a.vocab,
                    width=a.width, heads=heads, layers=a.depth,
                    embed_cls=True, output_tokens=True),
      vision_cfg=dict(image_size=a.image_size, patch_size=a.patch,
                      width=a.img_width, layers=a.img_depth,
                      head_width=head_dim, attentional_pool=True,
                      attn_pooler_queries=a.queries,
                      attn_pooler_heads=a.img_width // head_dim,
                      output_tokens=True),
      pad_id=0)
  return mmtx, oc


def timed(fn, repeats):
  fn()  # warm-up: compiles (jax) / first-call setup (torch)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_mmtx(a, cfg, images):
  params = jax.jit(cap.Captioner(cfg).init)(
      jax.random.key(0), images, jnp.ones((a.batch, 2), jnp.int32))["params"]
  params = jax.tree_util.tree_map(lambda p: getattr(p, "value", p), params,
                                  is_leaf=lambda p: hasattr(p, "value"))
  prompt = jnp.full((a.batch, 1), BOS, jnp.int32)
  out = {}
  for method, kw in (("greedy", {}), ("beam", dict(beam_size=a.beam))):
    for cached in (True, False):
      fn = jax.jit(lambda p, x, q, kw=kw, method=method, cached=cached:
                   cap.generate(cfg, p, x, q, max_new_tokens=a.new_tokens,
                                eos_id=None, method=method, cached=cached,
                                **kw).tokens)
      def run(fn=fn):
        return jax.block_until_ready(fn(params, images, prompt))
      tokens = np.asarray(run())
      assert tokens.shape == (a.batch, a.new_tokens), tokens.shape
      out[method, "mmtx KV cache" if cached else "mmtx recompute"] = timed(
          run, a.repeats)
  return out


def bench_open_clip(a, oc_kwargs, images):
  # transformers 4.57 still ships BeamSearchScorer but no longer re-exports
  # it where open_clip 3.3 looks; without it open_clip disables generate().
  import transformers.generation
  from transformers.generation.beam_search import BeamSearchScorer
  transformers.generation.BeamSearchScorer = BeamSearchScorer
  import open_clip
  import torch
  torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  model = open_clip.CoCa(**oc_kwargs).eval()
  # open_clip 3.3 leaves the decoder's output projection as torch.empty (its
  # init_parameters() is never called and refers to a missing attribute), so
  # random weights can hold NaN: initialise it as that method intends.
  with torch.no_grad():
    torch.nn.init.normal_(model.text_decoder.text_projection,
                          std=a.width ** -0.5)
  x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()
  common = dict(seq_len=1 + a.new_tokens, min_seq_len=a.new_tokens,
                sot_token_id=BOS, eos_token_id=1, pad_token_id=0)
  out = {}
  for method, kw in (("greedy", dict(generation_type="top_k", top_k=1)),
                     ("beam", dict(generation_type="beam_search",
                                   num_beams=a.beam, num_beam_groups=1))):
    def run(kw=kw):
      with torch.no_grad():
        return model.generate(x, **common, **kw)
    tokens = run()
    assert tokens.shape == (a.batch, 1 + a.new_tokens), tokens.shape
    out[method, "open_clip CoCa.generate"] = timed(run, a.repeats)
  return out, torch.get_num_threads()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--new_tokens", type=int, default=24)
  p.add_argument("--beam", type=int, default=4)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=1,
                 help="CPU threads for both XLA and torch (on a shared 2-core "
                 "box, 2 torch threads made each tiny op ~1000x slower)")
  p.add_argument("--quick", action="store_true",
                 help="smoke test: tiny shapes, one repeat")
  a = p.parse_args()
  # Read when the XLA backend starts, i.e. at the first computation below.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + (
      " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
      if a.threads == 1 else "")).strip()
  a.image_size, a.patch, a.img_width, a.img_depth = 64, 16, 128, 2
  a.width, a.depth, a.vocab, a.queries = 256, 2, 4096, 16
  if a.quick:
    a.batch, a.new_tokens, a.beam, a.repeats = 2, 6, 2, 1
    a.image_size, a.patch, a.img_width, a.img_depth = 16, 8, 32, 1
    a.width, a.depth, a.vocab, a.queries = 64, 1, 128, 4
  cfg, oc_kwargs = configs(a)
  images = jax.random.normal(jax.random.key(1),
                             (a.batch, a.image_size, a.image_size, 3))
  secs = bench_mmtx(a, cfg, images)
  oc_secs, threads = bench_open_clip(a, oc_kwargs, images)
  secs.update(oc_secs)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs, threads {a.threads} (torch {threads}); "
        f"batch {a.batch}, {a.new_tokens} new tokens, beam {a.beam}; text "
        f"width {a.width}, {a.depth}+{a.depth} decoder layers, vocab "
        f"{a.vocab}; image {a.image_size}px/{a.patch}, {a.queries} context "
        f"tokens")
  print(f"{'method':<8} {'implementation':<26} {'tokens/s':>10} "
        f"{'x KV cache':>11}")
  for method in ("greedy", "beam"):
    base = a.batch * a.new_tokens / secs[method, "mmtx KV cache"]
    for impl in ("mmtx KV cache", "mmtx recompute", "open_clip CoCa.generate"):
      rate = a.batch * a.new_tokens / secs[method, impl]
      name = method if method == "greedy" else f"beam{a.beam}"
      print(f"{name:<8} {impl:<26} {rate:>10.1f} {rate / base:>10.2f}x")


if __name__ == "__main__":
  main()
