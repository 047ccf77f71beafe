"""The training loop's guarantees: exact resume after SIGKILL, SIGTERM save,
non-finite stop, corrupt-checkpoint fallback, transfer, config locking.

Uses a small linear-regression task (so each run takes seconds) whose data
is a grain dataset over in-memory records; the trainer itself is the real one.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mmtx import train
from toy_task import RegressionTask, base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir):
  from mmtx import checkpoint
  ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                               async_save=False)
  steps = ck.all_steps()
  p = ck.restore_params(steps[-1])["params"]
  ck.close()
  return steps, jax.tree_util.tree_map(np.asarray, p)


def test_training_reduces_loss_and_writes_metrics(tmp_path):
  cfg = base_config(total_steps=60, eval_every=30, checkpoint_every=30,
                    **{"optimizer.learning_rate": 3e-2})
  out = train.train_and_evaluate(cfg, str(tmp_path), RegressionTask(cfg),
                                 progress=False)
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses[-1] < 0.2 * losses[0]
  assert out["neg_mse"] > -1.0
  assert any("eval/neg_mse" in r for r in rows)
  assert all("step" in r for r in rows)
  assert os.listdir(tmp_path / "tensorboard")


def test_resume_is_bitwise_equal_to_uninterrupted(tmp_path):
  cfg = base_config()
  train.train_and_evaluate(cfg, str(tmp_path / "full"), RegressionTask(cfg),
                           progress=False)
  # The same command, interrupted when fetching step 7's batch (after the
  # step-6 checkpoint), then restarted.
  class Interrupted(Exception):
    pass

  class Stops(RegressionTask):
    def train_iterator(self, index, count):
      it, n = super().train_iterator(index, count), [0]

      class W:
        def __next__(self):
          n[0] += 1
          if n[0] == 7:
            raise Interrupted()
          return next(it)
        get_state = it.get_state
        set_state = it.set_state
      return W()

  with pytest.raises(Interrupted):
    train.train_and_evaluate(cfg, str(tmp_path / "resumed"), Stops(cfg),
                             progress=False)
  assert _params(tmp_path / "resumed")[0][-1] == 6
  train.train_and_evaluate(cfg, str(tmp_path / "resumed"), RegressionTask(cfg),
                           progress=False)
  _, a = _params(tmp_path / "full")
  _, b = _params(tmp_path / "resumed")
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


_RUNNER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import toy_task as t
    from mmtx import train
    cfg = t.base_config(total_steps={steps}, checkpoint_every=1, eval_every=0)
    class Slow(t.RegressionTask):
      def loss_fn(self, *a):
        return super().loss_fn(*a)
    task = Slow(cfg)
    orig = task.train_iterator
    def slow_iter(*a):
      it = orig(*a)
      class W:
        def __next__(s):
          time.sleep({sleep}); print("STEP", flush=True); return next(it)
        def get_state(s): return it.get_state()
        def set_state(s, x): it.set_state(x)
      return W()
    task.train_iterator = slow_iter
    train.train_and_evaluate(cfg, {workdir!r}, task, progress=False)
    print("DONE", flush=True)
""")


def _spawn(workdir, steps, sleep):
  code = _RUNNER.format(tests=os.path.dirname(__file__), steps=steps,
                        sleep=sleep, workdir=str(workdir))
  return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _wait_steps(proc, n):
  seen = 0
  for line in proc.stdout:
    if line.startswith("STEP"):
      seen += 1
      if seen >= n:
        return


def test_sigkill_then_restart_matches_uninterrupted(tmp_path):
  ref = _spawn(tmp_path / "ref", 10, 0.0)
  ref.communicate(timeout=300)
  proc = _spawn(tmp_path / "killed", 10, 0.3)
  _wait_steps(proc, 6)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  again = _spawn(tmp_path / "killed", 10, 0.0)
  out, _ = again.communicate(timeout=300)
  assert "DONE" in out, out
  _, a = _params(tmp_path / "ref")
  _, b = _params(tmp_path / "killed")
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
  code = _RUNNER.format(tests=os.path.dirname(__file__), steps=1000,
                        sleep=0.2, workdir=str(tmp_path)).replace(
                            "checkpoint_every=1", "checkpoint_every=500")
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=REPO)
  _wait_steps(proc, 4)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert "SIGTERM: saved a checkpoint at step" in out, out
  steps, _ = _params(tmp_path)
  assert steps and 4 <= steps[-1] < 500


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  good = base_config(total_steps=6)
  train.train_and_evaluate(good, str(tmp_path), RegressionTask(good),
                           progress=False)
  steps_before, before = _params(tmp_path)
  # The same run resumed on poisoned data (a config change, on purpose).
  bad = base_config(total_steps=12, **{"data.poison_after": 0})
  with pytest.raises(train.NonFiniteLossError, match="at step 7"):
    train.train_and_evaluate(bad, str(tmp_path), RegressionTask(bad),
                             progress=False, accept_config_change=True)
  steps_after, after = _params(tmp_path)
  assert steps_after == steps_before
  for x, y in zip(jax.tree_util.tree_leaves(before),
                  jax.tree_util.tree_leaves(after)):
    np.testing.assert_array_equal(x, y)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
  cfg = base_config(total_steps=6)
  train.train_and_evaluate(cfg, str(tmp_path), RegressionTask(cfg),
                           progress=False)
  latest = tmp_path / "checkpoints" / "6" / "state"
  for root, _, files in os.walk(latest):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  cfg2 = base_config(total_steps=8)
  train.train_and_evaluate(cfg2, str(tmp_path), RegressionTask(cfg2),
                           progress=False)
  out = capsys.readouterr().out
  assert "checkpoint at step 6 is corrupt or partial" in out
  assert "resumed from" in out and "at step 3" in out


def test_transfer_reports_missing_params(tmp_path, capsys):
  src = base_config(total_steps=3)
  train.train_and_evaluate(src, str(tmp_path / "src"), RegressionTask(src),
                           progress=False)
  _, src_params = _params(tmp_path / "src")
  dst = base_config(total_steps=1, **{"init_from.workdir": str(tmp_path / "src"),
                                      "optimizer.learning_rate": 0.0,
                                      "model.hidden": 16})
  with dst.unlocked():
    dst.init_from.rules = (("^dense_out/", "nonexistent/"),)
  train.train_and_evaluate(dst, str(tmp_path / "dst"), RegressionTask(dst),
                           progress=False)
  out = capsys.readouterr().out
  assert "initialised 2 params" in out
  assert "dense_out/kernel" in out and "dense_out/bias" in out
  _, dst_params = _params(tmp_path / "dst")
  np.testing.assert_array_equal(dst_params["dense_in"]["kernel"],
                                src_params["dense_in"]["kernel"])


def test_a_task_class_instead_of_a_built_task_is_a_clear_error(tmp_path):
  with pytest.raises(TypeError, match=r"build_task\(config\)"):
    train.train_and_evaluate(base_config(), str(tmp_path), RegressionTask,
                             progress=False)
  assert not os.path.exists(tmp_path / "checkpoints")
