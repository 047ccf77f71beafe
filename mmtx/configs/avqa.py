"""Audio-visual QA on the built-in AV-Scenes clips: ViViT video tokens, AST
audio tokens and the question's tokens into one fusion strategy.

  python -m mmtx.main --config=configs/avqa.py
  python -m mmtx.main --config=configs/avqa.py:fusion=bottleneck
  python -m mmtx.main --config=configs/avqa.py:zero=video+audio   # floor

Args: fusion (a FUSIONS name), steps, width, questions (per clip and
training example), zero ('' or 'video', 'audio', 'video+audio': those
inputs replaced by zeros, the floors at an equal parameter count).
"""
import ml_collections

from mmtx.configs import common


def get_config(arg: str = ""):
  args = common.parse_args(arg, "configs/avqa.py", steps=3000, width=64,
                           fusion="cross_attention", questions=4, zero="")
  zero = tuple(z for z in args["zero"].split("+") if z)
  c = common.base(task="avqa", total_steps=args["steps"], batch_size=32,
                  log_every=100, eval_every=args["steps"],
                  checkpoint_every=1000)
  # Questions are at most 12 words (14 tokens with bos / eos).
  c.data = common.data("av_scenes", eval_splits=("validation", "test"),
                       max_len=14, eval_batch_size=100,
                       questions_per_image=args["questions"])
  w = args["width"]
  fusion = common.fusion(args["fusion"], "text", dim=w, num_heads=4,
                         num_layers=2, mlp_dim=2 * w)
  c.model = ml_collections.ConfigDict(dict(
      **common.av_towers(w),
      text=dict(vocab_size=-1, width=w, depth=1, mlp_dim=2 * w, num_heads=4,
                max_len=14),
      fusion=fusion, num_answers=-1, head_hidden=128, zero=zero))
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 200
  return c
