"""easy-VQA (Zhou 2020): a cross-attention VQA model (4-convolution stem,
1 image self-attention layer, 2 fusion layers) on 64x64 images with one
shape each; 4,000 training images with ~10 questions each.

  python -m mmtx.main --config=configs/easy_vqa.py --workdir=runs/easy_vqa
  python -m mmtx.main --config=configs/easy_vqa.py:zero_image=1   # ablation

Results: experiments/results/README.md, "easy-VQA".

Args: steps, fusion, lr, image_depth, fusion_layers, zero_image (1 = the
image is replaced by zeros: the question-only floor).
"""
from mmtx.configs import common
from mmtx.configs import default


def get_config(arg: str = ""):
  # 64x64 images: 4 stem convolutions (a 4x4 grid), one image
  # self-attention layer, two fusion layers, sin-cos temperature 10^4.
  args = common.parse_args(arg, "configs/easy_vqa.py", steps=12000,
                           fusion="cross_attention", lr=1e-3, image_depth=1,
                           fusion_layers=2, zero_image=0)
  c = default.get_config(",".join(
      f"{k}={args[k]}" for k in ("steps", "fusion", "lr", "image_depth",
                                 "fusion_layers")))
  c.model.image.stem_channels = (32, 32, 32, 32)
  c.model.image.posemb_temperature = 10_000.0
  c.data.name = "easy_vqa"
  c.data.max_len = 16
  c.data.questions_per_image = 8
  c.model.text.max_len = 16
  c.eval_every = c.total_steps
  c.checkpoint_every = c.total_steps
  c.model.zero_image = bool(args["zero_image"])
  return c
