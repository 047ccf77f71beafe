"""Models: towers, the CLIP/SigLIP dual encoder, the fusion encoder."""
from mmtx.models.dual_encoder import DualEncoder
from mmtx.models.towers import SIZES, TextTransformer, ViT, decode_variant

__all__ = ["DualEncoder", "SIZES", "TextTransformer", "ViT", "decode_variant",
           "FusionModel", "Captioner"]


def __getattr__(name):
  # FusionModel pulls in the fusion library; import it on first use.
  if name == "FusionModel":
    from mmtx.models.fusion_model import FusionModel
    return FusionModel
  if name == "Captioner":
    from mmtx.models.captioner import Captioner
    return Captioner
  raise AttributeError(name)
