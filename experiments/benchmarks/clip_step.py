"""CLIP training-step speed of mmtx's DualEncoder, and of open_clip with the
same shapes on the same device in the same run (issue 8).

  python experiments/benchmarks/clip_step.py                      # one row
  python experiments/benchmarks/clip_step.py --peer open_clip     # + peer
  python experiments/benchmarks/clip_step.py --suite --peer open_clip \
      --json $OUT/clip_step.json                                  # GPU run
  python experiments/benchmarks/clip_step.py --tiny --peer open_clip \
      --peer_modes eager                                          # CPU smoke

Model: ViT image tower (`--image`, a towers.SIZES variant with patch size,
default 'B/16': 197 tokens with the class token at 224 px) + a causal
12-layer text tower (`--text`, default 'M' = width 512, 8 heads: the text
tower of CLIP ViT-B/16; 'B' would be width 768), embed_dim 512, 77 tokens.
One step = `mmtx.train.make_train_step` (forward, the task's softmax
contrastive loss, backward, AdamW from `mmtx.optimizers`) jitted like
`train.py` (in/out shardings on a 1-device mesh, `donate_argnums=(0,)`),
state from `train.create_train_state`. Same batch every step (no input
pipeline), random init, dropout off. Timing: `--warmup` steps, then the
median over `--repeats` of the mean time of `--steps` steps, each repeat ended
by `block_until_ready` (torch: `cuda.synchronize`).

FLOPs per sample (forward + backward = 3 x forward; matmuls only, recompute
from remat not counted, the usual "model FLOPs" of MFU):
  tower forward = 2 T L (4 d^2 + 2 d m)     q, k, v, out and the MLP
                + 4 T^2 d L                 Q K^T and A V (full T x T; the
                                            causal text mask saves nothing)
                + 2 d E                     projection head
  image adds the patch embedding 2 N_p (p^2 3) d; text embedding is a lookup.
  loss forward  = 2 B E                     one row of the B x B logits
  train         = 3 (image + text + loss)
ViT-B/16 (T=197, d=768, m=3072, L=12) + text M (T=77, d=512, m=2048, L=12),
E=512, B=256: 3 x (35.13 + 5.96 + 0.0003) = 123.26 GFLOP/sample, issue 8's
123 (text 'B': 145.28). MFU = samples/s x FLOPs / peak; `--peak_tflops`
defaults by device_kind: H100 989 (PCIe 756), H200 989 (datasheet; issue 8
quoted MFU at 790, see NOTES.md), none on CPU.

`--suite` times, each once, the variants of issue 8 (cuDNN attention,
padded by sequence lengths, no class token, fused QKV if mmtx has
it, bf16 params and optimizer state, no donation, scan, remat policies, 2x
batch, the loss's cost, the latency-hiding scheduler; `--suite_full` adds
fp32 compute, remat dots, optax.adamw, no Triton GEMM) and finally the
combination of the toggles that won; `--time_budget_s` skips the late
processes when time is short. Every group of XLA flags runs in its own
process (flags are read at backend start); variants are compiled ahead of time in parallel threads
(`--compile_workers`) and then timed one by one; a failing variant prints
its error in the table and the rest go on. `--peer open_clip` runs
open_clip's CLIP (random init, no download) in a separate process after
mmtx's, eager and `torch.compile`d (the model, as open_clip's
`--torchcompile`), bf16 autocast on GPU, torch AdamW (fused on CUDA),
`open_clip.loss.ClipLoss`. The table gets one "x <peer>" column per peer
mode: mmtx samples/s over the peer's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (abstract_batch, abstract_state, apply_preset,  # noqa: E402
                     bench_task, emit, jit_train_step, log, make_batch,
                     markdown_table, optimizer_config, short_error,
                     start_worker, tagged, time_steps)

# device_kind substring -> bf16 dense TFLOP/s; first match wins.
# Dense bf16 TFLOP/s from NVIDIA's datasheets (H200 SXM = H100 SXM).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0))

TINY = dict(image="mu/8", text="mu", image_size=32, text_len=16, vocab=256,
            embed_dim=32, batch=8, steps=2, warmup=1, repeats=2)


# ----------------------------------------------------------------------------
# Shapes and FLOPs
# ----------------------------------------------------------------------------
def tower_dims(variant: str) -> dict:
  from mmtx.models.towers import decode_variant
  return decode_variant(variant)


def image_tokens(args, pool: str) -> int:
  p = tower_dims(args.image)["patch_size"]
  return (args.image_size // p) ** 2 + (pool == "cls")


def flops_per_sample(args, pool: str, batch: int) -> float:
  """Training FLOPs of one sample (see the module docstring)."""
  def tower(d, tokens):
    dense = 2 * tokens * d["depth"] * (4 * d["width"] ** 2 +
                                       2 * d["width"] * d["mlp_dim"])
    attn = 4 * tokens ** 2 * d["width"] * d["depth"]
    return dense + attn + 2 * d["width"] * args.embed_dim
  img, txt = tower_dims(args.image), tower_dims(args.text)
  p = img["patch_size"]
  n_patches = (args.image_size // p) ** 2
  fwd = (tower(img, image_tokens(args, pool)) +
         2 * n_patches * p * p * 3 * img["width"] +
         tower(txt, args.text_len) + 2 * batch * args.embed_dim)
  return 3.0 * fwd


def default_peak(device_kind: str):
  for key, tflops in PEAK_TFLOPS:
    if key.lower() in device_kind.lower():
      return tflops
  return None


# ----------------------------------------------------------------------------
# mmtx worker
# ----------------------------------------------------------------------------
def has_fused_qkv() -> bool:
  from mmtx.models.towers import ViT
  return "fused_qkv" in getattr(ViT, "__dataclass_fields__", {})


def model_config(args, v: dict) -> dict:
  """DualEncoder config with open_clip's CLIP layout: class token (or GAP),
  LayerNorm before the encoder, no patch bias, GELU, eps 1e-5, causal text
  tower pooled at the EOT token."""
  dtype = "bfloat16" if v["precision"] == "bf16" else "float32"
  common = dict(dtype=dtype, scan=v["scan"], remat=v["remat"],
                layer_norm_eps=1e-5, activation="gelu")
  if v.get("fused_qkv"):
    common["fused_qkv"] = True
  text_attention = v.get("text_attention") or v["attention"]
  return dict(
      image=dict(variant=args.image, pool=v["pool"], ln_pre=True,
                 patch_bias=False, attention_impl=v["attention"],
                 **common),
      text=dict(variant=args.text, vocab_size=args.vocab,
                max_len=args.text_len, causal=True, pool="argmax",
                attention_impl=text_attention, **common),
      embed_dim=args.embed_dim, loss="softmax")


def build_variant(args, v: dict):
  """(step jit, config, task, model, tx, abstract state, shardings, mesh)."""
  import jax
  import ml_collections
  import optax
  from mmtx import optimizers, sharding
  config = ml_collections.ConfigDict(dict(
      batch_size=v["batch"], model=model_config(args, v)))
  task = bench_task(args, v, config)
  model = task.model
  if v["optimizer"] == "optax":
    oc = optimizer_config()
    tx = optax.adamw(oc.learning_rate, oc.b1, oc.b2, oc.eps,
                     weight_decay=oc.weight_decay)
  else:
    tx, _ = optimizers.make_optimizer(optimizer_config(), 1000)
  mesh = sharding.make_mesh(num_devices=1)
  rng = jax.random.key(0)
  abstract, shardings = abstract_state(task, tx, mesh, rng)
  step = jit_train_step(task, tx, shardings, mesh, v["donate"])
  return dict(step=step, config=config, task=task, model=model, tx=tx,
              abstract=abstract, mesh=mesh, rng=rng)


def time_compiled(compiled, state, batch, args):
  """Median seconds per step and the first step's loss."""
  import jax
  box = {"state": state}

  def step():
    box["state"], metrics = compiled(box["state"], batch)
    return metrics
  sec, first = time_steps(step, lambda: jax.block_until_ready(box),
                          warmup=args.warmup, repeats=args.repeats,
                          steps=args.steps)
  return sec, float(first["loss"]), box["state"]


def init_key(v: dict) -> tuple:
  """Variants with the same key have the same initial train state."""
  return (v["pool"], v["scan"], v["param_dtype"], v["optimizer"],
          bool(v.get("fused_qkv")))


def run_mmtx_worker(args):
  """Compiles all variants (threads), then times them one by one; prints one
  `RESULT {json}` line per variant."""
  import concurrent.futures
  import jax
  import jax.numpy as jnp
  from mmtx import sharding, train
  variants = json.loads(args.variants)
  dev = jax.devices()[0]
  log(f"[mmtx] {dev.device_kind} ({jax.default_backend()}), jax "
      f"{jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  built, lowered = {}, {}
  for v in variants:
    if v.get("skip"):
      continue
    try:
      t0 = time.perf_counter()
      b = build_variant(args, v)
      lowered[v["name"]] = b["step"].lower(
          b["abstract"], abstract_batch(args, v, b["mesh"]))
      built[v["name"]] = b
      log(f"[mmtx] traced {v['name']} in {time.perf_counter() - t0:.1f} s")
    except Exception as e:  # noqa: BLE001 - reported in the table
      v["error"] = short_error(e)
  t0 = time.perf_counter()

  def compile_one(name):
    try:
      return name, lowered[name].compile(), None
    except Exception as e:  # noqa: BLE001
      return name, None, short_error(e)
  with concurrent.futures.ThreadPoolExecutor(args.compile_workers) as ex:
    compiled = {n: (c, e) for n, c, e in ex.map(compile_one, list(lowered))}
  log(f"[mmtx] compiled {len(compiled)} variant(s) in "
      f"{time.perf_counter() - t0:.1f} s ({args.compile_workers} threads)")
  images, texts = make_batch(args, max(v["batch"] for v in variants))
  # One initialised state per param layout, copied for each variant (the
  # step donates its copy); variants run grouped by layout.
  order = {}
  for v in variants:
    order.setdefault(init_key(v), []).append(v)
  pending = {k: sum(1 for v in vs if v["name"] in built)
             for k, vs in order.items()}
  templates = {}
  for v in [v for vs in order.values() for v in vs]:
    res = dict(v, framework="mmtx", device_kind=dev.device_kind)
    name = v["name"]
    if v.get("skip") or v.get("error"):
      emit("RESULT", res)
      continue
    exe, err = compiled[name]
    if err:
      emit("RESULT", dict(res, error=err))
      continue
    b = built[name]
    try:
      mem = exe.memory_analysis()
      if mem is not None:
        res["temp_gib"] = mem.temp_size_in_bytes / 2 ** 30
        res["arg_gib"] = mem.argument_size_in_bytes / 2 ** 30
      res["fmha_calls"] = exe.as_text().count("__cudnn$fmha")
      key = init_key(v)
      if key not in templates:
        templates[key], _, _ = train.create_train_state(
            b["task"], b["tx"], b["mesh"], b["rng"])
      state = jax.tree_util.tree_map(jnp.copy, templates[key])
      batch = sharding.put_batch({"image": images[:v["batch"]],
                                  "text": texts[:v["batch"]]}, b["mesh"])
      sec, loss0, state = time_compiled(exe, state, batch, args)
      del state, batch
      res.update(step_s=sec, loss0=loss0)
    except Exception as e:  # noqa: BLE001
      res["error"] = short_error(e)
    emit("RESULT", res)
    key = init_key(v)
    if v["name"] in built:
      pending[key] -= 1
      if not pending[key]:
        templates.pop(key, None)


# ----------------------------------------------------------------------------
# open_clip worker
# ----------------------------------------------------------------------------
def run_open_clip_worker(args):
  """open_clip CLIP with the same shapes; eager and/or torch.compile."""
  import numpy as np
  import open_clip
  import torch
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  kind = torch.cuda.get_device_name() if cuda else "cpu"
  img, txt = tower_dims(args.image), tower_dims(args.text)
  precision = args.precision_resolved
  log(f"[open_clip] {kind}, torch {torch.__version__}, open_clip "
      f"{open_clip.__version__}, precision {precision}")
  images, texts = make_batch(args, args.batch)
  images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
  texts = torch.from_numpy(texts.astype(np.int64)).to(device)
  for mode in args.peer_modes.split(","):
    res = dict(name=f"open_clip {mode}", framework="open_clip", mode=mode,
               batch=args.batch, precision=precision, pool="cls",
               device_kind=kind)
    try:
      torch.manual_seed(0)
      model = open_clip.model.CLIP(
          args.embed_dim,
          vision_cfg=dict(image_size=args.image_size, layers=img["depth"],
                          width=img["width"],
                          head_width=img["width"] // img["num_heads"],
                          mlp_ratio=img["mlp_dim"] / img["width"],
                          patch_size=img["patch_size"]),
          text_cfg=dict(context_length=args.text_len, vocab_size=args.vocab,
                        width=txt["width"], heads=txt["num_heads"],
                        layers=txt["depth"],
                        mlp_ratio=txt["mlp_dim"] / txt["width"])).to(device)
      model.train()
      decay = [p for n, p in model.named_parameters()
               if p.ndim >= 2 and "embedding" not in n]
      no_decay = [p for n, p in model.named_parameters()
                  if not (p.ndim >= 2 and "embedding" not in n)]
      opt = torch.optim.AdamW(
          [{"params": decay, "weight_decay": 0.2},
           {"params": no_decay, "weight_decay": 0.0}],
          lr=5e-4, betas=(0.9, 0.98), eps=1e-6, fused=cuda)
      loss_fn = open_clip.loss.ClipLoss()
      fwd = torch.compile(model) if mode == "compile" else model
      amp = torch.autocast(device.type, dtype=torch.bfloat16,
                           enabled=precision == "bf16")

      def step():
        with amp:
          img_f, txt_f, scale = fwd(images, texts)
          loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

      def sync():
        if cuda:
          torch.cuda.synchronize()
      last = {}

      def timed():
        last["loss"] = step()
        return last["loss"]
      t0 = time.perf_counter()
      sec, loss0 = time_steps(timed, sync, warmup=args.warmup,
                              repeats=args.repeats, steps=args.steps)
      log(f"[open_clip] {mode}: {time.perf_counter() - t0:.1f} s")
      res.update(step_s=sec, loss0=float(loss0.detach()),
                 loss_last=float(last["loss"].detach()))
      del model, opt, fwd
      if cuda:
        torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001
      res["error"] = short_error(e)
    emit("RESULT", res)


# ----------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------
def base_variant(args) -> dict:
  return dict(name="mmtx", precision=args.precision_resolved,
              attention=args.attention,
              text_attention=args.text_attention or args.attention,
              pool=args.pool, scan=args.scan,
              remat=args.remat, batch=args.batch,
              param_dtype=args.param_dtype, donate=not args.no_donate,
              optimizer=args.optimizer, loss=args.loss,
              fused_qkv=args.fused_qkv, xla_flags=args.xla_flags)


# Toggles that --suite tries one at a time against the baseline, and that
# the final "combined" row takes when they won by more than 2%.
def suite_variants(args, on_gpu: bool) -> list[dict]:
  base = dict(base_variant(args), name="baseline")
  b = args.batch

  def var(name, **kw):
    return dict(base, name=name, **kw)
  rows = [base,
          var("fp32 compute", precision="fp32", extra=True),
          var("cudnn attention (padded)", attention="cudnn",
              text_attention="cudnn", toggle=True),
          var("cudnn image only", attention="cudnn", text_attention="xla",
              toggle=True),
          var("gap pool (no cls token)", pool="gap"),
          var("cudnn + gap pool", attention="cudnn", text_attention="cudnn",
              pool="gap", extra=True),
          var("fused qkv", fused_qkv=True, toggle=True),
          var("bf16 params + opt state", param_dtype="bf16", toggle=True),
          var("no donation", donate=False),
          var("scan layers", scan=True, toggle=True),
          var("remat full", remat="full"),
          var("remat dots", remat="dots", extra=True),
          var("remat dots_no_batch", remat="dots_no_batch"),
          var("remat qkv", remat="qkv"),
          var("remat qkv_mlp", remat="qkv_mlp"),
          var(f"batch {2 * b}", batch=2 * b),
          var("optax.adamw", optimizer="optax", toggle=True, extra=True),
          var("loss: dot surrogate", loss="dot"),
          var("xla: latency hiding scheduler", toggle=True, xla_flags=(
              args.xla_flags + " --xla_gpu_enable_latency_hiding_scheduler="
              "true").strip()),
          var("xla: no triton gemm", toggle=True, extra=True, xla_flags=(
              args.xla_flags + " --xla_gpu_enable_triton_gemm=false").strip())]
  if not args.suite_full:
    rows = [r for r in rows if not r.get("extra")]
  for r in rows:
    cudnn = {r["attention"], r["text_attention"]} & {"cudnn"}
    if not on_gpu and (cudnn or "xla_gpu" in r["xla_flags"]):
      r["skip"] = "needs a GPU"
    if r.get("fused_qkv") and not has_fused_qkv():
      r["skip"] = "mmtx has no fused_qkv option (separate q/k/v projections)"
  return rows


def combined_variant(args, rows: list[dict]) -> dict | None:
  """Baseline + every toggle that beat it by > 2% samples/s."""
  done = {r["name"]: r for r in rows if r.get("step_s")}
  base = done.get("baseline")
  if base is None:
    return None
  out = dict(base, name="combined:")
  won = []
  keys = ("attention", "text_attention", "pool", "fused_qkv", "param_dtype",
          "scan", "remat", "optimizer")
  # Slowest winner first, so that of two conflicting toggles (two attention
  # paths) the faster one's settings stay.
  winners = sorted((r for r in rows if r.get("toggle") and r["name"] in done
                    and base["step_s"] / r["step_s"] > 1.02),
                   key=lambda r: -r["step_s"])
  for r in winners:
    for k in keys:
      if r[k] != base[k]:
        out[k] = r[k]
    if r["xla_flags"] != base["xla_flags"]:
      out["xla_flags"] = (out["xla_flags"] + " " + r["xla_flags"]
                          .replace(base["xla_flags"], "")).strip()
    won.append(r["name"])
  if not won:
    return None
  out["name"] = "combined: " + " + ".join(won)
  for k in ("step_s", "loss0", "temp_gib", "arg_gib", "fmha_calls", "error",
            "toggle"):
    out.pop(k, None)
  return out


def run_worker_process(args, kind: str, variants=None, xla_flags=""):
  """Runs this script as a worker; returns its RESULT dicts."""
  argv = ["--worker", kind]
  argv += [a for a in args.argv if a not in ("--suite", "--suite_full")]
  argv += ["--backend", args.backend]
  if variants is not None:
    argv += ["--variants", json.dumps(variants)]
  # open_clip: JAX is not in that process; torch's own allocator defaults.
  proc = start_worker(os.path.abspath(__file__), argv, xla_flags=xla_flags,
                      jax_free=kind == "open_clip")
  results = []
  for line in proc.stdout:
    res = tagged(line, "RESULT")
    if res is not None:
      results.append(res)
      log(f"  -> {res['name']}: " + (
          f"{res['step_s'] * 1e3:.2f} ms/step" if res.get("step_s") else
          res.get("error") or res.get("skip") or "?"))
    else:
      sys.stdout.write(line)
  rc = proc.wait()
  if rc:
    names = {r["name"] for r in results}
    for v in variants or [{"name": f"{kind} (process)"}]:
      if v["name"] not in names:
        results.append(dict(v, error=f"{kind} worker exited with status "
                                     f"{rc} (see its stderr above)"))
  return results


def run_mmtx_groups(args, variants, deadline=None):
  """One worker process per distinct XLA_FLAGS (skipped rows need none);
  groups that would start after `deadline` are skipped."""
  groups: dict[str, list] = {}
  out = []
  for v in variants:
    if v.get("skip"):
      out.append(dict(v, framework="mmtx"))
    else:
      groups.setdefault(v["xla_flags"], []).append(v)
  for flags, vs in groups.items():
    if deadline is not None and time.perf_counter() > deadline:
      out += [dict(v, framework="mmtx", skip="time budget spent")
              for v in vs]
      continue
    out += run_worker_process(args, "mmtx", vs, flags)
  order = {v["name"]: i for i, v in enumerate(variants)}
  return sorted(out, key=lambda r: order.get(r["name"], len(order)))


def fmt(x, spec):
  return "" if x is None else format(x, spec)


def table(args, rows, peers, peak) -> str:
  ok_peers = [p for p in peers if p.get("step_s")]
  head = ["row", "batch", "compute", "attn", "pool", "scan", "remat",
          "params", "donate", "ms/step", "samples/s", "TFLOP/s", "MFU",
          "temp GiB", "cuDNN fMHA", "loss0"]
  head += [f"x {p['name']}" for p in ok_peers]
  lines = []
  for r in rows + peers:
    if r.get("step_s"):
      b = r["batch"]
      sps = b / r["step_s"]
      fl = flops_per_sample(args, r.get("pool", "cls"), b)
      tf = sps * fl / 1e12
      mfu = f"{100 * tf / peak:.1f}%" if peak else ""
      ratios = [f"{sps / (p['batch'] / p['step_s']):.2f}"
                if r["framework"] == "mmtx" else "" for p in ok_peers]
      attn = r.get("attention", "")
      if r.get("text_attention", attn) != attn:
        attn = f"{attn} / text {r['text_attention']}"
      cells = [r["name"], str(b), r.get("precision", ""), attn,
               r.get("pool", ""),
               str(r.get("scan", "")), r.get("remat", ""),
               r.get("param_dtype", ""), str(r.get("donate", "")),
               f"{r['step_s'] * 1e3:.2f}", f"{sps:.1f}", f"{tf:.3g}", mfu,
               fmt(r.get("temp_gib"), ".2f"), str(r.get("fmha_calls", "")),
               f"{r['loss0']:.4f}"] + ratios
    else:
      why = r.get("skip") and f"skipped: {r['skip']}" or (
          f"FAILED: {r.get('error')}")
      cells = [r["name"], why] + [""] * (len(head) - 2)
    lines.append(cells)
  return markdown_table(head, lines)


def checks(rows) -> list[str]:
  """Variants with the same init as the baseline must start at its loss."""
  base = next((r for r in rows if r["name"] in ("baseline", "mmtx") and
               r.get("loss0") is not None), None)
  out = []
  if base is None:
    return out
  for r in rows:
    if r is base or r.get("loss0") is None:
      continue
    if not math.isfinite(r["loss0"]):
      out.append(f"FAIL {r['name']}: first loss {r['loss0']} is not finite")
      continue
    same_init = all(r[k] == base[k] for k in ("pool", "scan", "param_dtype"))
    if not same_init:
      continue
    tol = 2e-2 if "bf16" in (r["precision"], base["precision"]) else 1e-4
    rel = abs(r["loss0"] - base["loss0"]) / max(abs(base["loss0"]), 1e-9)
    if r["loss"] != base["loss"] or r["batch"] != base["batch"]:
      continue
    out.append(f"{'ok  ' if rel <= tol else 'FAIL'} {r['name']}: first loss "
               f"{r['loss0']:.5f} vs baseline {base['loss0']:.5f} (rel "
               f"{rel:.1e}, tol {tol:.0e})")
  return out


def parse_args(argv=None):
  from mmtx.layers import REMAT_POLICIES
  from mmtx.layers.attention import IMPLEMENTATIONS
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--image", default="B/16")
  p.add_argument("--text", default="M")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--text_len", type=int, default=77)
  p.add_argument("--vocab", type=int, default=49408)
  p.add_argument("--embed_dim", type=int, default=512)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                 default="auto", help="compute dtype; auto: bf16 on GPU")
  p.add_argument("--attention", default="xla", choices=IMPLEMENTATIONS,
                 help="mmtx.layers attention implementation")
  p.add_argument("--text_attention", default="",
                 choices=("",) + IMPLEMENTATIONS,
                 help="text tower's attention (default: --attention)")
  p.add_argument("--pool", choices=("cls", "gap"), default="cls")
  p.add_argument("--scan", action="store_true")
  p.add_argument("--remat", default="none", choices=sorted(REMAT_POLICIES))
  p.add_argument("--param_dtype", choices=("fp32", "bf16"), default="fp32")
  p.add_argument("--no_donate", action="store_true")
  p.add_argument("--optimizer", choices=("mmtx", "optax"), default="mmtx")
  p.add_argument("--loss", choices=("softmax", "dot"), default="softmax")
  p.add_argument("--fused_qkv", action="store_true")
  p.add_argument("--xla_flags", default="",
                 help="extra XLA_FLAGS for the mmtx process")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--peer", choices=("none", "open_clip"), default="none")
  p.add_argument("--peer_modes", default="eager,compile")
  p.add_argument("--suite", action="store_true")
  p.add_argument("--suite_full", action="store_true",
                 help="--suite plus fp32 compute, cudnn + gap (library "
                 "path), remat dots, optax.adamw, no triton gemm")
  p.add_argument("--no_combined", action="store_true",
                 help="--suite: skip the final combined-toggles row")
  p.add_argument("--only", default="",
                 help="--suite: comma-separated name substrings to keep "
                 "(the baseline is always kept)")
  p.add_argument("--time_budget_s", type=float, default=0,
                 help="skip the XLA-flag and combined rows once this many "
                 "seconds have passed (0 = no limit)")
  p.add_argument("--peak_tflops", type=float, default=None)
  p.add_argument("--compile_workers", type=int,
                 default=max(1, min(16, os.cpu_count() or 1)),
                 help="threads compiling the variants ahead of time")
  p.add_argument("--tiny", action="store_true",
                 help="CPU smoke config: " + json.dumps(TINY))
  p.add_argument("--json", default="", help="also write the rows here")
  p.add_argument("--worker", choices=("mmtx", "open_clip"), default=None,
                 help=argparse.SUPPRESS)
  p.add_argument("--variants", default="[]", help=argparse.SUPPRESS)
  p.add_argument("--backend", default="", help=argparse.SUPPRESS)
  argv = list(sys.argv[1:] if argv is None else argv)
  args = p.parse_args(argv)
  args.argv = argv
  args.suite = args.suite or args.suite_full
  if args.tiny:
    apply_preset(args, argv, TINY)
  return args


def detect_backend() -> tuple[str, str]:
  """(backend, device_kind) from a short subprocess, so that this process
  never holds the accelerator the workers need."""
  code = ("import jax; d = jax.devices()[0]; "
          "print(jax.default_backend() + '|' + d.device_kind)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True)
  backend, kind = out.stdout.strip().splitlines()[-1].split("|", 1)
  return backend, kind


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    args.precision_resolved = args.precision if args.precision != "auto" else (
        "bf16" if args.backend == "gpu" else "fp32")
    if args.worker == "mmtx":
      run_mmtx_worker(args)
    else:
      run_open_clip_worker(args)
    return
  backend, kind = detect_backend()
  args.precision_resolved = args.precision if args.precision != "auto" else (
      "bf16" if backend == "gpu" else "fp32")
  args.backend = backend
  peak = args.peak_tflops or default_peak(kind)
  fl = flops_per_sample(args, args.pool, args.batch)
  print(f"clip_step: {kind} ({backend}); image {args.image} @ "
        f"{args.image_size}px ({image_tokens(args, args.pool)} tokens), text "
        f"{args.text} x {args.text_len} tokens, embed {args.embed_dim}, vocab "
        f"{args.vocab}; {fl / 1e9:.2f} GFLOP/sample (train, analytic); peak "
        f"{peak or 'unknown'} TFLOP/s bf16 dense"
        f"{' (given)' if args.peak_tflops else ''}", flush=True)
  t0 = time.perf_counter()
  deadline = t0 + args.time_budget_s if args.time_budget_s else None
  if args.suite:
    variants = suite_variants(args, backend == "gpu")
    if args.only:
      keep = [k.strip() for k in args.only.split(",") if k.strip()]
      variants = [v for v in variants if v["name"] == "baseline" or
                  any(k in v["name"] for k in keep)]
  else:
    v = base_variant(args)
    if v["fused_qkv"] and not has_fused_qkv():
      v["skip"] = "mmtx has no fused_qkv option"
    variants = [v]
  rows, peers = [], []

  def save():
    if args.json:
      with open(args.json, "w") as f:
        json.dump({"device_kind": kind, "backend": backend,
                   "peak_tflops": peak, "flops_per_sample": fl,
                   "args": vars(args), "rows": rows, "peers": peers}, f,
                   indent=1)
  # Most important first: the rows without extra XLA flags, the peer, then
  # the flag groups and the combined row (these skip past the budget).
  plain = [v for v in variants if v["xla_flags"] == args.xla_flags]
  rows += run_mmtx_groups(args, plain)
  save()
  if args.peer == "open_clip":
    peers = run_worker_process(args, "open_clip")
    save()
  rows += run_mmtx_groups(args, [v for v in variants if v not in plain],
                          deadline)
  if args.suite and not args.no_combined:
    comb = combined_variant(args, rows)
    if comb is not None:
      rows += run_mmtx_groups(args, [comb], deadline)
  save()
  print(f"\nclip_step on {kind}, batch {args.batch}, "
        f"{time.strftime('%Y-%m-%d')}, total {time.perf_counter() - t0:.0f} s"
        f" (MFU vs {peak or '?'} TFLOP/s):\n")
  print(table(args, rows, peers, peak))
  notes = checks(rows)
  if notes:
    print("\nchecks:\n" + "\n".join(notes))


if __name__ == "__main__":
  main()
