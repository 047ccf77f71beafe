"""Tasks: how a batch becomes a loss and how a model is evaluated.

Add a task by adding one module here (a `common.Task` subclass) and one
config; the trainer is shared. `build_task(config)` is the task a config
names, built once: its model, loss and evaluation.
"""
import difflib
import importlib

# name -> "module:Class" (imported on first use).
TASKS = {
    "vqa": "mmtx.tasks.vqa:VqaTask",
    "avqa": "mmtx.tasks.avqa:AvqaTask",
    "av_event": "mmtx.tasks.av_event:AvEventTask",
    "contrastive": "mmtx.tasks.contrastive:ContrastiveTask",
    "caption": "mmtx.tasks.caption:CaptionTask",
    "dialogue": "mmtx.tasks.dialogue:DialogueTask",
    "pretrain": "mmtx.tasks.pretrain:PretrainTask",
}


def get_task(name: str):
  """The Task class registered as `name` (a key of TASKS)."""
  if name not in TASKS:
    close = difflib.get_close_matches(name, list(TASKS), n=3)
    raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}"
                     + (f" (did you mean {close[0]!r}?)" if close else "."))
  module, cls = TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def build_task(config, info=None):
  """`Task(config, info)` of the class config.task names; `info` (the
  training split's DataInfo) is opened from config.data when not given."""
  return get_task(config.task)(config, info)
