"""Hugging Face `CLIPModel` (PyTorch) <-> `mmtx.models.DualEncoder`.

    config, params = from_transformers(hf_model)  # or load('dir or hub name')
    img_emb, txt_emb, extras = DualEncoder(config).apply({'params': params},
                                                         images, texts)
    to_transformers(config, params).save_pretrained('dir')  # or save(...)

Images are NHWC (HF takes NCHW `pixel_values`), normalised as the source's
processor does it: CLIP's per-channel (x / 255 - mean) / std with OpenAI's
mean (0.4815, 0.4578, 0.4082) and std (0.2686, 0.2613, 0.2758), not mmtx.data's
x / 127.5 - 1 (which is SigLIP's). Texts are the HF token ids
(`mmtx.data.tokenizers.ClipBpeTokenizer` for the released vocabulary);
the imported text tower masks nothing (`mask_padding=False`: id 0 is '!' in
CLIP's vocabulary), is causal, and pools where HF does (the highest id when
eos_token_id == 2, else the first eos_token_id). The class token has its
own position, as in HF (`cls_posemb=True`), so the parameters are HF's one
for one, in number too.
"""
from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np

from mmtx.interop import mapping
from mmtx.interop.mapping import Rule
from mmtx.models import DualEncoder, TextTransformer, ViT, decode_variant

_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
_TO_HF_ACTIVATION = {"quick_gelu": "quick_gelu", "gelu": "gelu",
                     "gelu_tanh": "gelu_pytorch_tanh"}


def activation(name: str, who: str) -> str:
  if name not in _ACTIVATIONS:
    raise ValueError(f"{who}: hidden_act {name!r} has no mmtx activation; "
                     f"known: {sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


def hf_activation(name: str, who: str) -> str:
  if name not in _TO_HF_ACTIVATION:
    raise ValueError(f"{who}: activation {name!r} has no Hugging Face "
                     f"equivalent; known: {sorted(_TO_HF_ACTIVATION)}.")
  return _TO_HF_ACTIVATION[name]


def encoder_rules(mmtx: str, src: str, depth: int) -> list[Rule]:
  """A Hugging Face CLIP / SigLIP encoder stack (`src`.layers.i) -> mmtx
  `Encoder` layers_i (the final LayerNorm is the caller's)."""
  rules = []
  for i in range(depth):
    m, s = f"{mmtx}/layers_{i}", f"{src}.layers.{i}"
    for name, proj in (("query", "q_proj"), ("key", "k_proj"),
                       ("value", "v_proj")):
      rules += [Rule(f"{m}/attention/{name}/kernel",
                     f"{s}.self_attn.{proj}.weight", "heads_in"),
                Rule(f"{m}/attention/{name}/bias",
                     f"{s}.self_attn.{proj}.bias", "heads_bias")]
    rules += [Rule(f"{m}/attention/out/kernel",
                   f"{s}.self_attn.out_proj.weight", "heads_out"),
              Rule(f"{m}/attention/out/bias", f"{s}.self_attn.out_proj.bias")]
    rules += layer_norm_rules(f"{m}/ln_attention", f"{s}.layer_norm1")
    rules += layer_norm_rules(f"{m}/ln_mlp", f"{s}.layer_norm2")
    rules += linear_rules(f"{m}/mlp/wi", f"{s}.mlp.fc1")
    rules += linear_rules(f"{m}/mlp/wo", f"{s}.mlp.fc2")
  return rules


def layer_norm_rules(mmtx: str, src: str) -> list[Rule]:
  return [Rule(f"{mmtx}/scale", f"{src}.weight"),
          Rule(f"{mmtx}/bias", f"{src}.bias")]


def linear_rules(mmtx: str, src: str, bias: bool = True) -> list[Rule]:
  rules = [Rule(f"{mmtx}/kernel", f"{src}.weight", "linear")]
  return rules + ([Rule(f"{mmtx}/bias", f"{src}.bias")] if bias else [])


def rules(config) -> list[Rule]:
  img, txt = config["image"], config["text"]
  v, t = "vision_model", "text_model"
  out = [Rule("img/embedding/conv/kernel",
              f"{v}.embeddings.patch_embedding.weight", "conv"),
         Rule("img/posemb/pos_embedding",
              f"{v}.embeddings.position_embedding.weight"),
         Rule("img/cls", f"{v}.embeddings.class_embedding", "cls")]
  out += layer_norm_rules("img/ln_pre", f"{v}.pre_layrnorm")
  out += encoder_rules("img/encoder", f"{v}.encoder", img["depth"])
  out += layer_norm_rules("img/encoder/ln_final", f"{v}.post_layernorm")
  out += [Rule("txt/embedding/embedding",
               f"{t}.embeddings.token_embedding.weight"),
          Rule("txt/posemb/pos_embedding",
               f"{t}.embeddings.position_embedding.weight")]
  out += encoder_rules("txt/encoder", f"{t}.encoder", txt["depth"])
  out += layer_norm_rules("txt/encoder/ln_final", f"{t}.final_layer_norm")
  out += [Rule("img_head/kernel", "visual_projection.weight", "linear"),
          Rule("txt_head/kernel", "text_projection.weight", "linear"),
          Rule("logit_scale", "logit_scale")]
  return out


def dual_encoder_shapes(config, image_size) -> dict[str, tuple]:
  """Parameter shapes of `DualEncoder(config)` on `image_size` (side, or
  (height, width)) images."""
  h, w = (image_size, image_size) if np.ndim(image_size) == 0 else image_size
  return mapping.param_shapes(
      DualEncoder(config), np.zeros((1, h, w, 3), np.float32),
      np.ones((1, config["text"]["max_len"]), np.int32))


def check_model(hf_model, class_name: str, who: str, hint: str = ""):
  """`hf_model` is a `class_name`, and its vision tower one mmtx's ViT can
  hold (RGB, a whole number of patches)."""
  names = [c.__name__ for c in type(hf_model).__mro__]
  if class_name not in names:
    raise ValueError(f"{who}: expected a transformers {class_name}, got "
                     f"{type(hf_model).__name__}.{hint}")
  vc = hf_model.config.vision_config
  if vc.image_size % vc.patch_size:
    raise ValueError(f"{who}: image_size {vc.image_size} is not divisible by "
                     f"patch_size {vc.patch_size}.")
  if vc.num_channels != 3:
    raise ValueError(f"{who}: num_channels={vc.num_channels}; mmtx's "
                     f"{class_name} import takes RGB images (3 channels).")


def from_transformers(hf_model) -> tuple[ml_collections.ConfigDict, dict]:
  """Converts a `transformers.CLIPModel` into (config, params) for
  `mmtx.models.DualEncoder` (softmax loss, the HF logit_scale)."""
  who = "hf_clip.from_transformers"
  check_model(hf_model, "CLIPModel", who, " (SigLIP: mmtx.interop.hf_siglip)")
  vc, tc = hf_model.config.vision_config, hf_model.config.text_config
  eos = getattr(tc, "eos_token_id", 2)
  pool = {"pool": "argmax"} if eos == 2 else {"pool": "eos", "eos_id": eos}
  scale = math.exp(float(hf_model.logit_scale.detach()))
  config = ml_collections.ConfigDict({
      "loss": "softmax",
      "embed_dim": hf_model.config.projection_dim,
      "logit_scale_init": scale,
      "max_logit_scale": max(100.0, scale),  # HF does not clamp
      "image": {
          "patch_size": vc.patch_size, "width": vc.hidden_size,
          "depth": vc.num_hidden_layers, "mlp_dim": vc.intermediate_size,
          "num_heads": vc.num_attention_heads, "posemb": "learned",
          "pool": "cls", "cls_posemb": True, "patch_bias": False,
          "ln_pre": True, "activation": activation(vc.hidden_act, who),
          "layer_norm_eps": vc.layer_norm_eps,
      },
      "text": {
          "vocab_size": tc.vocab_size, "width": tc.hidden_size,
          "depth": tc.num_hidden_layers, "mlp_dim": tc.intermediate_size,
          "num_heads": tc.num_attention_heads,
          "max_len": tc.max_position_embeddings, "causal": True,
          "mask_padding": False, **pool,
          "activation": activation(tc.hidden_act, who),
          "layer_norm_eps": tc.layer_norm_eps,
      },
  })
  state = mapping.torch_state(hf_model)
  params = mapping.to_params(state, rules(config),
                             dual_encoder_shapes(config, vc.image_size), who)
  return config, params


def image_size(flat_params: dict, patch_size: int, who: str,
               cls_rows: int = 0) -> int:
  """The square image size the learned position table (with `cls_rows` rows
  for class tokens) was made for."""
  n = flat_params["img/posemb/pos_embedding"].shape[0] - cls_rows
  side = math.isqrt(n)
  if side * side != n:
    raise ValueError(f"{who}: the position table has {n} rows, not a square "
                     f"grid; Hugging Face models take square images.")
  return side * patch_size


def _require(cfg: dict, key: str, want, who: str, where: str):
  got = cfg[key]
  if got != want and not (got == [] and want == ()):
    field = f"config.{where}.{key}" if where else f"config.{key}"
    raise ValueError(f"{who}: {field}={got!r} has no Hugging Face equivalent "
                     f"(it needs {want!r}).")


def resolved(tower, module) -> dict:
  """A tower config with its variant ('B/16') spelled out and the
  `module`'s (ViT, TextTransformer) defaults filled in."""
  cfg = {f.name: f.default for f in dataclasses.fields(module)
         if f.default is not dataclasses.MISSING
         and f.name not in ("parent", "name")}
  cfg.update(tower)
  base = decode_variant(cfg["variant"]) if cfg.get("variant") else {}
  for k, v in base.items():
    if cfg.get(k) is None:
      cfg[k] = v
  return cfg


def resolved_config(config) -> dict:
  """A DualEncoder config as a dict with every field it reads spelled out."""
  config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return {"loss": "softmax", "img_head": "linear", "txt_head": "linear",
          **config, "image": resolved(config["image"], ViT),
          "text": resolved(config["text"], TextTransformer)}


def to_transformers(config, params, *, eos_token_id: int | None = None):
  """`DualEncoder` (config, params) -> a `transformers.CLIPModel` (float32,
  eval mode) with the same outputs. Save it with `.save_pretrained(dir)`.

  The text pooling maps as: 'argmax' -> eos_token_id 2 (HF's legacy rule),
  'eos' -> eos_token_id = text.eos_id; 'last' needs `eos_token_id` (not 2):
  the id every text ends with.
  """
  import transformers  # pylint: disable=g-import-not-at-top
  who = "hf_clip.to_transformers"
  config = resolved_config(config)
  img, txt = config["image"], config["text"]
  for key, want in (("pool", "cls"), ("cls_posemb", True),
                    ("posemb", "learned"), ("patch_bias", False),
                    ("ln_pre", True),
                    ("stem_channels", ())):
    _require(img, key, want, who, "image")
  _require(txt, "causal", True, who, "text")
  for key, want in (("loss", "softmax"), ("img_head", "linear"),
                    ("txt_head", "linear")):
    _require(config, key, want, who, "")
  if txt["pool"] == "argmax":
    eos = 2
  elif txt["pool"] == "eos":
    eos = txt["eos_id"]
  elif txt["pool"] == "last" and eos_token_id not in (None, 2):
    eos = eos_token_id
  else:
    raise ValueError(f"{who}: config.text.pool={txt['pool']!r}: "
                     f"HF CLIP pools at the highest id (pool='argmax') or the "
                     f"first eos_token_id (pool='eos'); for pool='last' pass "
                     f"eos_token_id= (not 2), the id every text ends with.")
  flat, config = mapping.unscan(mapping.flat_params(params), config)
  size = image_size(flat, img["patch_size"], who, 1)
  flat = mapping.check_params(flat, dual_encoder_shapes(config, size), who)
  flat = mapping.clamp_logit_scale(flat, config)
  hf_config = transformers.CLIPConfig(
      projection_dim=config["embed_dim"],
      logit_scale_init_value=float(flat["logit_scale"]),
      text_config=dict(
          vocab_size=txt["vocab_size"], hidden_size=txt["width"],
          intermediate_size=txt["mlp_dim"], num_hidden_layers=txt["depth"],
          num_attention_heads=txt["num_heads"],
          max_position_embeddings=txt["max_len"],
          hidden_act=hf_activation(txt["activation"], who),
          layer_norm_eps=txt["layer_norm_eps"],
          eos_token_id=eos, projection_dim=config["embed_dim"]),
      vision_config=dict(
          hidden_size=img["width"], intermediate_size=img["mlp_dim"],
          num_hidden_layers=img["depth"], num_attention_heads=img["num_heads"],
          image_size=size, patch_size=img["patch_size"],
          hidden_act=hf_activation(img["activation"], who),
          layer_norm_eps=img["layer_norm_eps"],
          projection_dim=config["embed_dim"]))
  model = transformers.CLIPModel(hf_config)
  mapping.load_torch_state(model, mapping.to_state(flat, rules(config)))
  return model.eval()


def load(name_or_path: str, **kwargs) -> tuple[ml_collections.ConfigDict, dict]:
  """`from_transformers(CLIPModel.from_pretrained(name_or_path))`: a
  `save_pretrained` directory, or a hub name when the network allows it."""
  import transformers  # pylint: disable=g-import-not-at-top
  return from_transformers(
      transformers.CLIPModel.from_pretrained(name_or_path, **kwargs))


def save(config, params, directory: str, **kwargs) -> None:
  """Writes a Hugging Face directory (config.json + model.safetensors)."""
  to_transformers(config, params, **kwargs).save_pretrained(directory)
