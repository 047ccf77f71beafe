"""VQA fine-tuning of a pretrained FusionModel (configs/pretrain.py), with a
label fraction for label-efficiency curves.

  python -m mmtx.main --config=configs/finetune_vqa.py:pretrained=runs/pretrain
  python -m mmtx.main --config=configs/finetune_vqa.py:pretrained=runs/pretrain,labels=0.01
  python -m mmtx.main --config=configs/finetune_vqa.py:labels=0.1   # from scratch

Args: pretrained=WORKDIR of a pretraining run ('' = train from scratch),
labels=fraction of the training images (and so of their questions) used,
e.g. 0.01|0.1|1.0; width and tower (must match the pretraining run), steps.

The model is configs/pretrain.py's with the 'vqa' head instead of the
pretraining heads: the towers and the fusion load from the checkpoint under
the same names (no path rules needed); vqa_hidden / vqa_out start fresh, and
the run prints how many params were loaded and which were not.
"""
from mmtx.configs import common
from mmtx.configs import pretrain


def get_config(arg: str = ""):
  args = common.parse_args(arg, "configs/finetune_vqa.py", steps=4000,
                           labels=1.0, width=128, tower="vit", pretrained="")
  c = common.base(task="vqa", total_steps=args["steps"],
                  batch_size=64, log_every=50, eval_every=1000,
                  checkpoint_every=1000)
  c.data = common.data("sort_of_clevr", eval_splits=("test",), max_len=16,
                       train_fraction=args["labels"])
  c.model = pretrain.model(args["width"], ("vqa",),
                           args["tower"])
  c.init_from.workdir = args["pretrained"]
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 200
  return c
