"""Visual dialogue on Sort-of-CLEVR: a cross-attention FusionModel reads the
image and the dialogue history and classifies the answer to the last
question; evaluated by accuracy and MRR per turn.

  python -m mmtx.main --config=configs/dialogue.py
  python -m mmtx.main --config=configs/dialogue.py:history=last   # ablation

Args: history=full|last (last = only the current question, no history),
fusion (a FUSIONS name), width, steps, turns (dialogue turns per image and
training example, 0 = one example per turn), query=mean|tokens
(model.text_query).

The recipe is the default VQA job's (configs/default.py): its image tower,
three cross-attention layers, one query vector per history, and each
training example one image with its 8 turns (2 dialogues x 4 turns), so the
image is encoded once per 8 turns. Results: experiments/results/README.md,
"Captioning, retrieval, zero-shot, dialogue".
"""
import ml_collections

from mmtx.configs import common


def get_config(arg: str = ""):
  args = common.parse_args(arg, "configs/dialogue.py", steps=6000,
                           history="full", turns=8, width=64,
                           fusion="cross_attention", query="mean")
  c = common.base(task="dialogue", total_steps=args["steps"],
                  batch_size=16, log_every=50, eval_every=2000,
                  checkpoint_every=1000, best_metric="accuracy")
  # 4 turns of question + answer fit in 64 tokens; older turns are cut first.
  c.data = common.data("sort_of_clevr", eval_splits=("test",), max_len=64,
                       history=args["history"],
                       questions_per_image=args["turns"])
  width = args["width"]
  c.model = ml_collections.ConfigDict(dict(
      image=common.image_tower(width),
      text=dict(vocab_size=-1, width=width, depth=1, mlp_dim=2 * width,
                num_heads=4, max_len=64, causal=False, dtype="float32"),
      fusion=common.fusion(args["fusion"], "text", dim=width, num_heads=4,
                           num_layers=3, mlp_dim=2 * width),
      heads=("vqa",), num_answers=-1, head_hidden=256, head_dropout=0.0,
      zero_image=False, text_query=args["query"]))
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 200
  return c
