"""Smoke tests of experiments/benchmarks/{clip_step,cpu_step,scaling}.py.

They check that the scripts run end to end on CPU at tiny sizes and print
tables with numbers, and test the pieces that must be right for the numbers
to mean anything (the FLOP count, the shared architecture, the sharded state
size) against independent references. No assertion on wall-clock time.
"""
import json
import math
import os
import re
import subprocess
import sys

import argparse

import flax.linen as nn
import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "experiments", "benchmarks")
sys.path.insert(0, BENCH)

import clip_step  # noqa: E402
import cpu_step  # noqa: E402


def _run(script, *args, timeout=300):
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, os.path.join(BENCH, script), *args],
                       capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT, env=env)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def _table(stdout, first_col):
  """Markdown rows {first cell: [cells]} of the table whose header starts
  with `first_col`."""
  rows, inside = {}, False
  for line in stdout.splitlines():
    if line.startswith(f"| {first_col} |"):
      inside = True
      continue
    if inside and line.startswith("|---"):
      continue
    if inside and line.startswith("| "):
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      rows[cells[0]] = cells[1:]
    elif inside:
      inside = False
  return rows


def _number(cell):
  assert re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", cell), cell
  return float(cell)


# ----------------------------------------------------------------------------
# clip_step
# ----------------------------------------------------------------------------
def _reference_flops(image, text, image_size, text_len, embed_dim, pool):
  """6 x (matmul params x tokens) + 12 L T^2 d, the params counted from the
  model's own shapes (not from towers.SIZES)."""
  from mmtx.models import DualEncoder
  args = clip_step.parse_args(["--image", image, "--text", text,
                               "--image_size", str(image_size),
                               "--text_len", str(text_len),
                               "--embed_dim", str(embed_dim),
                               "--vocab", "100"])
  v = dict(precision="fp32", attention="xla", pool=pool, scan=False,
           remat="none")
  model = DualEncoder(clip_step.model_config(args, v))
  images = np.zeros((1, image_size, image_size, 3), np.float32)
  texts = np.ones((1, text_len), np.int32)
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                        images, texts))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(
              params["params"])[0]}
  p = int(image.split("/")[1])
  img_tokens = (image_size // p) ** 2 + (pool == "cls")
  total = 0.0
  for name, leaf in flat.items():
    if not name.endswith("kernel"):
      continue
    size = math.prod(leaf.shape)
    if name.startswith("img/embedding"):
      total += 6 * size * (image_size // p) ** 2
    elif name.startswith("img/"):
      total += 6 * size * img_tokens
    elif name.startswith("txt/"):
      total += 6 * size * text_len
    else:  # projection heads: once per sample
      total += 6 * size
  for tower, tokens in ((image, img_tokens), (text, text_len)):
    d = clip_step.tower_dims(tower)
    total += 12 * d["depth"] * tokens ** 2 * d["width"]
  return total


@pytest.mark.parametrize("image,text,pool", [("S/16", "Ti", "cls"),
                                              ("Ti/8", "S", "gap")])
def test_flops_formula_matches_the_models_parameter_shapes(image, text, pool):
  batch = 32
  got = clip_step.flops_per_sample(
      clip_step.parse_args(["--image", image, "--text", text,
                            "--image_size", "64", "--text_len", "20",
                            "--embed_dim", "48"]), pool, batch)
  want = _reference_flops(image, text, 64, 20, 48, pool) + 6 * batch * 48
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_flops_of_clip_b16_is_issue_8s_123_gflop():
  # By hand: image 3 x (2*197*12*(4*768^2 + 2*768*3072) + 4*197^2*768*12
  # + 2*196*768*768 + 2*768*512) = 105.71e9; text M 3 x (2*77*12*(4*512^2
  # + 2*512*2048) + 4*77^2*512*12 + 2*512*512) = 17.55e9; loss 3*2*256*512.
  got = clip_step.flops_per_sample(clip_step.parse_args([]), "cls", 256)
  assert abs(got / 1e9 - 123.26) < 0.01, got
  assert abs(got / 123e9 - 1) < 0.01


def test_mfu_against_the_datasheet_peaks():
  """MFU of a hand-made row: 256 samples in 0.1 s of ViT-B/16 + text M
  (123.26 GFLOP each, test above) = 315.5 TFLOP/s. Dense bf16 peaks from
  NVIDIA's datasheets: H100 SXM and H200 SXM 989 TFLOP/s (so 31.9 %),
  H100 PCIe 756 (41.7 %); no peak, no MFU, on a CPU."""
  args = clip_step.parse_args([])
  row = {"name": "mmtx", "framework": "mmtx", "batch": 256, "step_s": 0.1,
         "pool": "cls", "loss0": 1.0}
  for kind, tflops, mfu in (("NVIDIA H100 80GB HBM3", "316", "31.9%"),
                            ("NVIDIA H200", "316", "31.9%"),
                            ("NVIDIA H100 PCIe", "316", "41.7%"),
                            ("cpu", "316", "")):
    md = clip_step.table(args, [row], [], clip_step.default_peak(kind))
    cells = [c.strip() for c in md.splitlines()[-1].strip("|").split("|")]
    assert cells[10:13] == ["2560.0", tflops, mfu], (kind, cells)


def test_clip_step_tiny_with_open_clip_eager(tmp_path):
  out = _run("clip_step.py", "--tiny", "--peer", "open_clip", "--peer_modes",
             "eager", "--json", str(tmp_path / "r.json"))
  rows = _table(out, "row")
  assert set(rows) == {"mmtx", "open_clip eager"}, out
  head = ["batch", "compute", "attn", "pool", "scan", "remat", "params",
          "donate", "ms/step", "samples/s", "TFLOP/s", "MFU", "temp GiB",
          "cuDNN fMHA", "loss0", "x open_clip eager"]
  mmtx = dict(zip(head, rows["mmtx"]))
  peer = dict(zip(head, rows["open_clip eager"]))
  for r in (mmtx, peer):
    assert _number(r["ms/step"]) > 0 and _number(r["samples/s"]) > 0
    assert _number(r["TFLOP/s"]) > 0
    assert math.isfinite(_number(r["loss0"]))
  sps = _number(mmtx["samples/s"]) / _number(peer["samples/s"])
  assert _number(mmtx["x open_clip eager"]) == pytest.approx(sps, rel=0.02)
  res = json.loads((tmp_path / "r.json").read_text())
  assert res["rows"][0]["step_s"] > 0 and res["peers"][0]["step_s"] > 0


def test_clip_step_suite_machinery_tiny():
  out = _run("clip_step.py", "--tiny", "--suite", "--no_combined", "--only",
             "remat full,fused qkv,cudnn attention,latency")
  rows = _table(out, "row")
  assert list(rows)[:2] == ["baseline", "cudnn attention (padded)"], out
  assert rows["cudnn attention (padded)"][0] == "skipped: needs a GPU"
  assert rows["xla: latency hiding scheduler"][0] == "skipped: needs a GPU"
  if not clip_step.has_fused_qkv():
    assert rows["fused qkv"][0].startswith("skipped: mmtx has no fused_qkv")
  assert _number(rows["remat full"][8]) > 0  # ms/step
  # remat changes no math: same first loss as the baseline.
  assert re.search(r"ok +remat full: first loss", out), out


# ----------------------------------------------------------------------------
# cpu_step
# ----------------------------------------------------------------------------
def test_cpu_step_mmtx_config_is_what_from_transformers_gives():
  transformers = pytest.importorskip("transformers")
  from mmtx.interop.hf_clip import from_transformers
  a = cpu_step.parse_args(["--quick"])
  hf = transformers.CLIPModel(cpu_step.hf_clip_config(a))
  config, _ = from_transformers(hf)
  want = config.to_dict()
  got = cpu_step.mmtx_model_config(a)
  assert got.keys() == want.keys()
  for k in ("image", "text"):
    assert got[k] == {n: want[k][n] for n in got[k]}, k
    assert set(want[k]) == set(got[k]), k
  for k in ("loss", "embed_dim", "max_logit_scale"):
    assert got[k] == want[k]
  assert got["logit_scale_init"] == pytest.approx(want["logit_scale_init"],
                                                  rel=1e-4)


def _check_cpu_table(out, names):
  rows = _table(out, "framework")
  assert set(rows) == set(names), out
  for n in names:
    cells = rows[n]
    assert _number(cells[0]) > 0   # params (M)
    assert _number(cells[2]) > 0   # ms/step
    assert _number(cells[4]) > 0   # samples/s
    assert _number(cells[6]) > 0   # mmtx speed-up
  assert _number(rows["mmtx"][6]) == 1.0
  # Same architecture: the same parameter count everywhere.
  assert len({rows[n][0] for n in names}) == 1, rows


def test_cpu_step_quick_mmtx_and_open_clip():
  out = _run("cpu_step.py", "--quick", "--frameworks", "mmtx,open_clip")
  _check_cpu_table(out, ["mmtx", "open_clip"])


@pytest.mark.slow
def test_cpu_step_quick_all_frameworks():
  out = _run("cpu_step.py", "--quick")
  _check_cpu_table(out, list(cpu_step.FRAMEWORKS))


def test_op_profile_quick_accounts_for_the_step():
  """The per-op table of the mmtx step: the traced ops are found in the
  compiled HLO, the forward and backward GEMMs are both there, and the
  ops add up to a positive share of the step."""
  # jax.profiler.trace sometimes loses most of the CPU op events of a run
  # (seen 2026-11-30: 1 run in 3 traced 0.4 of 2.3 ms, only the embedding
  # GEMM of the forward pass; 2026-12-05: 3 tries of 2 steps in a row traced
  # 1.0 of 3.9 ms, no forward MLP GEMM). 10 traced steps give each op ten
  # chances to appear, and up to 3 tries.
  for _ in range(3):
    out = _run("op_profile.py", "--quick", "--steps", "10", "--top", "3")
    if "| fwd | gemm | mlp |" in out and "| bwd | gemm | mlp |" in out:
      break
  step = float(re.search(r"step ([\d.]+) ms", out).group(1))
  ops = float(re.search(r"ops in the trace ([\d.]+) ms", out).group(1))
  assert step > 0 and ops > 0, out
  assert "| fwd | gemm | mlp |" in out and "| bwd | gemm | mlp |" in out, out
  assert "| update |" in out, out
  assert len(re.findall(r"^\| \S+ \| [\d.]+ \| ", out, re.M)) == 3, out


# ----------------------------------------------------------------------------
# scaling
# ----------------------------------------------------------------------------
def test_scaling_tiny_dp_and_fsdp():
  out = _run("scaling.py", "--models", "tiny", "--devices", "1,2,8",
             "--modes", "fsdp,fsdp-nc", "--unit", "MiB")
  rows = [line.strip("|").split("|") for line in out.splitlines()
          if line.startswith("| tiny |")]
  table = {(r[2].strip(), int(r[3])): [float(c) for c in r[4:]]
           for r in rows}
  assert set(table) == {("dp = fsdp", 1), ("fsdp", 2), ("fsdp-nc", 2),
                        ("fsdp", 8), ("fsdp-nc", 8)}, out
  # Weak scaling (16 rows per device): with mmtx's batch-split constraint on
  # the blocks' activations, per-device temp memory stays flat from 2 to 8
  # devices; traced without it (fsdp-nc) XLA gathers the global batch and
  # temp grows with N (2.5 -> 6.6 MiB here when written).
  temp = {k: v[3] for k, v in table.items()}   # columns: batch state args temp
  assert temp[("fsdp", 8)] <= 1.1 * temp[("fsdp", 2)], table
  assert temp[("fsdp-nc", 8)] > 2 * temp[("fsdp", 8)], table
  # Independent count: params + AdamW mu + nu in float32 (+ a few bytes of
  # int32 step counters), the table rounds to 0.001 MiB.
  from mmtx.models import DualEncoder
  args = argparse.Namespace(image="mu/8", text="mu", image_size=32,
                            text_len=16, vocab=256, embed_dim=32)
  v = dict(precision="bf16", attention="xla", pool="cls", scan=True,
           remat="none")
  images = np.zeros((1, 32, 32, 3), np.float32)
  texts = np.ones((1, 16), np.int32)
  params = nn.meta.unbox(jax.eval_shape(
      DualEncoder(clip_step.model_config(args, v)).init, jax.random.key(0),
      images, texts))
  n = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
  one_state_mib = table[("dp = fsdp", 1)][1]
  assert one_state_mib == pytest.approx(12 * n / 2 ** 20, abs=6e-4)
  # FSDP splits the state (all but the scalars and odd-sized vectors).
  assert table[("fsdp", 2)][1] < 0.6 * one_state_mib
  assert table[("fsdp-nc", 2)][1] == table[("fsdp", 2)][1]
  for key, cells in table.items():
    assert cells[3] > 0, key  # temp
    assert cells[4] >= cells[2], key  # peak >= args


def test_clip_step_passes_the_attention_switch_to_both_towers():
  """The suite's cuDNN rows are mmtx's own `implementation=` switch (the
  padding-by-lengths kernel is tested in tests/test_attention_kernels.py)."""
  args = clip_step.parse_args(["--tiny"])
  v = dict(precision="bf16", attention="cudnn", text_attention="xla",
           pool="cls", scan=False, remat="qkv")
  cfg = clip_step.model_config(args, v)
  assert cfg["image"]["attention_impl"] == "cudnn"
  assert cfg["text"]["attention_impl"] == "xla"
  assert cfg["image"]["remat"] == cfg["text"]["remat"] == "qkv"
  with pytest.raises(SystemExit):
    clip_step.parse_args(["--attention", "cudnn_seqlen"])
