"""open_clip ViT CLIP models (`open_clip.create_model(NAME)`) ->
`mmtx.models.DualEncoder`; CoCa models -> `mmtx.models.Captioner` (in
`mmtx.interop.open_clip_coca`).

    config, params = from_open_clip(model)
    config, params = load('ViT-B-32', pretrained='w.safetensors')  # or .pt

The towers map one to one (the class token has its own position,
`cls_posemb=True`); the packed q/k/v projection is split into mmtx's
query/key/value; texts are open_clip's token ids as
`mmtx.data.tokenizers.ClipBpeTokenizer` gives them (id 0 is '!', so the text
tower masks nothing unless the model uses a padding mask with pad id 0).
Both the `CLIP` and the `CustomTextCLIP` classes with open_clip's own
`VisionTransformer` / `TextTransformer` map, and so does a timm ViT with MAP
pooling (the SigLIP entries, e.g. 'ViT-B-16-SigLIP'); a ResNet or Hugging
Face tower, attentional pooling outside a CoCa, LayerScale or the custom
attention blocks raise a `ValueError` naming what has no mmtx equivalent.
"""
from __future__ import annotations

import math

import ml_collections

from mmtx.interop import hf_clip, mapping
from mmtx.interop.mapping import Rule

WHO = "open_clip.from_open_clip"


def block_rules(mmtx: str, src: str, depth: int) -> list[Rule]:
  """open_clip Transformer `src` (its resblocks) -> mmtx Encoder `mmtx`."""
  rules = []
  for i in range(depth):
    m, s = f"{mmtx}/layers_{i}", f"{src}.resblocks.{i}"
    for j, name in enumerate(("query", "key", "value")):
      rules += [Rule(f"{m}/attention/{name}/kernel", f"{s}.attn.in_proj_weight",
                     "heads_in", (j, 3)),
                Rule(f"{m}/attention/{name}/bias", f"{s}.attn.in_proj_bias",
                     "heads_bias", (j, 3))]
    rules += [Rule(f"{m}/attention/out/kernel", f"{s}.attn.out_proj.weight",
                   "heads_out"),
              Rule(f"{m}/attention/out/bias", f"{s}.attn.out_proj.bias")]
    rules += hf_clip.layer_norm_rules(f"{m}/ln_attention", f"{s}.ln_1")
    rules += hf_clip.layer_norm_rules(f"{m}/ln_mlp", f"{s}.ln_2")
    rules += hf_clip.linear_rules(f"{m}/mlp/wi", f"{s}.mlp.c_fc")
    rules += hf_clip.linear_rules(f"{m}/mlp/wo", f"{s}.mlp.c_proj")
  return rules


def _vision_rules(config) -> list[Rule]:
  """open_clip's own VisionTransformer."""
  img = config["image"]
  out = [Rule("img/embedding/conv/kernel", "visual.conv1.weight", "conv"),
         Rule("img/posemb/pos_embedding", "visual.positional_embedding"),
         Rule("img/cls", "visual.class_embedding", "cls")]
  if img["ln_pre"]:
    out += hf_clip.layer_norm_rules("img/ln_pre", "visual.ln_pre")
  out += block_rules("img/encoder", "visual.transformer", img["depth"])
  out += hf_clip.layer_norm_rules("img/encoder/ln_final", "visual.ln_post")
  if config["img_head"] != "none":
    out += [Rule("img_head/kernel", "visual.proj")]
  return out


def _timm_vision_rules(config) -> list[Rule]:
  """A timm VisionTransformer with MAP pooling (open_clip's SigLIP
  entries), wrapped in open_clip's TimmModel."""
  img, v = config["image"], "visual.trunk"
  out = [Rule("img/embedding/conv/kernel", f"{v}.patch_embed.proj.weight",
              "conv"),
         Rule("img/embedding/conv/bias", f"{v}.patch_embed.proj.bias"),
         Rule("img/posemb/pos_embedding", f"{v}.pos_embed", "lead1")]
  if img["ln_pre"]:
    out += hf_clip.layer_norm_rules("img/ln_pre", f"{v}.norm_pre")
  for i in range(img["depth"]):
    m, s = f"img/encoder/layers_{i}", f"{v}.blocks.{i}"
    for j, name in enumerate(("query", "key", "value")):
      out += [Rule(f"{m}/attention/{name}/kernel", f"{s}.attn.qkv.weight",
                   "heads_in", (j, 3)),
              Rule(f"{m}/attention/{name}/bias", f"{s}.attn.qkv.bias",
                   "heads_bias", (j, 3))]
    out += [Rule(f"{m}/attention/out/kernel", f"{s}.attn.proj.weight",
                 "heads_out"),
            Rule(f"{m}/attention/out/bias", f"{s}.attn.proj.bias")]
    out += hf_clip.layer_norm_rules(f"{m}/ln_attention", f"{s}.norm1")
    out += hf_clip.layer_norm_rules(f"{m}/ln_mlp", f"{s}.norm2")
    out += hf_clip.linear_rules(f"{m}/mlp/wi", f"{s}.mlp.fc1")
    out += hf_clip.linear_rules(f"{m}/mlp/wo", f"{s}.mlp.fc2")
  out += hf_clip.layer_norm_rules("img/encoder/ln_final", f"{v}.norm")
  m, s = "img/map_head", f"{v}.attn_pool"
  out += [Rule(f"{m}/probe", f"{s}.latent"),
          Rule(f"{m}/attention/query/kernel", f"{s}.q.weight", "heads_in"),
          Rule(f"{m}/attention/query/bias", f"{s}.q.bias", "heads_bias")]
  for j, name in enumerate(("key", "value")):
    out += [Rule(f"{m}/attention/{name}/kernel", f"{s}.kv.weight", "heads_in",
                 (j, 2)),
            Rule(f"{m}/attention/{name}/bias", f"{s}.kv.bias", "heads_bias",
                 (j, 2))]
  out += [Rule(f"{m}/attention/out/kernel", f"{s}.proj.weight", "heads_out"),
          Rule(f"{m}/attention/out/bias", f"{s}.proj.bias")]
  out += hf_clip.layer_norm_rules(f"{m}/ln", f"{s}.norm")
  out += hf_clip.linear_rules(f"{m}/mlp/wi", f"{s}.mlp.fc1")
  out += hf_clip.linear_rules(f"{m}/mlp/wo", f"{s}.mlp.fc2")
  if config["img_head"] == "linear":
    out += hf_clip.linear_rules("img_head", "visual.head.proj", bias=False)
  elif config["img_head"] == "linear_bias":
    out += hf_clip.linear_rules("img_head", "visual.head.proj")
  return out


def rules(config, text_prefix: str = "", scalar_shape: tuple = (),
          timm: bool = False):
  """The table for open_clip's state dict; `text_prefix` is 'text.' for
  CustomTextCLIP, '' for CLIP; `timm`: the image tower is a TimmModel."""
  config = hf_clip.resolved_config(config)
  txt, t = config["text"], text_prefix
  out = _timm_vision_rules(config) if timm else _vision_rules(config)
  out += [Rule("txt/embedding/embedding", f"{t}token_embedding.weight"),
          Rule("txt/posemb/pos_embedding", f"{t}positional_embedding")]
  out += block_rules("txt/encoder", f"{t}transformer", txt["depth"])
  out += hf_clip.layer_norm_rules("txt/encoder/ln_final", f"{t}ln_final")
  head = config["txt_head"]
  if head == "linear":
    out += [Rule("txt_head/kernel", f"{t}text_projection")]
  elif head == "linear_bias":
    out += hf_clip.linear_rules("txt_head", f"{t}text_projection")
  scalar = "scalar1" if scalar_shape == (1,) else "copy"
  out += [Rule("logit_scale", "logit_scale", scalar)]
  if config["loss"] == "sigmoid":
    out += [Rule("logit_bias", "logit_bias", scalar)]
  return out


def _unmappable(what: str):
  raise ValueError(f"{WHO}: {what} has no mmtx DualEncoder equivalent.")


def mlp_activation(act) -> str:
  """An open_clip MLP's activation module -> mmtx's activation name."""
  name = type(act).__name__
  if name == "QuickGELU":
    return "quick_gelu"
  if name == "GELUTanh":
    return "gelu_tanh"
  if name == "GELU":
    return {"none": "gelu", "tanh": "gelu_tanh"}[act.approximate]
  return _unmappable(f"the MLP activation {name}")


def check_blocks(transformer, where: str):
  """Refuses blocks with LayerScale or open_clip's custom attention."""
  for i, block in enumerate(transformer.resblocks):
    if type(block).__name__ != "ResidualAttentionBlock":
      _unmappable(f"{where}.resblocks.{i} ({type(block).__name__}: qk-norm "
                  f"/ scaled-cosine attention)")
    if type(block.ls_1).__name__ != "Identity":
      _unmappable(f"{where}.resblocks.{i}.ls_1 (LayerScale)")


def tower_common(transformer, where: str) -> dict:
  """The tower config fields an open_clip Transformer fixes."""
  check_blocks(transformer, where)
  block = transformer.resblocks[0]
  return {"width": transformer.width, "depth": transformer.layers,
          "mlp_dim": block.mlp.c_fc.out_features,
          "num_heads": block.attn.num_heads,
          "activation": mlp_activation(block.mlp.gelu)}


def _vision_config(visual) -> tuple[dict, tuple]:
  name = type(visual).__name__
  if name != "VisionTransformer":
    _unmappable(f"the image tower {name} (ResNet)")
  if visual.attn_pool is not None:
    _unmappable("attentional pooling in the image tower (CoCa: a Captioner)")
  if visual.pool_type != "tok":
    _unmappable(f"image pool_type={visual.pool_type!r} (only 'tok')")
  if visual.final_ln_after_pool:
    _unmappable("final_ln_after_pool=True")
  if visual.patch_size[0] != visual.patch_size[1]:
    _unmappable(f"a non-square patch {visual.patch_size}")
  ln_pre = type(visual.ln_pre).__name__ != "Identity"
  cfg = {"patch_size": visual.patch_size[0], "posemb": "learned",
         "pool": "cls", "cls_posemb": True, "patch_bias": False,
         "ln_pre": ln_pre,
         "layer_norm_eps": visual.ln_post.eps,
         **tower_common(visual.transformer, "visual.transformer")}
  return cfg, tuple(visual.image_size)


def _timm_vision_config(visual) -> tuple[dict, tuple, str]:
  """open_clip's TimmModel around a timm VisionTransformer with MAP pooling
  (the SigLIP entries): (image config, image size, img_head)."""
  trunk = visual.trunk
  if type(trunk).__name__ != "VisionTransformer":
    _unmappable(f"the timm image tower {type(trunk).__name__}")
  if trunk.cls_token is not None or getattr(trunk, "num_reg_tokens", 0):
    _unmappable("a timm ViT with class or register tokens")
  if trunk.global_pool != "map" or trunk.attn_pool.latent_len != 1:
    _unmappable(f"timm global_pool={trunk.global_pool!r} (only 'map' with "
                f"one latent)")
  for name in ("fc_norm", "head"):
    if type(getattr(trunk, name)).__name__ != "Identity":
      _unmappable(f"the timm ViT's {name}")
  for i, block in enumerate(trunk.blocks):
    if type(block).__name__ != "Block" or any(
        type(getattr(block, n)).__name__ != "Identity"
        for n in ("ls1", "ls2")) or any(
            type(getattr(block.attn, n)).__name__ != "Identity"
            for n in ("q_norm", "k_norm")):
      _unmappable(f"visual.trunk.blocks.{i} (LayerScale / qk-norm / "
                  f"{type(block).__name__})")
  if trunk.attn_pool.norm.eps != trunk.norm.eps:
    _unmappable("a MAP head LayerNorm eps that differs from the tower's")
  patch = trunk.patch_embed.patch_size
  if patch[0] != patch[1]:
    _unmappable(f"a non-square patch {patch}")
  block = trunk.blocks[0]
  cfg = {"patch_size": patch[0], "posemb": "learned", "pool": "map",
         "patch_bias": trunk.patch_embed.proj.bias is not None,
         "ln_pre": type(trunk.norm_pre).__name__ != "Identity",
         "layer_norm_eps": trunk.norm.eps, "width": trunk.embed_dim,
         "depth": len(trunk.blocks), "mlp_dim": block.mlp.fc1.out_features,
         "num_heads": block.attn.num_heads,
         "activation": mlp_activation(block.mlp.act)}
  if mlp_activation(trunk.attn_pool.mlp.act) != cfg["activation"]:
    _unmappable("a MAP head activation that differs from the tower's")
  if trunk.attn_pool.num_heads != cfg["num_heads"]:
    _unmappable("a MAP head with other heads than the tower's")
  layers = dict(visual.head.named_children())
  if not layers:
    head = "none"
  elif list(layers) == ["drop", "proj"]:
    head = "linear_bias" if layers["proj"].bias is not None else "linear"
  else:
    _unmappable(f"the TimmModel head {list(layers)}")
  return cfg, tuple(visual.image_size), head


def _text_config(text, causal: bool) -> tuple[dict, dict]:
  """text: the open_clip TextTransformer or the CLIP model itself."""
  pool = text.text_pool_type if hasattr(text, "text_pool_type") \
      else text.pool_type
  eos = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
  if getattr(text, "cls_emb", None) is not None:
    _unmappable("the text tower's appended class token (CoCa: a Captioner)")
  pad_mask = getattr(text, "use_pad_mask", False)
  if pad_mask and text.pad_id != 0:
    _unmappable(f"a text padding mask on pad_id={text.pad_id} (mmtx pads "
                f"with 0)")
  pools = {"argmax": {"pool": "argmax"}, "first": {"pool": "first"},
           "last": {"pool": "last"}, "eos": {"pool": "eos", "eos_id": eos}}
  if pool not in pools:
    _unmappable(f"text pool_type={pool!r}")
  cfg = {"vocab_size": text.vocab_size,
         "max_len": text.positional_embedding.shape[0], "causal": causal,
         "mask_padding": bool(pad_mask), **pools[pool],
         "layer_norm_eps": text.ln_final.eps,
         **tower_common(text.transformer, "transformer")}
  proj = text.text_projection
  if proj is None:
    head = "none"
  elif type(proj).__name__ == "Linear":
    head = "linear_bias" if proj.bias is not None else None
    if head is None:
      _unmappable("a text projection Linear without bias")
  else:
    head = "linear"
  return cfg, {"txt_head": head}


def from_open_clip(model) -> tuple[ml_collections.ConfigDict, dict]:
  """Converts an open_clip `CLIP` / `CustomTextCLIP` (ViT image tower) into
  (config, params) for `mmtx.models.DualEncoder`; with a `logit_bias` (the
  SigLIP entries) the loss is 'sigmoid'. A `CoCa` gives (config, params) for
  `mmtx.models.Captioner` (`mmtx.interop.open_clip_coca`)."""
  kind = type(model).__name__
  if kind == "CoCa":
    from mmtx.interop import open_clip_coca  # pylint: disable=g-import-not-at-top,line-too-long
    return open_clip_coca.from_coca(model)
  if kind not in ("CLIP", "CustomTextCLIP"):
    _unmappable(f"the model class {kind}")
  timm = type(model.visual).__name__ == "TimmModel"
  if timm:
    img, image_size, img_head = _timm_vision_config(model.visual)
  else:
    img, image_size = _vision_config(model.visual)
    img_head = "linear" if model.visual.proj is not None else "none"
  if kind == "CLIP":
    text, prefix = model, ""
    causal = model.attn_mask is not None
  else:
    text, prefix = model.text, "text."
    if type(text).__name__ != "TextTransformer":
      _unmappable(f"the text tower {type(text).__name__} (Hugging Face)")
    causal = text.attn_mask is not None
  txt, heads = _text_config(text, causal)
  scale = math.exp(float(model.logit_scale.detach().reshape(-1)[0]))
  sigmoid = getattr(model, "logit_bias", None) is not None
  config = ml_collections.ConfigDict({
      "loss": "sigmoid" if sigmoid else "softmax",
      "embed_dim": img["width"] if img_head == "none" else (
          model.visual.output_dim if not timm
          else model.visual.head.proj.out_features),
      "logit_scale_init": scale,
      "max_logit_scale": max(100.0, scale),
      "img_head": img_head,
      **heads,
      "image": img, "text": txt,
  })
  if sigmoid:
    config.logit_bias_init = float(model.logit_bias.detach().reshape(-1)[0])
  state = mapping.torch_state(model, skip=("attn_mask", "text.attn_mask"))
  shapes = hf_clip.dual_encoder_shapes(config, image_size)
  table = rules(config, prefix, tuple(model.logit_scale.shape), timm)
  return config, mapping.to_params(state, table, shapes, WHO)


def load(model_name: str, pretrained: str | None = None,
         **kwargs) -> tuple[ml_collections.ConfigDict, dict]:
  """`from_open_clip(open_clip.create_model(model_name, pretrained, ...))`:
  `pretrained` is a local `.pt` / `.safetensors` file, or a released tag
  when the network allows it; kwargs go to `create_model`."""
  import open_clip  # pylint: disable=g-import-not-at-top
  model = open_clip.create_model(model_name, pretrained=pretrained,
                                 require_pretrained=pretrained is not None,
                                 **kwargs)
  return from_open_clip(model.eval())
