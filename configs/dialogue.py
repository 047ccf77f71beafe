"""Visual dialogue on Sort-of-CLEVR: a cross-attention FusionModel reads the
image and the dialogue history and classifies the answer to the last
question; evaluated by accuracy and MRR per turn.

  python -m mmtx.main --config=configs/dialogue.py
  python -m mmtx.main --config=configs/dialogue.py:history=last   # ablation

Args: history=full|last (last = only the current question, no history),
fusion (a FUSIONS name that keeps the text tokens), width, steps.
"""
import ml_collections

from configs import common


def get_config(arg: str = ""):
  args = dict(a.split("=", 1) for a in arg.split(",") if a)
  c = common.base(task="dialogue", total_steps=int(args.get("steps", 6000)),
                  batch_size=64, log_every=50, eval_every=2000,
                  checkpoint_every=1000, best_metric="accuracy")
  # 4 turns of question + answer fit in 64 tokens; older turns are cut first.
  c.data = common.data("sort_of_clevr", eval_splits=("test",), max_len=64,
                       history=args.get("history", "full"))
  width = int(args.get("width", 128))
  c.model = ml_collections.ConfigDict(dict(
      image=dict(patch_size=15, width=width, depth=2, mlp_dim=2 * width,
                 num_heads=4, posemb="learned", dtype="float32"),
      text=dict(vocab_size=-1, width=width, depth=2, mlp_dim=2 * width,
                num_heads=4, max_len=64, causal=False, dtype="float32"),
      fusion=dict(name=args.get("fusion", "cross_attention"), target="text",
                  dim=width, num_heads=4, num_layers=2, mlp_dim=2 * width),
      heads=("vqa",), num_answers=-1, head_hidden=256, head_dropout=0.0,
      zero_image=False))
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 200
  return c
