"""The CLI: `python -m mmtx.main --config=configs/NAME.py[:ARGS]
--workdir=DIR [--mode=train|eval] [--config_change=error|accept]
[--config.key=value ...]`.

With no flags it runs configs/default.py (a cross-attention VQA model on the
built-in sort_of_clevr data, built on first use) in runs/default.

Exit status: 0 done; 1 the run could not do what was asked (checkpoints that
do not fit the model or cannot be read, eval without a checkpoint, bad data,
a non-finite loss); 2 a bad command line or config value, or a config that
differs from the one WORKDIR's run was trained with; 143 (128 +
SIGTERM) stopped by SIGTERM after saving a checkpoint - the same command
resumes. Each error prints one line saying what is wrong and what to do.
"""
from __future__ import annotations

import difflib
import os
import sys

from absl import app, flags
from ml_collections import config_flags

# The config files ship inside the package (mmtx/configs; `configs/` in a
# checkout links to it), so a pip-installed mmtx runs from any directory.
_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "configs")
_DEFAULT_CONFIG = os.path.join(_CONFIG_DIR, "default.py")


def _config_path(spec: str) -> str:
  """--config's value as given, or mmtx's own config file of that name when
  'configs/NAME.py[:ARGS]' names no file under the working directory."""
  path, sep, args = spec.partition(":")
  own = os.path.join(_CONFIG_DIR, os.path.basename(path))
  if (not os.path.exists(path) and os.path.dirname(path) in ("", "configs")
      and os.path.isfile(own)):
    return own + sep + args
  return spec


def _resolve_config_args(argv: list[str]) -> list[str]:
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith("--config="):
      out[i] = "--config=" + _config_path(a[len("--config="):])
    elif a == "--config" and i + 1 < len(out):
      out[i + 1] = _config_path(out[i + 1])
  return out

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, metrics.jsonl, TensorBoard); "
    "default runs/<config name>.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train (resumes if WORKDIR has checkpoints) or eval.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_CONFIG_CHANGE = flags.DEFINE_enum(
    "config_change", "error", ["error", "accept"],
    "When WORKDIR's run was trained with other config values (its "
    "config.json): error, or accept (resume with this config; the old one "
    "is kept as config.stepN.json).")


def _flat_keys(cfg, prefix=""):
  out = []
  for k, v in cfg.items():
    key = f"{prefix}{k}"
    out.append(key)
    if hasattr(v, "items"):
      out.extend(_flat_keys(v, key + "."))
  return out


def _parse_flags(argv):
  """absl parsing, with config errors turned into one actionable line."""
  _missing_config_file(argv)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    _config_error(argv, e)


def _raised_by_get_config(e):
  """The exception a config file's get_config raised, if `e` wraps one.

  config_flags re-raises it with the traceback pasted into the message and
  absl wraps that again; the original is the end of the __context__ chain,
  and its traceback passes through the config file's get_config.
  """
  while e is not None:
    tb = e.__traceback__
    while tb is not None:
      if tb.tb_frame.f_code.co_name == "get_config":
        return e
      tb = tb.tb_next
    e = e.__cause__ or e.__context__
  return None


def _config_error(argv, e):
  """Prints what was wrong (and the closest valid keys); exits with 2."""
  own = _raised_by_get_config(e)
  # ml_collections' messages arrive as repr()s with escaped quotes/newlines.
  msg = " ".join(str(own or e).replace("\\n", " ").replace("\\'", "")
                 .split())
  if own is None:
    msg = msg.replace("'", "").strip('"')
  bad = [a.split("=", 1)[0][len("--config."):] for a in argv[1:]
         if a.startswith("--config.")]
  hint = ""
  try:
    cfg_file = next((a.split("=", 1)[1] for a in argv[1:]
                     if a.startswith("--config=")), _DEFAULT_CONFIG)
    keys = _flat_keys(config_flags.config_flags._LoadConfigModule(  # noqa: SLF001
        "config", cfg_file.split(":")[0]).get_config(
            *cfg_file.split(":")[1:2]))
    unknown = [b for b in bad if b not in keys]
    if unknown:
      hint = " ".join(
          f"Unknown config key '{u}'; closest valid: "
          f"{difflib.get_close_matches(u, keys, n=3, cutoff=0.5) or 'none'}."
          for u in unknown)
  except Exception:  # noqa: BLE001 - the hint is best-effort
    pass
  print(f"mmtx: bad command line: {msg} {hint}".strip(), file=sys.stderr)
  sys.exit(2)


def _missing_config_file(argv):
  """If --config names no file: says so, with mmtx's configs; exits with 2."""
  spec = next((a.split("=", 1)[1] for a in argv[1:]
               if a.startswith("--config=")), _DEFAULT_CONFIG)
  path = spec.split(":")[0]
  if os.path.isfile(path):
    return
  config_dir = os.path.dirname(_DEFAULT_CONFIG)
  names = sorted(f[:-3] for f in os.listdir(config_dir)
                 if f.endswith(".py") and f not in ("__init__.py", "common.py"))
  stem = os.path.splitext(os.path.basename(path))[0]
  close = difflib.get_close_matches(stem, names, n=1, cutoff=0.6)
  print(f"mmtx: bad command line: config file {path} does not exist"
        + (f"; did you mean configs/{close[0]}.py?" if close else ".")
        + f" The configs are configs/NAME.py with NAME one of {names}.",
        file=sys.stderr)
  sys.exit(2)


def _define_config_flag():
  # config_flags applies --config.* overrides while defining the flag, so a
  # bad key surfaces here, before absl parses anything.
  try:
    return config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG,
        "Experiment config file (configs/NAME.py[:ARGS]).", lock_config=True)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    _config_error(sys.argv, e)


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = _CONFIG.value
  # Imports after flag parsing keep `--help` fast.
  import jax
  from mmtx import sharding
  # All before anything starts JAX's backends.
  sharding.set_cpu_sync_dispatch()
  sharding.set_cpu_devices(config.mesh.get("cpu_devices", 0))
  sharding.maybe_initialize_distributed()
  from mmtx import checkpoint
  from mmtx import tasks
  from mmtx import train

  name = os.path.splitext(os.path.basename(
      flags.FLAGS["config"].config_filename))[0]
  workdir = _WORKDIR.value or os.path.join("runs", name)
  # Errors a user acts on print their message, not a traceback (exit
  # statuses: the module docstring).
  try:
    train.check_config(config)
    devices = jax.devices()
    print(f"mmtx: task={config.task} workdir={workdir} "
          f"devices={len(devices)} {devices[0].platform}", flush=True)
    task = tasks.build_task(config)
    train.train_and_evaluate(
        config, workdir, task, mode=_MODE.value, progress=_PROGRESS.value,
        accept_config_change=_CONFIG_CHANGE.value == "accept")
  except train.Preempted as e:
    print(f"mmtx: {e}", file=sys.stderr)
    sys.exit(train.EXIT_PREEMPTED)
  except train.ConfigError as e:
    print(f"mmtx: bad config: {e}", file=sys.stderr)
    sys.exit(2)
  except (ValueError, OSError, checkpoint.CheckpointError,
          train.NonFiniteLossError) as e:
    print(f"mmtx: error: {e}", file=sys.stderr)
    sys.exit(1)


sys.argv = _resolve_config_args(sys.argv)
_CONFIG = _define_config_flag()

if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
