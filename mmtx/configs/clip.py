"""CLIP / SigLIP pretraining: a small DualEncoder on Sort-of-CLEVR captions,
evaluated by image <-> text retrieval and zero-shot 'how many circles'.

  python -m mmtx.main --config=configs/clip.py
  python -m mmtx.main --config=configs/clip.py:loss=sigmoid     # SigLIP
  python -m mmtx.main --config=configs/clip.py:loss=sigmoid,width=64,steps=2000

Args: loss=softmax|sigmoid, width (both towers), steps.
"""
import ml_collections

from mmtx.configs import common


def get_config(arg: str = ""):
  args = common.parse_args(arg, "configs/clip.py", steps=6000, width=128,
                           loss="softmax")
  loss = args["loss"]
  if loss not in ("softmax", "sigmoid"):
    raise ValueError(f"configs/clip.py: loss must be 'softmax' or 'sigmoid', "
                     f"got {loss!r}.")
  c = common.base(task="contrastive", total_steps=args["steps"],
                  batch_size=128, log_every=50, eval_every=2000,
                  checkpoint_every=1000, best_metric="t2i_r1")
  # Captions of Sort-of-CLEVR are at most 48 words: 50 tokens keeps them all.
  c.data = common.data("sort_of_clevr", eval_splits=("test",), max_len=50)
  width = args["width"]
  c.model = ml_collections.ConfigDict(dict(
      image=dict(patch_size=15, width=width, depth=2, mlp_dim=2 * width,
                 num_heads=4, posemb="learned", pool="gap", dtype="float32"),
      text=dict(vocab_size=-1, width=width, depth=2, mlp_dim=2 * width,
                num_heads=4, max_len=50, causal=True, pool="last",
                dtype="float32"),
      embed_dim=width, loss=loss))
  c.optimizer.learning_rate = 5e-4
  c.optimizer.weight_decay = 0.1
  c.optimizer.warmup_steps = 200
  return c
