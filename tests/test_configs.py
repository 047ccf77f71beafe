"""Every shipped config builds its model, with every fusion strategy the
config takes as its `fusion` arg (and the fusion configs the experiment
scripts make): the task's model traced on a batch of the dataset's shapes
(jax.eval_shape, no data read and nothing compiled)."""
import importlib
import os
import pkgutil
import sys
import types

import jax
import pytest

from mmtx import configs, tasks
from mmtx.data import WordTokenizer, av_scenes, easy_vqa, sort_of_clevr
from mmtx.fusion import FUSIONS

_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "experiments")
CONFIGS = sorted(m.name for m in pkgutil.iter_modules(configs.__path__)
                 if m.name != "common")
# The datasets' shapes (what a task reads from the training split's info).
IMAGE_SHAPES = {
    "sort_of_clevr": (sort_of_clevr.IMAGE_SIZE,) * 2 + (3,),
    "easy_vqa": (easy_vqa.IMAGE_SIZE,) * 2 + (3,),
    "av_scenes": (av_scenes.FRAMES, av_scenes.SIZE, av_scenes.SIZE, 3),
}


def _takes_fusion(name):
  """Whether configs/NAME.py has a `fusion` arg."""
  get_config = importlib.import_module(f"mmtx.configs.{name}").get_config
  try:
    get_config("fusion=concat")
  except ValueError as e:
    assert "unknown arg 'fusion'" in str(e)
    return False
  return True


CASES = [(c, f) for c in CONFIGS
         for f in (sorted(FUSIONS) if _takes_fusion(c) else [None])]


def trace_model(cfg):
  """The params of config `cfg`'s task model (shapes only), traced at batch
  size 2 on zero inputs of the dataset's shapes."""
  info = types.SimpleNamespace(
      tokenizer=WordTokenizer([f"w{i}" for i in range(40)]),
      answers=("a", "b", "c", "d", "e"),
      image_shape=IMAGE_SHAPES[cfg.data.name.split("/")[0]],
      metadata={"labels": ("x", "y", "z"),
                "audio_samples": av_scenes.FRAMES * av_scenes.SAMPLES_PER_FRAME})
  with cfg.unlocked():
    cfg.batch_size = 2
  task = tasks.get_task(cfg.task)(cfg, info)
  return jax.eval_shape(task.init_variables, jax.random.key(0),
                        task.init_batch())["params"]


@pytest.mark.parametrize("name,fusion", CASES)
def test_every_config_builds_with_every_fusion_it_takes(name, fusion):
  get_config = importlib.import_module(f"mmtx.configs.{name}").get_config
  cfg = get_config(f"fusion={fusion}" if fusion else "")
  params = trace_model(cfg)
  if fusion:  # the strategy asked for is the one built
    assert any(k.startswith(FUSIONS[fusion].__name__) for k in params), \
        sorted(params)


def test_the_experiment_scripts_fusion_configs_build():
  """The rows of experiments/sort_of_clevr.py (fusion fields set by
  override), fusion_ablation.py and av_ablation.py (--quick sizes)."""
  sys.path.insert(0, _EXPERIMENTS)
  import av_ablation
  import fusion_ablation
  import sort_of_clevr as soc
  args = types.SimpleNamespace(steps=2, quick=True, eval_every=0,
                               cpu_devices=0)
  for overrides in soc.MODELS.values():
    trace_model(soc.config_for(overrides[1], args, 0))
  for fusion in sorted(FUSIONS) + [fusion_ablation.FLOOR]:
    trace_model(fusion_ablation.config_for(fusion, 0, args))
  for name in av_ablation.FUSIONS + tuple(av_ablation.FLOORS):
    trace_model(av_ablation.config_for(name, 0, args))
