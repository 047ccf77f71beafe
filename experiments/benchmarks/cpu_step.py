"""A small CLIP training step on this CPU: mmtx against the peers a user
would pick instead, same architecture, loss and optimizer (issue 8, item 4).

  python experiments/benchmarks/cpu_step.py            # ~2 min
  python experiments/benchmarks/cpu_step.py --quick    # smoke test, ~30 s
  python experiments/benchmarks/cpu_step.py --torch_compile   # + open_clip
                                                              # torch.compile

Frameworks (each in its own process, started once):
  mmtx        `mmtx.train.make_train_step` on a `DualEncoder` (the contrastive
              task's loss), `mmtx.optimizers` AdamW, jit + donate_argnums.
  hf_flax     transformers `FlaxCLIPModel` (4.57.x, the last release with Flax
              models), `logits_per_image`, optax.adamw, jit + donate_argnums.
  open_clip   `open_clip.model.CLIP` (quick_gelu), `open_clip.loss.ClipLoss`,
              torch.optim.AdamW, eager.
  hf_torch    transformers `CLIPModel` (sdpa attention), `return_loss=True`,
              torch.optim.AdamW, eager.
One architecture for all: CLIP's (class token, LayerNorm before the encoder,
no patch bias, quick_gelu, LayerNorm eps 1e-5, causal text tower pooled at
the EOT = highest token id, bias-free projections to `--embed_dim`); the
mmtx config is the one `mmtx.interop.hf_clip.from_transformers` gives for the
HF config (tests/test_benchmarks.py checks that). Loss: the symmetric softmax
contrastive loss with the learned logit scale, init 1/0.07. AdamW lr 5e-4,
betas (0.9, 0.98), eps 1e-6, weight decay 0.2 (on weight matrices only for
mmtx, open_clip and HF; optax.adamw decays all of hf_flax's params: same
cost). Random init, dropout off, float32, the same random batch every step.

This machine is noisy (other jobs share the cores) and one framework's
threads disturb the next: every worker compiles and warms up first, then the
parent asks each in turn for `--steps` timed steps, rotating the order every
round (A B C D, B C D A, ...), with a short pause between turns so that
spinning OpenMP threads settle. By default every worker is pinned to the
same single core (`--cpus 1`, torch to one thread): on a shared 2-vCPU VM
torch's two OpenMP threads busy-wait for each other whenever another job
holds a core and run ~10x slower (`--cpus 0` keeps each framework's own
threads; NOTES.md has both tables). Per framework: the median over rounds of the
mean step time of each turn; "mmtx speed-up" is the median over rounds of
(framework's step time / mmtx's step time in the same round): above 1 mmtx is
faster. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
FRAMEWORKS = ("mmtx", "hf_flax", "open_clip", "hf_torch")
QUICK = dict(image_size=32, patch=16, width=64, depth=1, heads=2, text_len=8,
             vocab=512, embed_dim=64, batch=8, rounds=2, steps=2, warmup=1)


def hf_clip_config(a):
  """transformers.CLIPConfig with the benchmark's shapes (legacy EOT rule:
  eos_token_id=2 makes HF pool at the highest token id)."""
  import transformers
  tower = dict(hidden_size=a.width, intermediate_size=4 * a.width,
               num_hidden_layers=a.depth, num_attention_heads=a.heads,
               hidden_act="quick_gelu", layer_norm_eps=1e-5)
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=a.vocab, max_position_embeddings=a.text_len,
                       eos_token_id=2, bos_token_id=0, pad_token_id=1,
                       **tower),
      vision_config=dict(image_size=a.image_size, patch_size=a.patch,
                         **tower),
      projection_dim=a.embed_dim)


def mmtx_model_config(a) -> dict:
  """The DualEncoder config that `from_transformers` gives for
  `hf_clip_config(a)`."""
  tower = dict(width=a.width, depth=a.depth, mlp_dim=4 * a.width,
               num_heads=a.heads, activation="quick_gelu",
               layer_norm_eps=1e-5)
  return dict(
      loss="softmax", embed_dim=a.embed_dim, logit_scale_init=1 / 0.07,
      max_logit_scale=100.0,
      image=dict(patch_size=a.patch, posemb="learned", pool="cls",
                 cls_posemb=True, patch_bias=False, ln_pre=True, **tower),
      text=dict(vocab_size=a.vocab, max_len=a.text_len, causal=True,
                pool="argmax", mask_padding=False, **tower))


def batch_arrays(a):
  """NHWC images, int32 ids (EOT = vocab - 1 last, 0-padded) and the mask."""
  images, texts = harness.make_batch(a, a.batch)
  return images, texts, (texts != 0).astype("int32")


# ----------------------------------------------------------------------------
# Workers: each returns step() -> loss (blocking) after building its model.
# ----------------------------------------------------------------------------
def mmtx_worker(a):
  import jax
  import ml_collections
  from mmtx import optimizers, sharding, train
  sharding.set_cpu_sync_dispatch()   # as mmtx.main does, before JAX starts
  images, texts, _ = batch_arrays(a)
  config = ml_collections.ConfigDict(dict(batch_size=a.batch,
                                          model=mmtx_model_config(a)))
  task = harness.bench_task(a, dict(param_dtype="fp32", loss="softmax"),
                            config)
  tx, _ = optimizers.make_optimizer(harness.optimizer_config(), 1000)
  mesh = sharding.make_mesh(num_devices=1)
  state, shardings, _ = train.create_train_state(task, tx, mesh,
                                                 jax.random.key(0))
  step_fn = harness.jit_train_step(task, tx, shardings, mesh)
  batch = sharding.put_batch({"image": images, "text": texts}, mesh)
  box = {"state": state}
  n = sum(x.size for x in jax.tree_util.tree_leaves(state.params))

  def step():
    box["state"], metrics = step_fn(box["state"], batch)
    return float(metrics["loss"])
  # The compiled step's HLO text, for op_profile.py (compiles once more).
  step.hlo_text = lambda: step_fn.lower(box["state"], batch).compile(
      ).as_text()
  return step, n


def hf_flax_worker(a):
  import functools
  import jax
  import jax.numpy as jnp
  import optax
  from transformers import FlaxCLIPModel
  images, texts, mask = batch_arrays(a)
  model = FlaxCLIPModel(hf_clip_config(a), seed=0, dtype=jnp.float32)
  params = model.params
  tx = optax.adamw(5e-4, 0.9, 0.98, 1e-6, weight_decay=0.2)
  opt_state = tx.init(params)
  pixels = jnp.asarray(images.transpose(0, 3, 1, 2))  # HF takes NCHW
  ids, mask = jnp.asarray(texts), jnp.asarray(mask)

  def loss_fn(p):
    out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                params=p, train=False)
    logits = out.logits_per_image.astype(jnp.float32)
    labels = jnp.arange(logits.shape[0])
    ce = optax.softmax_cross_entropy_with_integer_labels
    return 0.5 * (ce(logits, labels).mean() + ce(logits.T, labels).mean())

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step_fn(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss
  box = {"p": params, "s": opt_state}
  n = sum(x.size for x in jax.tree_util.tree_leaves(params))

  def step():
    box["p"], box["s"], loss = step_fn(box["p"], box["s"])
    return float(loss)
  return step, n


def _torch_step(a, model, forward_loss):
  import torch
  decay = [p for n, p in model.named_parameters()
           if p.ndim >= 2 and "embedding" not in n]
  rest = [p for n, p in model.named_parameters()
          if not (p.ndim >= 2 and "embedding" not in n)]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2},
                           {"params": rest, "weight_decay": 0.0}],
                          lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
  model.train()

  def step():
    loss = forward_loss()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())
  return step, sum(p.numel() for p in model.parameters())


def _torch_batch(a):
  import torch
  images, texts, mask = batch_arrays(a)
  return (torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
          torch.from_numpy(texts.astype("int64")),
          torch.from_numpy(mask.astype("int64")))


def open_clip_worker(a, compiled=False):
  import open_clip
  import torch
  torch.manual_seed(0)
  pixels, ids, _ = _torch_batch(a)
  model = open_clip.model.CLIP(
      a.embed_dim, quick_gelu=True,
      vision_cfg=dict(image_size=a.image_size, layers=a.depth, width=a.width,
                      head_width=a.width // a.heads, mlp_ratio=4,
                      patch_size=a.patch),
      text_cfg=dict(context_length=a.text_len, vocab_size=a.vocab,
                    width=a.width, heads=a.heads, layers=a.depth, mlp_ratio=4))
  loss_fn = open_clip.loss.ClipLoss()
  fwd = torch.compile(model) if compiled else model

  def forward_loss():
    return loss_fn(*fwd(pixels, ids))
  return _torch_step(a, model, forward_loss)


def hf_torch_worker(a):
  import torch
  import transformers
  torch.manual_seed(0)
  pixels, ids, mask = _torch_batch(a)
  model = transformers.CLIPModel(hf_clip_config(a))

  def forward_loss():
    return model(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                 return_loss=True).loss
  return _torch_step(a, model, forward_loss)


WORKERS = {"mmtx": mmtx_worker, "hf_flax": hf_flax_worker,
           "open_clip": open_clip_worker, "hf_torch": hf_torch_worker,
           "open_clip_compile": lambda a: open_clip_worker(a, compiled=True)}


def pin(cpus: int):
  """Restricts this process to its first `cpus` allowed cores (0 = as is),
  before any framework starts its thread pool: XLA sizes its pool and torch
  its OpenMP team from the affinity mask."""
  if cpus <= 0 or not hasattr(os, "sched_setaffinity"):
    return
  allowed = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, allowed[:cpus])


def worker_main(a):
  """Builds, warms up, prints READY; then answers 'run' with a TIME line."""
  pin(a.cpus)
  if a.cpus > 0 and a.worker in ("open_clip", "hf_torch", "open_clip_compile"):
    import torch
    torch.set_num_threads(a.cpus)
  t0 = time.perf_counter()
  step, n_params = WORKERS[a.worker](a)
  loss0 = step()
  for _ in range(a.warmup):
    step()
  info = dict(params=int(n_params), loss0=loss0,
              warmup_s=time.perf_counter() - t0, threads=_threads(a.worker))
  harness.emit("READY", info)
  for line in sys.stdin:
    if line.strip() != "run":
      break
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(a.steps):
      loss = step()
    sec = (time.perf_counter() - start) / a.steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt -
              faults) / a.steps
    harness.emit("TIME", dict(sec=sec, loss=loss, faults=faults))


def _threads(worker) -> str:
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
      else os.cpu_count()
  if worker in ("open_clip", "hf_torch", "open_clip_compile"):
    import torch
    return f"{cores} core(s), torch {torch.get_num_threads()} threads"
  return f"{cores} core(s), XLA:CPU"


# ----------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------
def start(a, name):
  argv = ["--worker", name] + [x for x in a.argv if not x.startswith("--worker")]
  return harness.start_worker(os.path.abspath(__file__), argv, stdin=True)


def parent_main(a):
  names = [n for n in a.frameworks.split(",") if n]
  if a.torch_compile and "open_clip_compile" not in names:
    names.append("open_clip_compile")
  if names[0] != "mmtx":
    raise SystemExit("cpu_step: --frameworks must start with mmtx (the "
                     "ratios are against it).")
  t0 = time.perf_counter()
  load0 = os.getloadavg()
  procs = {n: start(a, n) for n in names}
  info = {}
  for n, p in procs.items():
    info[n] = harness.read_tagged(p, "READY")
    print(f"# {n}: ready in {info[n]['warmup_s']:.1f} s, "
          f"{info[n]['params'] / 1e6:.2f} M params, first loss "
          f"{info[n]['loss0']:.4f}", file=sys.stderr, flush=True)
  times = {n: [] for n in names}
  faults = {n: [] for n in names}
  for r in range(a.rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for n in order:
      time.sleep(a.pause)
      procs[n].stdin.write("run\n")
      procs[n].stdin.flush()
      got = harness.read_tagged(procs[n], "TIME")
      times[n].append(got["sec"])
      faults[n].append(got["faults"])
  for p in procs.values():
    p.stdin.write("quit\n")
    p.stdin.flush()
    p.wait()
  load1 = os.getloadavg()
  med = {n: statistics.median(t) for n, t in times.items()}
  print(f"\ncpu_step, {time.strftime('%Y-%m-%d %H:%M')}, {harness.machine()}"
        f", load average {load0[0]:.1f} -> {load1[0]:.1f}; "
        f"{harness.versions()}; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
  print(f"CLIP: image {a.image_size}px patch {a.patch} "
        f"({(a.image_size // a.patch) ** 2 + 1} tokens), text {a.text_len} "
        f"tokens, vocab {a.vocab}, width {a.width}, depth {a.depth}, heads "
        f"{a.heads}, embed {a.embed_dim}, batch {a.batch}, float32; "
        f"{f'pinned to {a.cpus} core(s)' if a.cpus else 'default threads'}, "
        f"{a.rounds} rounds x {a.steps} steps, total "
        f"{time.perf_counter() - t0:.0f} s\n")
  rows = []
  for n in names:
    ratio = statistics.median(t / m for t, m in zip(times[n], times["mmtx"]))
    rows.append([n, f"{info[n]['params'] / 1e6:.2f}", info[n]["threads"],
                 f"{med[n] * 1e3:.1f}",
                 f"{min(times[n]) * 1e3:.0f}-{max(times[n]) * 1e3:.0f}",
                 f"{a.batch / med[n]:.1f}",
                 f"{statistics.median(faults[n]):,.0f}", f"{ratio:.2f}"])
  print(harness.markdown_table(
      ["framework", "params (M)", "threads", "ms/step (median)", "min-max",
       "samples/s", "page faults/step", "mmtx speed-up (x)"], rows))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(dict(args={k: v for k, v in vars(a).items() if k != "argv"},
                     info=info, times=times, faults=faults,
                     glibc_tunables=os.environ.get("GLIBC_TUNABLES", "")),
                f, indent=1)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--image_size", type=int, default=96)
  p.add_argument("--patch", type=int, default=16)
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--text_len", type=int, default=32)
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--embed_dim", type=int, default=256)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--steps", type=int, default=3, help="timed steps per turn")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--pause", type=float, default=0.5,
                 help="seconds between turns")
  p.add_argument("--cpus", type=int, default=1,
                 help="pin every framework to the first N cores (and torch "
                 "to N threads); 0 = each framework's defaults")
  p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
  p.add_argument("--torch_compile", action="store_true",
                 help="also open_clip under torch.compile (slow to compile)")
  p.add_argument("--quick", action="store_true",
                 help="smoke-test sizes: " + json.dumps(QUICK))
  p.add_argument("--json", default="")
  p.add_argument("--worker", choices=sorted(WORKERS), default=None,
                 help=argparse.SUPPRESS)
  argv = list(sys.argv[1:] if argv is None else argv)
  a = p.parse_args(argv)
  a.argv = argv
  if a.quick:
    harness.apply_preset(a, argv, QUICK)
  if a.width % a.heads:
    p.error(f"--width {a.width} is not divisible by --heads {a.heads}")
  return a


def main(argv=None):
  a = parse_args(argv)
  if a.worker:
    worker_main(a)
  else:
    parent_main(a)


if __name__ == "__main__":
  main()
