"""Tubelet tokens against a float64 reference, image weights carried over
by inflation, ViViT's two encoders, and clip sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmtx import layers
from mmtx.data.video import sample_frames
from mmtx.layers import video
from mmtx.models.video import VideoTransformer


def _unbox(tree):
  """Params with flax's partitioning boxes removed, as numpy arrays."""
  return jax.tree.map(
      lambda a: np.asarray(a.unbox() if hasattr(a, "unbox") else a), tree,
      is_leaf=lambda a: hasattr(a, "unbox"))


def _tubelets_np(v, kernel, bias, p):
  """float64 reference: [B, T, H, W, C] -> [B, gt*gh*gw, D]."""
  b, t, h, w, c = v.shape
  pt, ph, pw = p
  out = []
  for i in range(t // pt):
    for j in range(h // ph):
      for k in range(w // pw):
        cube = v[:, i * pt:(i + 1) * pt, j * ph:(j + 1) * ph,
                 k * pw:(k + 1) * pw]
        out.append(np.einsum("bthwc,thwcd->bd", cube, kernel) + bias)
  return np.stack(out, 1)


def test_tubelets_equal_a_float64_patch_extraction():
  v = np.random.default_rng(0).standard_normal((2, 4, 8, 12, 3))
  m = video.TubeletEmbedding(5, (2, 4, 4))
  params = _unbox(m.init(jax.random.key(0), jnp.asarray(v, jnp.float32)))
  tokens, grid = m.apply(params, jnp.asarray(v, jnp.float32))
  assert grid == (2, 2, 3)
  ref = _tubelets_np(v, params["params"]["conv"]["kernel"].astype(np.float64),
                     params["params"]["conv"]["bias"], (2, 4, 4))
  np.testing.assert_allclose(np.asarray(tokens), ref, atol=1e-4)


@pytest.mark.parametrize("method", ["central", "average"])
def test_inflated_image_kernel_gives_a_still_video_the_image_tokens(method):
  """A 2-D PatchEmbedding's weights, inflated, give a video of one image
  repeated the image's own patch tokens; 'central' reads only the middle
  frame of each tubelet of a moving video."""
  rng = np.random.default_rng(1)
  image = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  patch = layers.PatchEmbedding(4, 6)
  p2 = _unbox(patch.init(jax.random.key(0), image))
  image_tokens = np.asarray(patch.apply(p2, image))
  k3 = video.inflate_patch_kernel(p2["params"]["conv"]["kernel"], 3, method)
  p3 = {"params": {"conv": {"kernel": k3,
                            "bias": p2["params"]["conv"]["bias"]}}}
  tube = video.TubeletEmbedding(6, (3, 4, 4))
  still = np.repeat(image[:, None], 3, axis=1)
  tokens, _ = tube.apply(p3, still)
  np.testing.assert_allclose(np.asarray(tokens), image_tokens, atol=1e-5)
  if method == "central":
    moving = rng.standard_normal((2, 3, 8, 8, 3)).astype(np.float32)
    tokens, _ = tube.apply(p3, moving)
    np.testing.assert_allclose(np.asarray(tokens),
                               np.asarray(patch.apply(p2, moving[:, 1])),
                               atol=1e-5)


def test_an_image_checkpoint_starts_a_video_tower_by_inflation(tmp_path,
                                                               capsys):
  """init_from a checkpoint whose image tower has a 2-D patch kernel: the
  video tower's tubelet kernel is that kernel inflated (its bias copied), so
  a still video gives the image's tokens; params it lacks stay fresh and
  are named; inflate='' leaves the kernel fresh too."""
  import ml_collections
  from mmtx import checkpoint, train
  rng = np.random.default_rng(4)
  image = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  patch = layers.PatchEmbedding(4, 6)
  src = _unbox(patch.init(jax.random.key(0), image))["params"]
  ck = checkpoint.Checkpointer(str(tmp_path / "img" / "checkpoints"),
                               async_save=False)
  ck.save(1, {"params": {"image": {"embedding": src}}}, data_state={})
  ck.close()
  tube = video.TubeletEmbedding(6, (3, 4, 4))
  still = np.repeat(image[:, None], 3, axis=1)
  fresh = jax.tree.map(jnp.asarray, {"video": {"embedding": _unbox(
      tube.init(jax.random.key(1), still))["params"]}, "head": {
          "kernel": np.ones((6, 2), np.float32)}})
  for inflate in ("central", "average", ""):
    config = ml_collections.ConfigDict(dict(init_from=dict(
        workdir=str(tmp_path / "img"), rules=(("^video/", "image/"),),
        weights="", inflate=inflate)))
    got, loaded, missing = train.load_transfer_params(config, fresh)
    kernel = got["video"]["embedding"]["conv"]["kernel"]
    if not inflate:
      assert loaded == 1 and "video/embedding/conv/kernel" in missing
      np.testing.assert_array_equal(
          kernel, fresh["video"]["embedding"]["conv"]["kernel"])
      continue
    assert loaded == 2 and missing == ["head/kernel"]
    assert "inflated 1 2-D patch kernel(s)" in capsys.readouterr().out
    np.testing.assert_array_equal(kernel, video.inflate_patch_kernel(
        src["conv"]["kernel"], 3, inflate))
    tokens, _ = tube.apply({"params": got["video"]["embedding"]}, still)
    np.testing.assert_allclose(np.asarray(tokens), np.asarray(
        patch.apply({"params": src}, image)), atol=1e-5)


def test_factorised_encoder_is_spatial_per_frame_then_temporal():
  """The factorised model equals its parts applied by hand: the spatial
  encoder on each frame index's tokens alone, the mean per frame, then the
  temporal encoder over frames (a time/space mix-up in the reshapes fails)."""
  v = jnp.asarray(np.random.default_rng(2).standard_normal((2, 4, 8, 8, 3)),
                  jnp.float32)
  model = VideoTransformer(width=16, depth=1, mlp_dim=32, num_heads=2,
                           patch_size=(2, 4, 4), attention="factorised",
                           temporal_depth=1)
  params = _unbox(model.init(jax.random.key(0), v))["params"]
  out, extras = model.apply({"params": params}, v)
  assert out.shape == (2, 16) and extras["grid"] == (2, 2, 2)

  tokens, _ = video.TubeletEmbedding(16, (2, 4, 4)).apply(
      {"params": params["embedding"]}, v)
  tokens = np.asarray(tokens).reshape(2, 2, 4, 16)      # [b, gt, gh*gw, d]
  enc = layers.Encoder(num_layers=1, num_heads=2, mlp_dim=32)
  per_frame = []
  for t in range(2):
    x = tokens[:, t] + params["posemb_spatial"]["pos_embedding"][:4]
    y = enc.apply({"params": params["spatial_encoder"]}, x)
    per_frame.append(np.asarray(y).mean(axis=1))
  x = np.stack(per_frame, 1) + params["posemb_temporal"]["pos_embedding"][:2]
  ref = np.asarray(enc.apply({"params": params["temporal_encoder"]}, x))
  np.testing.assert_allclose(np.asarray(out), ref.mean(axis=1), atol=1e-5)


@pytest.mark.parametrize("attention", [
    "joint", pytest.param("factorised", marks=pytest.mark.slow)])
def test_vivit_learns_which_way_a_square_moves(attention):
  """A square moves 2 px per frame left or right from a random start: one
  frame says nothing (chance 50 %), the clip says it all."""
  rng = np.random.default_rng(0)
  n, t, s = 384, 4, 16
  labels = rng.integers(0, 2, n)
  clips = np.zeros((n, t, s, s, 1), np.float32)
  for i in range(n):
    x0, y0 = rng.integers(3, 9), rng.integers(0, s - 4)
    step = 2 if labels[i] else -2
    for f in range(t):
      x = x0 + step * f
      clips[i, f, y0:y0 + 4, x:x + 4] = 1.0
  model = VideoTransformer(width=32, depth=1, mlp_dim=64, num_heads=2,
                           patch_size=(2, 4, 4), attention=attention)
  params = model.init(jax.random.key(0), clips[:2])
  opt = optax.adam(3e-3)
  p = (params, jnp.zeros((32, 2)))
  state = opt.init(p)

  def logits_fn(p, x):
    return model.apply(p[0], x)[0] @ p[1]

  @jax.jit
  def step(p, state, x, y):
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(p, x), y).mean())(p)
    u, state = opt.update(g, state, p)
    return optax.apply_updates(p, u), state

  for i in range(100):
    sl = slice((i % 10) * 32, (i % 10) * 32 + 32)
    p, state = step(p, state, clips[sl], labels[sl])
  pred = np.asarray(jax.jit(logits_fn)(p, clips[320:])).argmax(-1)
  assert (pred == labels[320:]).mean() >= 0.9


def test_clip_sampling_and_bad_input():
  # 10 frames, 4 every 2: span 7, room 3 -> centred start 1.
  np.testing.assert_array_equal(sample_frames(10, 4, 2), [1, 3, 5, 7])
  starts = {sample_frames(10, 4, 2, rng=np.random.default_rng(i))[0]
            for i in range(200)}
  assert starts == {0, 1, 2, 3}
  np.testing.assert_array_equal(sample_frames(3, 4, 1), [0, 1, 2, 2])
  with pytest.raises(ValueError, match="must be >= 1"):
    sample_frames(10, 0, 1)
  with pytest.raises(ValueError, match="not divisible by the tubelet 2x4x4"):
    video.TubeletEmbedding(4, (2, 4, 4)).init(
        jax.random.key(0), jnp.zeros((1, 3, 8, 8, 3)))
  with pytest.raises(ValueError, match="method must be 'central' or"):
    video.inflate_patch_kernel(jnp.zeros((4, 4, 3, 2)), 2, "mean")
