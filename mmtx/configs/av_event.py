"""Audio-visual event classification on the built-in AV-Scenes clips (which
'<pitch> sound moving <direction>' events happen; multi-label, mAP): ViViT
video tokens and AST audio tokens into one fusion strategy, MBT's bottleneck
by default.

  python -m mmtx.main --config=configs/av_event.py
  python -m mmtx.main --config=configs/av_event.py:fusion=concat
  python -m mmtx.main --config=configs/av_event.py:zero=video   # audio only

Args: fusion (a FUSIONS name; a directional one attends from the audio),
steps, width, zero ('' or 'video', 'audio': those inputs replaced by zeros,
the single-modality floors at an equal parameter count). An ingested clip
dataset with labels (`python -m mmtx.data ingest av_csv ...`) trains with
--config.data.name=NAME and its own sizes (frames, mel settings).
"""
import ml_collections

from mmtx.configs import common


def get_config(arg: str = ""):
  args = common.parse_args(arg, "configs/av_event.py", steps=2000, width=64,
                           fusion="bottleneck", zero="")
  zero = tuple(z for z in args["zero"].split("+") if z)
  c = common.base(task="av_event", total_steps=args["steps"], batch_size=32,
                  log_every=100, eval_every=args["steps"],
                  checkpoint_every=1000, best_metric="mAP")
  c.data = common.data("av_scenes", eval_splits=("validation", "test"),
                       eval_batch_size=100)
  w = args["width"]
  fusion = common.fusion(args["fusion"], "audio", dim=w, num_heads=4,
                         num_layers=2, mlp_dim=2 * w)
  c.model = ml_collections.ConfigDict(dict(
      **common.av_towers(w),
      fusion=fusion, num_answers=-1, head_hidden=128, zero=zero))
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 100
  return c
