"""configs/clip.py and configs/caption.py with preset= and init=: the
model it builds has the source's parameter count, an open_clip checkpoint
file imports as open_clip's own model does, and arguments that cannot go
together are errors."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from mmtx.configs import caption as caption_config  # noqa: E402
from mmtx.configs import clip as clip_config  # noqa: E402
from mmtx.interop import hf_clip, open_clip_coca, weights  # noqa: E402
from mmtx.interop import open_clip as oc_interop  # noqa: E402


@pytest.mark.parametrize("preset", ["clip-B/32", "siglip-B/16-224"])
def test_preset_config_builds_the_published_model(preset):
  config = clip_config.get_config(f"preset={preset}")
  assert config.optimizer.freeze == ()
  with torch.device("meta"):
    ref = open_clip.create_model(weights.OPEN_CLIP_NAMES[preset],
                                 device="meta")
  shapes = hf_clip.dual_encoder_shapes(config.model.to_dict(),
                                       config.data.image_size)
  text = ref.text if hasattr(ref, "text") else ref  # CustomTextCLIP / CLIP
  assert config.data.max_len == text.positional_embedding.shape[0]
  assert sum(int(np.prod(s)) for s in shapes.values()) == sum(
      p.numel() for p in ref.parameters())
  assert config.data.normalize == ("clip" if preset.startswith("clip")
                                   else "minus_one_one")


@pytest.mark.parametrize("preset", ["coca-B/32", "coca-L/14"])
def test_caption_preset_config_builds_the_published_coca(preset):
  config = caption_config.get_config(f"preset={preset}")
  with torch.device("meta"):
    ref = open_clip.create_model(weights.OPEN_CLIP_NAMES[preset],
                                 device="meta")
  shapes = open_clip_coca.captioner_shapes(config.model.to_dict(),
                                           config.data.image_size)
  assert sum(int(np.prod(s)) for s in shapes.values()) == sum(
      p.numel() for p in ref.parameters())
  assert (config.data.tokenizer, config.data.normalize, config.data.max_len,
          config.data.image_size) == ("clip", "clip", 76, 224)
  assert config.init_from.preset == preset and not config.init_from.weights


def test_config_args_that_do_not_go_together():
  with pytest.raises(ValueError, match=r"\['loss'\] cannot be combined"):
    clip_config.get_config("preset=clip-B/32,loss=sigmoid")
  with pytest.raises(ValueError, match="is not one of"):
    clip_config.get_config("preset=clip-B/33")
  with pytest.raises(ValueError, match="needs preset= naming"):
    weights.load(__file__)


@pytest.mark.slow
def test_open_clip_file_imports_as_the_model_does(tmp_path):
  """A ViT-B-32 state dict saved as open_clip's .pt: init=FILE with
  preset=clip-B/32 gives from_open_clip's params bit for bit."""
  torch.manual_seed(0)
  model = open_clip.create_model("ViT-B-32").eval()
  path = tmp_path / "b32.pt"
  torch.save(model.state_dict(), path)
  _, want = oc_interop.from_open_clip(model)
  config = clip_config.get_config(f"preset=clip-B/32,init={path}")
  assert config.init_from.weights == str(path)
  assert config.data.image_size == 224 and config.data.tokenizer == "clip"
  _, got = weights.load(str(path), "clip-B/32")
  weights.load.cache_clear()
  import jax
  leaves = jax.tree_util.tree_leaves_with_path
  assert [p for p, _ in leaves(got)] == [p for p, _ in leaves(want)]
  for (path_, a), (_, b) in zip(leaves(got), leaves(want)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path_


def test_a_config_with_init_leaves_jax_unstarted(tmp_path):
  """Loading configs/clip.py:init=DIR works out the model's shapes without
  starting JAX's backends, so mmtx.main can still apply mesh.cpu_devices
  and its CPU dispatch setting after reading the config."""
  import os
  import subprocess
  import sys
  import transformers
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2,
                       max_position_embeddings=77),
      vision_config=dict(hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2,
                         image_size=32, patch_size=8),
      projection_dim=16)
  transformers.CLIPModel(cfg).save_pretrained(tmp_path / "hf")
  code = ("import sys; from mmtx.configs import clip; "
          "clip.get_config('init=' + sys.argv[1]); "
          "from jax._src import xla_bridge; print(len(xla_bridge._backends))")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf")],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=repo))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "0"
