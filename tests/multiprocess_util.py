"""Launching a localhost jax.distributed run of N processes for the tests."""
import contextlib
import os
import socket
import subprocess
import sys


@contextlib.contextmanager
def reserved_port():
  """A localhost port that stays bound (not listening, SO_REUSEPORT) until
  the block ends: no other process can bind it meanwhile, while the
  jax.distributed coordinator, whose gRPC server binds with SO_REUSEPORT,
  can. (A port picked free and closed before the coordinator binds it can
  be taken by another process in between.)"""
  with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]


def run_processes(script, args, n=2, timeout=300):
  """Runs `python script *args` as processes 0..n-1 of one jax.distributed
  job; returns [(returncode, stdout + stderr)] in process order."""
  with reserved_port() as port:
    procs = []
    for i in range(n):
      env = dict(os.environ, MMTX_NUM_PROCESSES=str(n),
                 MMTX_PROCESS_ID=str(i),
                 JAX_COORDINATOR_ADDRESS=f"localhost:{port}")
      procs.append(subprocess.Popen(
          [sys.executable, script, *map(str, args)], env=env,
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
      outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
  return [(p.returncode, out) for p, out in zip(procs, outs)]
