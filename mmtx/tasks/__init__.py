"""Tasks: how a batch becomes a loss and how a model is evaluated.

A task is one module here, mmtx/tasks/NAME.py, whose `TASK` is its
`common.Task` subclass; `config.task = 'NAME'` selects it. Add a task by
adding that module and one config; the trainer is shared.
`build_task(config)` is the task a config names, built once: its model,
loss and evaluation.
"""
import difflib
import importlib
import pkgutil


def task_names() -> list[str]:
  """The modules of mmtx/tasks that define a TASK."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if hasattr(importlib.import_module(f"{__name__}.{m.name}"),
                           "TASK"))


def get_task(name: str):
  """The Task class of mmtx/tasks/`name`.py (its TASK)."""
  module = None
  if name.isidentifier():
    try:
      module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{__name__}.{name}":
        raise
  if getattr(module, "TASK", None) is None:
    known = task_names()
    close = difflib.get_close_matches(name, known, n=3)
    raise ValueError(f"unknown task {name!r}; known tasks: {known}"
                     + (f" (did you mean {close[0]!r}?)" if close else "."))
  return module.TASK


def build_task(config, info=None):
  """`Task(config, info)` of the class config.task names; `info` (the
  training split's DataInfo) is opened from config.data when not given."""
  return get_task(config.task)(config, info)
