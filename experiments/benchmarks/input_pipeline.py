"""Input pipeline throughput vs. what a small training step consumes.

  python experiments/benchmarks/input_pipeline.py [--data_dir DIR] [--batches 60]
  python experiments/benchmarks/input_pipeline.py --images [--pairs 20000]

With --images: JPEG ingest and decode + augment throughput against a
webdataset + PIL + torchvision DataLoader (image_input.py says how).

Times the VQA view of sort_of_clevr (train, batch 64, shuffled, augmented)
through `mmtx.data.get_dataset`, and a jitted Adam step of a 2-layer
Transformer (mmtx.layers) on the same batch shapes: 5x5 patches of the 75x75
image (15x15 = 225 tokens) + the question tokens, mean-pooled into the answer
logits. Prints examples/s of both and pipeline / step: above 1 the input
pipeline keeps up with this step on this machine.
"""
import argparse
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmtx import data
from mmtx import layers


class TinyVqa(nn.Module):
  vocab_size: int
  num_answers: int
  dim: int = 128

  @nn.compact
  def __call__(self, image, question, question_mask):
    img = layers.PatchEmbedding(patch_size=5, features=self.dim)(image)
    img = layers.PositionEmbedding(kind="sincos2d", grid=(15, 15))(img)
    txt = layers.TokenEmbedding(self.vocab_size, self.dim)(question)
    txt = layers.PositionEmbedding(kind="learned", max_len=64)(txt)
    x = jnp.concatenate([img, txt], 1)
    mask = jnp.concatenate([jnp.ones(img.shape[:2], bool), question_mask], 1)
    x = layers.Encoder(num_layers=2, num_heads=4, mlp_dim=4 * self.dim)(x, mask)
    pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return nn.Dense(self.num_answers)(pooled)


def time_pipeline(args):
  it, info = data.get_dataset("sort_of_clevr", "train", "vqa", batch_size=64,
                              seed=0, max_len=args.max_len, augment=True,
                              data_dir=args.data_dir, num_threads=args.num_threads,
                              num_workers=args.num_workers)
  for _ in range(5):
    batch = next(it)
  start = time.perf_counter()
  for _ in range(args.batches):
    batch = next(it)
  secs = time.perf_counter() - start
  batch = {k: np.array(v) for k, v in batch.items()}
  it.close()   # stops grain's worker processes and frees their shared memory
  return 64 * args.batches / secs, batch, info


def time_step(batch, info, steps):
  model = TinyVqa(info.tokenizer.vocab_size, len(info.answers))
  inputs = (jnp.asarray(batch["image"]), jnp.asarray(batch["question"]),
            jnp.asarray(batch["question_mask"]))
  params = nn.meta.unbox(model.init(jax.random.key(0), *inputs))["params"]
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, image, question, question_mask, answer):
    def loss_fn(p):
      logits = model.apply({"params": p}, image, question, question_mask)
      return optax.softmax_cross_entropy_with_integer_labels(logits, answer).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  answer = jnp.asarray(batch["answer"])
  params, opt_state, loss = step(params, opt_state, *inputs, answer)  # compile
  loss.block_until_ready()
  start = time.perf_counter()
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state, *inputs, answer)
  loss.block_until_ready()
  return 64 * steps / (time.perf_counter() - start)


def main():
  if "--images" in sys.argv[1:]:
    import image_input  # pylint: disable=g-import-not-at-top
    image_input.main([a for a in sys.argv[1:] if a != "--images"])
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--batches", type=int, default=60)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--max_len", type=int, default=32)
  parser.add_argument("--num_threads", type=int, default=None)
  parser.add_argument("--num_workers", type=int, default=0)
  args = parser.parse_args()
  start = time.perf_counter()
  data.ensure_built("sort_of_clevr", args.data_dir)
  print(f"dataset ready in {time.perf_counter() - start:.1f} s")
  pipe, batch, info = time_pipeline(args)
  step = time_step(batch, info, args.steps)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; "
        f"num_threads={args.num_threads or 'default'} "
        f"num_workers={args.num_workers}")
  print(f"input pipeline (sort_of_clevr vqa, batch 64): {pipe:9.1f} examples/s")
  print(f"train step (2-layer Transformer, 225+{args.max_len} tokens): "
        f"{step:9.1f} examples/s")
  print(f"pipeline / step: {pipe / step:.2f}")


if __name__ == "__main__":
  main()
