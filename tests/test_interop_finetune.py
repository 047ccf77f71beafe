"""Fine-tuning recipes that keep what imported weights know (issue 28
item 5): WiSE-FT interpolation against hand-computed numbers, the LiT freeze
rules against a DualEncoder's parameter paths, and the labelled-dataset
zero-shot evaluator's prompts, labels, class names (the dataset's own
by default) and errors."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmtx import optimizers
from mmtx.configs import clip as clip_config
from mmtx.interop import mapping, wise_ft
from mmtx.models import DualEncoder
from mmtx.tasks import contrastive


def test_wise_ft_interpolates_leafwise():
  zs = {"a": jnp.array([0.0, 2.0, -4.0]), "b": {"c": jnp.array(1.0)},
        "h": jnp.array([1.0, 3.0], jnp.bfloat16)}
  ft = {"a": jnp.array([4.0, 2.0, 0.0]), "b": {"c": jnp.array(-1.0)},
        "h": jnp.array([3.0, 7.0], jnp.bfloat16)}
  mid = wise_ft.interpolate(zs, ft, 0.25)
  np.testing.assert_array_equal(mid["a"], [1.0, 2.0, -3.0])
  assert float(mid["b"]["c"]) == 0.5
  assert mid["h"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(mid["h"], np.float32), [1.5, 4.0])
  for alpha, want in ((0.0, zs), (1.0, ft)):
    got = wise_ft.interpolate(zs, ft, alpha)
    for g, w in zip(jax.tree_util.tree_leaves(got),
                    jax.tree_util.tree_leaves(want)):
      assert np.asarray(g).tobytes() == np.asarray(w).tobytes()


def test_wise_ft_refuses_other_models_and_alphas():
  zs = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
  with pytest.raises(ValueError, match=r"path or shape at \[\"\['a'\]\"\]:"):
    wise_ft.interpolate(zs, {"a": jnp.zeros(4), "b": jnp.zeros(2)}, 0.5)
  with pytest.raises(ValueError,
                     match=r"shape at \[\"\['b'\]\", \"\['c'\]\"\]"):
    wise_ft.interpolate(zs, {"a": jnp.zeros(3), "c": jnp.zeros(2)}, 0.5)
  with pytest.raises(ValueError, match="alpha must be in"):
    wise_ft.interpolate(zs, zs, 1.5)


def test_lit_freezes_exactly_the_image_tower_and_its_projection():
  config = clip_config.get_config("lit=1,width=32")
  model_cfg = config.model.to_dict()
  model_cfg["text"]["vocab_size"] = 50
  shapes = mapping.param_shapes(DualEncoder(model_cfg),
                                np.zeros((1, 75, 75, 3), np.float32),
                                np.ones((1, 50), np.int32))
  tx, _ = optimizers.make_optimizer(config.optimizer, 10)
  params = jax.tree_util.tree_map(
      lambda s: jnp.ones(s), _unflatten(shapes),
      is_leaf=lambda x: isinstance(x, tuple))
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  state = tx.init(params)
  for _ in range(2):  # the schedule's first step has learning rate 0
    updates, state = tx.update(grads, state, params)
  flat = {optimizers.path_str(p): np.asarray(u) for p, u in
          jax.tree_util.tree_flatten_with_path(updates)[0]}
  frozen = {k for k, u in flat.items() if not u.any()}
  want = {k for k in flat if k.split("/")[0] in ("img", "img_head")}
  assert len(want) > 10 and frozen == want
  assert clip_config.get_config("width=32").optimizer.freeze == ()


def _unflatten(shapes):
  out = {}
  for path, shape in shapes.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = shape
  return out


def test_zero_shot_prompts_and_labels_from_the_config():
  assert contrastive.class_prompts(("cat", "dog"), ("a {}.", "my {}!")) == [
      ["a cat.", "my cat!"], ["a dog.", "my dog!"]]
  record = {"label": np.int64(3),
            "objects": {"shape": np.array([1, 0, 0], np.int32)}}
  assert contrastive.record_field(record, "label") == 3
  assert contrastive.record_field(record, "objects.shape.0") == 1
  assert contrastive.record_field(record, "objects.shape.2") == 0
  with pytest.raises(ValueError, match=r"no 'colour' \(they have \['shape'\]"):
    contrastive.record_field(record, "objects.colour.0")
  with pytest.raises(ValueError, match="every template hold"):
    contrastive.class_prompts(("cat",), ("a photo",))
  with pytest.raises(ValueError, match="classes must name"):
    contrastive.class_prompts((), ("a {}.",))


def test_zero_shot_classes_default_to_the_dataset_labels():
  spec = ml_collections.ConfigDict(dict(label="label.0", classes=(),
                                        templates=("a {}.",)))
  meta = {"labels": ["bird", "cat", "dog"]}
  assert contrastive.class_names(spec, meta) == ("bird", "cat", "dog")
  spec.classes = ("x", "y")
  assert contrastive.class_names(spec, meta) == ("x", "y")
  spec.classes = ()
  with pytest.raises(ValueError, match="names no classes for it"):
    contrastive.class_names(spec, {})
  spec.label = "objects.shape.0"  # not the field the labels name
  with pytest.raises(ValueError, match="pass --config.zero_shot.classes"):
    contrastive.class_names(spec, meta)
