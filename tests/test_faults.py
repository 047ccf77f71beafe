"""Faults a careful user meets (issue 21): a changed model config in an old
workdir, damaged checkpoints, settings that would do nothing or destroy,
eval without weights, bad paths, bad data and bad model inputs. Each must
fail loudly with a message that says what to do, exit non-zero where the run
did not do what was asked, and lose nothing (no checkpoint deleted, no
second history in metrics.jsonl).

In-process runs use the small regression task (tests/toy_task.py); the exit
statuses go through the CLI on the tiny built-in data (tests/test_main.py).
"""
import glob
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore

from mmtx import checkpoint
from mmtx import train
from test_main import REPO, TINY, _run
from test_train import _params
from toy_task import RegressionTask, base_config


def _train(workdir, **kw):
  cfg = base_config(**kw)
  return train.train_and_evaluate(cfg, str(workdir), RegressionTask(cfg),
                                  progress=False)


def _snapshot(workdir):
  """Every file of the run (path -> bytes): 'nothing lost' is equality."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      if "tensorboard" not in root:
        path = os.path.join(root, f)
        with open(path, "rb") as fh:
          out[os.path.relpath(path, workdir)] = fh.read()
  return out


def _train_rows(workdir):
  """(step, loss) of every training row of metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def _assert_same_params(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------- checkpoints
def test_changed_model_is_a_mismatch_not_corruption(tmp_path, capsys):
  _train(tmp_path, total_steps=6)
  before = _snapshot(tmp_path)
  for mode in ("train", "eval"):
    cfg = base_config(total_steps=12, **{"model.hidden": 8})
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
      train.train_and_evaluate(cfg, str(tmp_path), RegressionTask(cfg),
                               mode=mode, progress=False)
    msg = str(e.value)
    assert ("params/dense_in/bias has shape (16,) in the checkpoint and (8,) "
            "in the model") in msg, msg
    assert "--workdir" in msg and f"init_from.workdir={tmp_path}" in msg
  assert "corrupt or partial" not in capsys.readouterr().out
  assert _snapshot(tmp_path) == before   # no checkpoint, no metrics row


def test_changed_config_in_an_old_workdir_is_an_error_that_keeps_the_run(
    tmp_path):
  """Values that keep every shape (a learning rate, a schedule) used to
  resume silently, so one run's checkpoints held two configs' training."""
  _train(tmp_path, total_steps=6)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["optimizer.learning_rate"] == 0.01
  before = _snapshot(tmp_path)
  for mode in ("train", "eval"):
    cfg = base_config(total_steps=12, **{"optimizer.learning_rate": 0.05,
                                         "optimizer.schedule": "constant"})
    with pytest.raises(train.ConfigError) as e:
      train.train_and_evaluate(cfg, str(tmp_path), RegressionTask(cfg),
                               mode=mode, progress=False)
    msg = str(e.value)
    assert (f"{tmp_path} holds a run at step 6 trained with another config: "
            "config.optimizer.learning_rate was 0.01, now 0.05; "
            "config.optimizer.schedule was 'cosine', now 'constant'.") in msg
    assert ("--config.optimizer.learning_rate=0.01 "
            "--config.optimizer.schedule=cosine") in msg
    assert "new --workdir" in msg and "--config_change=accept" in msg
  assert _snapshot(tmp_path) == before
  # How long it trains, what it logs and where it runs may change.
  _train(tmp_path, total_steps=8, log_every=4, eval_every=8,
         **{"mesh.num_devices": 1})
  assert _train_rows(tmp_path)[-1][0] == 8
  # On purpose: trains on, and the record of the first config is kept.
  cfg = base_config(total_steps=10, **{"optimizer.learning_rate": 0.05})
  train.train_and_evaluate(cfg, str(tmp_path), RegressionTask(cfg),
                           progress=False, accept_config_change=True)
  with open(tmp_path / "config.step8.json") as f:
    assert json.load(f)["optimizer.learning_rate"] == 0.01
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["optimizer.learning_rate"] == 0.05
  assert _train_rows(tmp_path)[-1][0] == 10
  # A workdir from before the record existed gets one, unchecked.
  os.remove(tmp_path / "config.json")
  _train(tmp_path, total_steps=12)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["optimizer.learning_rate"] == 0.01


def test_cli_changed_config_exits_2_and_names_the_field(tmp_path):
  wd = tmp_path / "run"
  out = _run([f"--workdir={wd}", *TINY], tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  before = _snapshot(wd)
  again = _run([f"--workdir={wd}", *TINY,
                "--config.optimizer.weight_decay=0.5"], tmp_path)
  assert again.returncode == 2, again.stderr[-3000:]
  assert ("config.optimizer.weight_decay was 0.05, now 0.5" in again.stderr
          and "--config_change=accept" in again.stderr), again.stderr
  assert "Traceback" not in again.stderr
  assert _snapshot(wd) == before


def test_corrupt_final_checkpoint_is_repaired_by_saving_over_it(tmp_path,
                                                                 capsys):
  _train(tmp_path, total_steps=6)
  _, good = _params(tmp_path)
  logged = _train_rows(tmp_path)
  for f in glob.glob(str(tmp_path / "checkpoints" / "6" / "state" / "**"),
                     recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(b"garbage")
  _train(tmp_path, total_steps=6)
  out = capsys.readouterr().out
  assert "checkpoint at step 6 is corrupt or partial" in out
  assert "at step 3" in out
  assert "replacing the damaged checkpoint at step 6" in out
  steps, repaired = _params(tmp_path)
  assert steps[-1] == 6
  _assert_same_params(good, repaired)    # resume is exact
  # One history: the retrained steps replace their rows, not repeat them.
  assert _train_rows(tmp_path) == logged
  _train(tmp_path, total_steps=6)        # the next rerun finds it whole
  out = capsys.readouterr().out
  assert "corrupt or partial" not in out
  assert "already at total_steps=6" in out


def test_an_array_that_reads_back_changed_fails_its_checksum(tmp_path,
                                                             capsys):
  _train(tmp_path, total_steps=6)
  _, good = _params(tmp_path)
  # One float moved by one ulp, written through tensorstore itself: the
  # storage is self-consistent (its CRCs and zstd frames check out), so only
  # the checksums saved beside the arrays can tell. Flipping raw bytes in a
  # data file is not a reliable probe: ocdbt leaves unreferenced node files
  # behind, and which file is largest varies from run to run.
  kernel = tensorstore.open({
      "driver": "zarr", "path": "params.dense_in.kernel",
      "kvstore": {"driver": "ocdbt",
                  "base": f"file://{tmp_path}/checkpoints/6/state/"}}).result()
  x = kernel.read().result().copy()
  x[0, 0] = np.nextafter(x[0, 0], np.float32(np.inf))
  kernel.write(x).result()
  _train(tmp_path, total_steps=6)
  out = capsys.readouterr().out
  assert "checkpoint at step 6 is corrupt or partial" in out
  assert ("params/dense_in/kernel: the bytes read do not match the checksum "
          "saved with them") in out
  assert "at step 3" in out
  _, repaired = _params(tmp_path)
  _assert_same_params(good, repaired)


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  _train(tmp_path, total_steps=6)
  for f in glob.glob(str(tmp_path / "checkpoints" / "*" / "state" / "**"),
                     recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(b"garbage")
  before = _snapshot(tmp_path)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"no checkpoint .* can be read \(steps \[6, 3\]"):
    _train(tmp_path, total_steps=12)
  assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------- config
@pytest.mark.parametrize("field,value", [
    ("keep_checkpoints", 0), ("total_steps", 0), ("total_steps", -5),
    ("checkpoint_every", 0), ("log_every", 0),
    ("optimizer.learning_rate", -1e-3)])
def test_settings_that_do_nothing_or_destroy_are_errors(tmp_path, field,
                                                        value):
  # train.ConfigError is a ValueError (the CLI exits 2 on it).
  with pytest.raises(ValueError, match=f"config.{field}={value}: "):
    _train(tmp_path, **{field: value})
  assert not os.path.exists(tmp_path / "checkpoints")


def test_total_steps_below_the_resumed_step_is_an_error(tmp_path):
  _train(tmp_path, total_steps=6)
  before = _snapshot(tmp_path)
  with pytest.raises(ValueError, match="total_steps=3 is below the step 6"):
    _train(tmp_path, total_steps=3)
  assert _snapshot(tmp_path) == before


def test_eval_needs_a_checkpoint_or_every_param_from_init_from(tmp_path):
  def evaluate(workdir, **kw):
    cfg = base_config(**kw)
    return train.train_and_evaluate(cfg, str(workdir), RegressionTask(cfg),
                                    mode="eval", progress=False)
  with pytest.raises(FileNotFoundError, match="--mode=eval: no checkpoint"):
    evaluate(tmp_path / "new")
  _train(tmp_path / "src", total_steps=3)
  src = {"init_from.workdir": str(tmp_path / "src")}
  assert "neg_mse" in evaluate(tmp_path / "dst", **src)  # all params loaded
  with pytest.raises(FileNotFoundError, match="init_from leaves 3 params at "
                     "their random init"):
    evaluate(tmp_path / "dst2", **src, **{"model.hidden": 8})


def test_a_file_where_the_checkpoints_go_is_an_error(tmp_path):
  (tmp_path / "checkpoints").write_text("not a directory")
  with pytest.raises(checkpoint.CheckpointError, match="is a file"):
    _train(tmp_path, total_steps=3)
  assert (tmp_path / "checkpoints").read_text() == "not a directory"


# -------------------------------------------------------------------- CLI
def test_cli_eval_on_a_new_workdir_exits_1(tmp_path):
  out = _run([f"--workdir={tmp_path / 'new'}", "--mode=eval", *TINY],
             tmp_path, timeout=300)
  assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
  assert "no checkpoint" in out.stderr and "Traceback" not in out.stderr
  assert "accuracy" not in out.stdout.lower()


def test_cli_missing_config_file_is_one_line(tmp_path):
  out = _run([f"--workdir={tmp_path}", "--config=configs/defualt.py"],
             tmp_path, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().count("\n") == 0, out.stderr
  assert "config file configs/defualt.py does not exist; did you mean " \
         "configs/default.py?" in out.stderr


def test_cli_sigterm_saves_and_exits_with_the_preemption_status(tmp_path):
  args = [a for a in TINY if not a.startswith((
      "--config.total_steps", "--config.eval_every",
      "--config.checkpoint_every", "--progress"))]
  env = dict(os.environ, MMTX_DATA_DIR=str(tmp_path / "data"))
  proc = subprocess.Popen(
      [sys.executable, "-m", "mmtx.main", f"--workdir={tmp_path / 'run'}",
       *args, "--config.total_steps=100000", "--config.checkpoint_every=50000",
       "--config.eval_every=0", "--config.model.fusion.num_layers=1",
       "--config.mesh.cpu_devices=1", "--progress=true"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  seen = b""
  while b"train:" not in seen:   # the progress bar: the handler is set
    chunk = proc.stderr.read1(4096)
    assert chunk, seen[-2000:]
    seen += chunk
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 143, stderr[-2000:]   # train.EXIT_PREEMPTED
  assert b"SIGTERM: saved a checkpoint at step" in stdout
  steps, _ = _params(tmp_path / "run")
  assert steps and steps[-1] < 100000


@pytest.mark.slow
def test_cli_changed_model_config_exits_1_and_keeps_the_run(tmp_path):
  """The issue's probe end to end: a workdir of the default model, rerun
  with one fusion layer less."""
  wd = tmp_path / "run"
  out = _run([f"--workdir={wd}", *TINY], tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  before = _snapshot(wd)
  for mode in ("train", "eval"):
    again = _run([f"--workdir={wd}", f"--mode={mode}", *TINY,
                  "--config.model.fusion.num_layers=2"], tmp_path)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "does not fit this model: params/" in again.stderr
    assert "Traceback" not in again.stderr
  assert _snapshot(wd) == before


# ------------------------------------------------------------------- data
def test_misspelt_dataset_name_suggests_the_right_one():
  from mmtx import data
  with pytest.raises(ValueError, match="unknown dataset 'sort_of_clver'; "
                     "did you mean 'sort_of_clevr'?"):
    data.get_dataset("sort_of_clver", "train", "vqa", batch_size=4)


def test_runs_started_together_on_a_fresh_data_dir_share_one_build(tmp_path):
  """Two processes that need the same unbuilt dataset at once (two seeds
  side by side): one builds it, the other waits and reads it."""
  code = ("import sys; from mmtx.data import build; b = build.ensure_built("
          "'sort_of_clevr/tiny', sys.argv[1], verbose=False); "
          "print(len(b.as_data_source('validation')))")
  env = dict(os.environ, PYTHONPATH=REPO)
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "16"


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_damaged_shard_names_the_file(tmp_path, damage):
  from mmtx import data
  d = str(tmp_path / "data")
  data.ensure_built("sort_of_clevr/tiny", d, verbose=False)
  shard, = glob.glob(os.path.join(d, "sort_of_clevr", "tiny", "*",
                                  "*-train.array_record-*"))
  if damage == "truncate":
    os.truncate(shard, os.path.getsize(shard) // 2)
  else:
    with open(shard, "r+b") as f:
      f.seek(1000)
      f.write(b"\xff" * 21)
  with pytest.raises(OSError, match=f"cannot read record .* from {shard} "
                     ".*rebuild it with `python -m mmtx.data"):
    _, info = data.get_dataset("sort_of_clevr/tiny", "train", "vqa",
                               batch_size=8, data_dir=d, shard=(0, 1),
                               cache_mb=0)
    for i in range(info.num_records):
      info.record(i)


# ----------------------------------------------------------- model inputs
def _fusion_model():
  import flax.linen as nn
  from mmtx.models.fusion_model import FusionModel
  model = FusionModel(dict(
      image=dict(patch_size=15, width=16, depth=1, mlp_dim=32, num_heads=2),
      text=dict(vocab_size=20, width=16, depth=1, mlp_dim=32, num_heads=2,
                max_len=4),
      fusion=dict(name="cross_attention", target="text", dim=16, num_heads=2,
                  num_layers=1, mlp_dim=32),
      heads=("vqa",), num_answers=3, head_hidden=8))
  x = jnp.zeros((2, 30, 30, 3))
  t = jnp.array([[1, 5, 19, 0], [1, 2, 0, 0]])
  params = nn.meta.unbox(model.init(jax.random.key(0), x, t)["params"])
  return model, params, x, t


@pytest.mark.parametrize("bad_id", [20, -1])
def test_token_ids_out_of_range_are_an_error_not_a_silent_row(bad_id):
  model, params, x, t = _fusion_model()
  bad = t.at[1, 2].set(bad_id)
  with pytest.raises(ValueError, match=r"token ids must be in \[0, "
                     r"vocab_size=20\) \(0 = padding\), got 1 outside it"):
    model.apply({"params": params}, x, bad)
  with pytest.raises(ValueError, match="token ids must be in"):   # [B, Q, L]
    model.apply({"params": params}, x, bad[:, None])
  # Under jit the values are unknown: the bad row is NaN, which the trainer
  # stops on, never another token's embedding.
  out, _ = jax.jit(lambda p, i: model.apply({"params": p}, x, i))(params, bad)
  assert np.isnan(np.asarray(out["vqa_logits"][1])).all()
  assert np.isfinite(np.asarray(out["vqa_logits"][0])).all()


def test_uint8_images_are_an_error():
  from mmtx import models
  model, params, x, t = _fusion_model()
  with pytest.raises(ValueError, match="images must be NHWC float32 .* "
                     "dtype uint8"):
    model.apply({"params": params}, x.astype(jnp.uint8), t)
  dual = models.DualEncoder(dict(
      image=dict(patch_size=15, width=16, depth=1, mlp_dim=32, num_heads=2),
      text=dict(vocab_size=20, width=16, depth=1, mlp_dim=32, num_heads=2,
                max_len=4), embed_dim=8))
  with pytest.raises(ValueError, match="dtype uint8"):
    dual.init(jax.random.key(0), x.astype(jnp.uint8), t)
