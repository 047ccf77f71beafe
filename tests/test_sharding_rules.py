"""sharding's parameter rules on a mesh described by its axis sizes (no
devices needed): the FSDP fallback and the stacked layers of nn.scan."""
from jax.sharding import AbstractMesh, PartitionSpec as P

from mmtx import sharding


def _spec(names, shape, fsdp=8, tensor=1):
  mesh = AbstractMesh((1, fsdp, tensor), sharding.MESH_AXES)
  return sharding._spec_for(names, shape, mesh, sharding.RULES)


def test_fsdp_fallback_never_shards_the_scanned_layers_axis():
  # 'embed' 12 is not divisible by 8: the fallback takes the largest dim 8
  # divides, which is not the stacked 'layers' dim (each scan iteration
  # reads one layer, which would then live on one device).
  assert _spec(("layers", "embed"), (8, 12)) == P(None, None)
  assert _spec(("layers", "embed", "mlp"), (8, 12, 16)) == P(None, None,
                                                            "fsdp")
  # Divisible 'embed': the rule itself applies; unnamed params fall back.
  assert _spec(("layers", "embed"), (8, 16)) == P(None, "fsdp")
  assert _spec((None, None), (8, 12)) == P("fsdp", None)
  # 'mlp' on tensor first, then fsdp on the largest remaining dim.
  assert _spec(("layers", "mlp"), (16, 32), tensor=4) == P(None, "tensor")
