"""8 emulated CPU devices: data parallel, FSDP and tensor parallel reach the
1-device losses; FSDP holds about 1/8 of the params + optimizer state per
device; each parameter is split on the mesh axes sharding.RULES name."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np


def test_dp_fsdp_and_tensor_parallel_match_one_device_and_shard_by_rules():
  script = os.path.join(os.path.dirname(__file__), "multidevice_train_check.py")
  out = subprocess.run([sys.executable, script], capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  res = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
  one = np.array(res["one"]["losses"])
  # Same math, different reduction order across devices: float32 rounding.
  np.testing.assert_allclose(res["dp"]["losses"], one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res["fsdp"]["losses"], one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res["tp"]["losses"], one, rtol=1e-5, atol=1e-6)
  assert one[-1] < one[0]
  # The toy MLP: dense_in kernel [64, 256] (embed, mlp), dense_out kernel
  # [256, 1] (mlp, embed), biases without names. Tensor 4: 'mlp' on tensor.
  assert res["tp"]["specs"] == {
      "dense_in/kernel": [None, "tensor"], "dense_out/kernel": ["tensor", None],
      "dense_in/bias": [None], "dense_out/bias": [None]}
  # FSDP 8: 'embed' on fsdp where 8 divides it, else the largest dim 8
  # divides (dense_out's 256; dense_in's unnamed bias); [1] stays whole.
  assert res["fsdp"]["specs"] == {
      "dense_in/kernel": ["fsdp", None], "dense_out/kernel": ["fsdp", None],
      "dense_in/bias": ["fsdp"], "dense_out/bias": [None]}
  assert set(map(tuple, res["dp"]["specs"].values())) <= {(None,),
                                                          (None, None)}
  # Embedding (vocab 40 and 42, width 16) + a scanned 2-layer encoder (4
  # heads of 4, mlp 32) on fsdp 2 x tensor 4: embed -> fsdp, heads / mlp /
  # vocab -> tensor, kv and the scanned layers axis whole; vocab 42 is not
  # divisible by 4 and stays whole.
  specs, diff = res["model"]
  # ... and on that mesh the same outputs as on one device.
  assert diff < 1e-5, diff
  want = {"tok/embedding": ["tensor", "fsdp"],
          "odd/embedding": [None, "fsdp"],
          "enc/ln_final/scale": ["fsdp"],
          "enc/layers/attention/out/kernel": [None, "tensor", None, "fsdp"],
          "enc/layers/attention/out/bias": [None, "fsdp"],
          "enc/layers/ln_mlp/scale": [None, "fsdp"],
          "enc/layers/mlp/wi/kernel": [None, "fsdp", "tensor"],
          "enc/layers/mlp/wo/kernel": [None, "tensor", "fsdp"],
          "enc/layers/mlp/wo/bias": [None, "fsdp"]}
  for name in ("query", "key", "value"):
    want[f"enc/layers/attention/{name}/kernel"] = [None, "fsdp", "tensor",
                                                   None]
  assert {k: specs[k] for k in want} == want
  rep = res["dp"]["state_bytes_per_device"]
  fsdp = res["fsdp"]["state_bytes_per_device"]
  # Only the 1-D biases of width 1 and the scalars stay replicated.
  assert fsdp < rep / 8 * 1.05, (fsdp, rep)
  assert res["fsdp"]["argument_bytes"] < res["dp"]["argument_bytes"] / 4


def test_eval_runs_under_the_rules_and_a_rule_that_cannot_apply_is_logged():
  """On 2 CPU devices: the trainer's evaluation is traced under the same
  logical-axis rules as its train step (its lowered function holds the
  activation constraints; called outside the trainer it holds none, and
  gives the same metric), and each rule that cannot apply (a batch of 3 on
  2 devices, a name without a rule, a rule naming an axis the mesh lacks)
  is logged once."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = os.path.join(os.path.dirname(__file__), "multidevice_rules_check.py")
  out = subprocess.run([sys.executable, script], capture_output=True,
                       text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=root))
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  res = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
  inside, outside = res["inside"], res["outside"]
  assert inside["rules"] and not outside["rules"]
  # One Encoder layer: its input and output, q, k, v and the FFN hidden.
  assert inside["constraints"] == 6, inside
  assert outside["constraints"] == 0, outside
  np.testing.assert_allclose(inside["neg_mse"], outside["neg_mse"], rtol=1e-5)
  logged = res["logged"]
  assert len(logged) == 3, logged
  assert "size 3 is not divisible by mesh axes ('data', 'fsdp')" in logged[0]
  assert "no rule for the logical axis 'typo'" in logged[1]
  assert "has no axis ['sequence']" in logged[2]


def test_cpu_devices_is_applied_before_jax_starts_and_warns_after():
  """sharding.set_cpu_devices(n) (config.mesh.cpu_devices, applied by
  mmtx.main) splits the CPU into n devices when JAX has not started; once it
  has, it changes nothing and says so, and make_mesh warns about a mismatch."""
  code = textwrap.dedent("""
      import warnings
      import jax
      from mmtx import sharding
      assert sharding.set_cpu_devices(2)
      assert jax.device_count() == 2, jax.devices()
      assert sharding.set_cpu_devices(2)        # the same count: a no-op
      with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert not sharding.set_cpu_devices(3)
        mesh = sharding.make_mesh(cpu_devices=3)
      assert mesh.devices.size == 2
      msgs = [str(x.message) for x in w]
      assert "already running" in msgs[0] and "2 CPU device" in msgs[1], msgs
      print("OK")
  """)
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, env=env)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
  # An explicit XLA_FLAGS device count is the user's choice and wins.
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
  code = ("import jax; from mmtx import sharding; "
          "print(sharding.set_cpu_devices(2), jax.device_count())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, env=env)
  assert out.stdout.split()[-2:] == ["False", "3"], out.stdout + out.stderr


def test_cpu_sync_dispatch_is_applied_before_jax_starts_and_warns_after():
  """sharding.set_cpu_sync_dispatch (mmtx.main's first step) makes
  single-device CPU programs run on the calling thread - a call returns
  with its result computed - and, once JAX has started without it, changes
  nothing and says so."""
  code = textwrap.dedent("""
      import sys, warnings
      import jax, jax.numpy as jnp
      from mmtx import sharding
      if sys.argv[1] == "before":
        assert sharding.set_cpu_sync_dispatch()
        assert sharding.set_cpu_sync_dispatch()   # again: a no-op
        assert not jax.config.read("jax_cpu_enable_async_dispatch")
      else:
        jnp.ones(1).block_until_ready()
        with warnings.catch_warnings(record=True) as w:
          warnings.simplefilter("always")
          assert not sharding.set_cpu_sync_dispatch()
        assert "already running" in str(w[0].message)
        assert jax.config.read("jax_cpu_enable_async_dispatch")
        # Asynchronous: whether a call is done on return is a race; only
        # the synchronous case below is certain.
        print("ASYNC")
        sys.exit(0)
      # Synchronous: a dispatched call has its result when it returns.
      f = jax.jit(lambda x: (x @ x.T).sum())
      x = jnp.ones((2048, 2048))
      f(x).block_until_ready()
      print("READY", f(x).is_ready())
  """)
  got = {}
  for when in ("before", "after"):
    out = subprocess.run([sys.executable, "-c", code, when],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got[when] = out.stdout.split()[-1]
  assert got == {"before": "True", "after": "ASYNC"}, got
