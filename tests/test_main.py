"""The CLI end to end on the tiny built-in data, and its config errors."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, timeout=600):
  env = dict(os.environ, MMTX_DATA_DIR=str(tmp_path / "data"))
  return subprocess.run([sys.executable, "-m", "mmtx.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=env)


TINY = ["--config.data.name=sort_of_clevr/tiny", "--config.total_steps=6",
        "--config.batch_size=8", "--config.log_every=2",
        "--config.eval_every=6", "--config.checkpoint_every=3",
        "--config.data.eval_batch_size=32", "--config.model.image.width=32",
        "--config.model.text.width=32", "--config.model.fusion.dim=32",
        "--config.model.image.mlp_dim=64", "--config.model.text.mlp_dim=64",
        "--config.model.fusion.mlp_dim=64", "--config.model.head_hidden=32",
        "--progress=false"]


def test_default_config_trains_evaluates_and_resumes(tmp_path):
  wd = tmp_path / "run"
  # Two XLA CPU devices (data parallel over both cores; configs/default.py
  # itself asks for one): the CLI applies mesh.cpu_devices before JAX starts.
  out = _run([f"--workdir={wd}", *TINY, "--config.mesh.cpu_devices=2"],
             tmp_path)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "VQA accuracy" in out.stdout and "nonrel" in out.stdout
  assert "devices=2 cpu" in out.stdout, out.stdout[:500]
  rows = [json.loads(l) for l in open(wd / "metrics.jsonl")]
  assert any("eval/accuracy" in r for r in rows)
  assert any("eval/accuracy/rel/closest" in r for r in rows)
  assert sorted(os.listdir(wd / "checkpoints"))[-1] == "6"
  # The same command again resumes at the end and only evaluates.
  again = _run([f"--workdir={wd}", "--mode=eval", *TINY,
                "--config.mesh.cpu_devices=2"], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from" in again.stdout and "at step 6" in again.stdout


def test_unknown_config_key_names_the_closest_valid_ones(tmp_path):
  out = _run([f"--workdir={tmp_path}", "--config.optimizer.learning_rat=1"],
             tmp_path, timeout=120)
  assert out.returncode == 2
  assert "learning_rat" in out.stderr
  assert "optimizer.learning_rate" in out.stderr


def test_misspelt_config_file_arg_is_an_error_not_a_silent_default(
    tmp_path):
  # configs/default.py:fusoin=film used to train cross_attention silently.
  out = _run([f"--workdir={tmp_path}", "--config=configs/default.py:fusoin=film"],
             tmp_path, timeout=120)
  assert out.returncode == 2
  assert "unknown arg 'fusoin'" in out.stderr, out.stderr
  assert "closest: ['fusion'" in out.stderr, out.stderr
  assert "Traceback" not in out.stderr, out.stderr
  # A value of the wrong type names the arg (not int()'s bare message).
  out = _run([f"--workdir={tmp_path}", "--config=configs/default.py:steps=1e4"],
             tmp_path, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().endswith(
      "configs/default.py: arg steps='1e4' is not an int (default: 12000)."
  ), out.stderr


@pytest.mark.parametrize("name", ["default", "easy_vqa", "caption", "clip",
                                  "dialogue", "pretrain", "finetune_vqa",
                                  "avqa", "av_event"])
def test_every_config_file_checks_its_args(name):
  import importlib
  mod = importlib.import_module(f"mmtx.configs.{name}")
  with pytest.raises(ValueError, match=f"configs/{name}.py: unknown arg "
                     "'stpes'.*closest: \\['steps'[],]"):
    mod.get_config("stpes=10")
  with pytest.raises(ValueError, match="not key=value"):
    mod.get_config("steps")
  assert mod.get_config("steps=10").total_steps == 10
  assert mod.get_config("").total_steps > 10      # the file's own default


def test_config_file_args_override_only_what_is_named():
  from mmtx.configs import common
  assert common.parse_args("", "c", a=1, b="x") == {"a": 1, "b": "x"}
  # A value may itself hold '=' (a path); only the first one splits.
  assert common.parse_args("b=y=z,a=2", "c", a=1, b="x") == {"a": 2,
                                                             "b": "y=z"}
  # Values take their default's type when that is int or float.
  got = common.parse_args("a=3,f=1,s=4", "c", a=1, f=0.5, s="x")
  assert got == {"a": 3, "f": 1.0, "s": "4"}
  assert type(got["a"]) is int and type(got["f"]) is float
  with pytest.raises(ValueError, match=r"c: arg f='x' is not a float "
                     r"\(default: 0.5\)"):
    common.parse_args("f=x", "c", f=0.5)


def test_unknown_task_and_fusion_are_clear_errors():
  from mmtx import tasks
  with pytest.raises(ValueError, match="known tasks"):
    tasks.get_task("vqaa")
  from mmtx import fusion
  with pytest.raises(ValueError, match="cross_attention"):
    fusion.build_fusion("crossattention")


@pytest.mark.slow
def test_two_cpu_devices_survive_a_long_log_interval(tmp_path):
  """Regression (2026-11-28): the default job on two XLA:CPU devices with
  --config.log_every=2000 aborted within a minute, every time, at a gradient
  all-reduce (XLA: 'Termination timeout for all reduce ... exceeded'): the
  loop had ~2,000 steps dispatched ahead. train.MAX_STEPS_IN_FLIGHT bounds
  that. Full Sort-of-CLEVR data (the tiny data did not trigger it), 2,500
  steps, ~3 minutes on 2 cores."""
  env = dict(os.environ)   # the default data dir: the full dataset
  out = subprocess.run(
      [sys.executable, "-m", "mmtx.main", f"--workdir={tmp_path / 'run'}",
       "--config.total_steps=2500", "--config.log_every=2000",
       "--config.mesh.cpu_devices=2",
       "--config.eval_every=100000", "--config.checkpoint_every=100000",
       "--progress=false"], cwd=REPO, capture_output=True, text=True,
      timeout=1200, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "devices=2 cpu" in out.stdout
  assert "rendezvous" not in out.stderr


_FAULTS = r"""
import resource
import sys
from mmtx import sharding
if sys.argv[1:] == ["sync"]:   # what mmtx.main does first
  assert sharding.set_cpu_sync_dispatch()
import jax
import jax.numpy as jnp

@jax.jit
def f(x):   # x @ x.T is a 64 MiB temporary between two GEMMs
  return (x @ x.T) @ x

x = jnp.ones((4096, 64), jnp.float32) / 64
for _ in range(2):
  f(x).block_until_ready()
per_call = []   # the quietest of three rounds: a stray fault elsewhere in
for _ in range(3):   # the process (a runtime thread, the GC) is not the GEMM's
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(4):
    f(x).block_until_ready()
  per_call.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                   - before) / 4)
print(min(per_call))
"""


def test_run_sh_stops_xla_cpu_refaulting_its_temporaries_every_call():
  """XLA:CPU allocates a call's temporaries afresh and glibc maps / unmaps
  blocks that large per call, so each call faults the 64 MiB temporary
  back in, 4 KiB at a time (16k faults). run.sh's GLIBC_TUNABLES cut that
  by far more than 10x, and to almost nothing with mmtx's synchronous CPU
  dispatch (sharding.set_cpu_sync_dispatch): the training-step time it
  saves is in experiments/benchmarks/NOTES.md."""
  thp = "/sys/kernel/mm/transparent_hugepage/enabled"
  if not os.path.exists(thp) or "[never]" in open(thp).read():
    pytest.skip("transparent huge pages are off on this machine")
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  faults = {}
  for name, prefix, args in (("plain", [], []),
                             ("run.sh", ["bash", "run.sh"], []),
                             ("run.sh, sync", ["bash", "run.sh"], ["sync"])):
    out = subprocess.run(prefix + [sys.executable, "-c", _FAULTS, *args],
                         cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    faults[name] = float(out.stdout.split()[-1])
  if faults["plain"] < 4096:
    pytest.skip(f"this allocator already reuses XLA's temporaries "
                f"({faults['plain']:.0f} faults per call)")
  # Huge pages alone (JAX's dispatch thread): far fewer, larger faults;
  # on the calling thread the second call reuses the first's memory.
  assert faults["run.sh"] < faults["plain"] / 10, faults
  # The temporary is 16384 pages; under 1 % of them fault back per call (0
  # on the AMD dev box; a CI box once counted 65 in one round of four calls).
  assert faults["run.sh, sync"] < 16384 / 100, faults
