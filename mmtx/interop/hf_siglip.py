"""Hugging Face `SiglipModel` (SigLIP, and the fixed-resolution SigLIP 2
checkpoints) <-> `mmtx.models.DualEncoder` with the sigmoid loss.

    config, params = from_transformers(hf_model)  # or load('dir or hub name')
    img_emb, txt_emb, extras = DualEncoder(config).apply({'params': params},
                                                         images, texts)
    logits = extras['logit_scale'] * img_emb @ txt_emb.T + extras['logit_bias']

The image tower has a patch bias, no class token and pools with MAP
(`pool='map'`), with no projection after it (`img_head='none'`); the text
tower is bidirectional, masks nothing and pools the last position (SigLIP
pads every text to its full length with the pad id and attends to it all),
then a biased projection (`txt_head='linear_bias'`). Images are NHWC in
[-1, 1] (x / 127.5 - 1, as mmtx.data gives them). Texts are the ids of
SigLIP's own tokenizer (`mmtx.data.tokenizers.SiglipTokenizer` on its
SentencePiece model), padded to `max_len` as transformers' processor does
with padding='max_length'.
"""
from __future__ import annotations

import math

import ml_collections

from mmtx.interop import hf_clip, mapping
from mmtx.interop.mapping import Rule


def rules(config) -> list[Rule]:
  img, txt = config["image"], config["text"]
  v, t = "vision_model", "text_model"
  out = [Rule("img/embedding/conv/kernel",
              f"{v}.embeddings.patch_embedding.weight", "conv"),
         Rule("img/embedding/conv/bias",
              f"{v}.embeddings.patch_embedding.bias"),
         Rule("img/posemb/pos_embedding",
              f"{v}.embeddings.position_embedding.weight")]
  out += hf_clip.encoder_rules("img/encoder", f"{v}.encoder", img["depth"])
  out += hf_clip.layer_norm_rules("img/encoder/ln_final",
                                  f"{v}.post_layernorm")
  head, m = f"{v}.head", "img/map_head"
  out += [Rule(f"{m}/probe", f"{head}.probe")]
  for i, name in enumerate(("query", "key", "value")):
    out += [Rule(f"{m}/attention/{name}/kernel",
                 f"{head}.attention.in_proj_weight", "heads_in", (i, 3)),
            Rule(f"{m}/attention/{name}/bias", f"{head}.attention.in_proj_bias",
                 "heads_bias", (i, 3))]
  out += [Rule(f"{m}/attention/out/kernel",
               f"{head}.attention.out_proj.weight", "heads_out"),
          Rule(f"{m}/attention/out/bias", f"{head}.attention.out_proj.bias")]
  out += hf_clip.layer_norm_rules(f"{m}/ln", f"{head}.layernorm")
  out += hf_clip.linear_rules(f"{m}/mlp/wi", f"{head}.mlp.fc1")
  out += hf_clip.linear_rules(f"{m}/mlp/wo", f"{head}.mlp.fc2")
  out += [Rule("txt/embedding/embedding",
               f"{t}.embeddings.token_embedding.weight"),
          Rule("txt/posemb/pos_embedding",
               f"{t}.embeddings.position_embedding.weight")]
  out += hf_clip.encoder_rules("txt/encoder", f"{t}.encoder", txt["depth"])
  out += hf_clip.layer_norm_rules("txt/encoder/ln_final",
                                  f"{t}.final_layer_norm")
  out += hf_clip.linear_rules("txt_head", f"{t}.head")
  out += [Rule("logit_scale", "logit_scale", "scalar1"),
          Rule("logit_bias", "logit_bias", "scalar1")]
  return out


def from_transformers(hf_model) -> tuple[ml_collections.ConfigDict, dict]:
  """Converts a `transformers.SiglipModel` into (config, params) for
  `mmtx.models.DualEncoder` (sigmoid loss, the HF logit_scale and bias)."""
  who = "hf_siglip.from_transformers"
  hf_clip.check_model(hf_model, "SiglipModel", who,
                      " (CLIP: mmtx.interop.hf_clip)")
  vc, tc = hf_model.config.vision_config, hf_model.config.text_config
  if not getattr(vc, "vision_use_head", True):
    raise ValueError(f"{who}: vision_use_head=False leaves SiglipModel "
                     f"without image embeddings; there is nothing to map.")
  proj = getattr(tc, "projection_size", tc.hidden_size)
  if proj != vc.hidden_size:
    raise ValueError(f"{who}: text projection_size {proj} != vision "
                     f"hidden_size {vc.hidden_size}; the embeddings must "
                     f"share a size.")
  scale = math.exp(float(hf_model.logit_scale.detach().reshape(())))
  config = ml_collections.ConfigDict({
      "loss": "sigmoid",
      "embed_dim": vc.hidden_size,
      "logit_scale_init": scale,
      "logit_bias_init": float(hf_model.logit_bias.detach().reshape(())),
      # SigLIP does not clamp its scale (B/16's is about 117).
      "max_logit_scale": max(100.0, scale),
      "img_head": "none",
      "txt_head": "linear_bias",
      "image": {
          "patch_size": vc.patch_size, "width": vc.hidden_size,
          "depth": vc.num_hidden_layers, "mlp_dim": vc.intermediate_size,
          "num_heads": vc.num_attention_heads, "posemb": "learned",
          "pool": "map", "patch_bias": True, "ln_pre": False,
          "activation": hf_clip.activation(vc.hidden_act, who),
          "layer_norm_eps": vc.layer_norm_eps,
      },
      "text": {
          "vocab_size": tc.vocab_size, "width": tc.hidden_size,
          "depth": tc.num_hidden_layers, "mlp_dim": tc.intermediate_size,
          "num_heads": tc.num_attention_heads,
          "max_len": tc.max_position_embeddings, "causal": False,
          "mask_padding": False, "pool": "last",
          "activation": hf_clip.activation(tc.hidden_act, who),
          "layer_norm_eps": tc.layer_norm_eps,
      },
  })
  state = mapping.torch_state(hf_model)
  shapes = hf_clip.dual_encoder_shapes(config, vc.image_size)
  return config, mapping.to_params(state, rules(config), shapes, who)


def to_transformers(config, params):
  """`DualEncoder` (config, params) with SigLIP's layout -> a
  `transformers.SiglipModel` (float32, eval mode) with the same outputs.
  Save it with `.save_pretrained(dir)`."""
  import transformers  # pylint: disable=g-import-not-at-top
  who = "hf_siglip.to_transformers"
  config = hf_clip.resolved_config(config)
  img, txt = config["image"], config["text"]
  req = hf_clip._require  # pylint: disable=protected-access
  for key, want in (("pool", "map"), ("posemb", "learned"),
                    ("patch_bias", True), ("ln_pre", False),
                    ("stem_channels", ())):
    req(img, key, want, who, "image")
  for key, want in (("causal", False), ("pool", "last"),
                    ("mask_padding", False)):
    req(txt, key, want, who, "text")
  for key, want in (("loss", "sigmoid"), ("img_head", "none"),
                    ("txt_head", "linear_bias")):
    req(config, key, want, who, "")
  flat, config = mapping.unscan(mapping.flat_params(params), config)
  size = hf_clip.image_size(flat, img["patch_size"], who)
  flat = mapping.check_params(
      flat, hf_clip.dual_encoder_shapes(config, size), who)
  flat = mapping.clamp_logit_scale(flat, config)
  hf_config = transformers.SiglipConfig(
      text_config=dict(
          vocab_size=txt["vocab_size"], hidden_size=txt["width"],
          intermediate_size=txt["mlp_dim"], num_hidden_layers=txt["depth"],
          num_attention_heads=txt["num_heads"],
          max_position_embeddings=txt["max_len"],
          hidden_act=hf_clip.hf_activation(txt["activation"], who),
          layer_norm_eps=txt["layer_norm_eps"],
          projection_size=config["embed_dim"]),
      vision_config=dict(
          hidden_size=img["width"], intermediate_size=img["mlp_dim"],
          num_hidden_layers=img["depth"], num_attention_heads=img["num_heads"],
          image_size=size, patch_size=img["patch_size"],
          hidden_act=hf_clip.hf_activation(img["activation"], who),
          layer_norm_eps=img["layer_norm_eps"]))
  model = transformers.SiglipModel(hf_config)
  mapping.load_torch_state(model, mapping.to_state(flat, rules(config)))
  return model.eval()


def load(name_or_path: str, **kwargs) -> tuple[ml_collections.ConfigDict, dict]:
  """`from_transformers(SiglipModel.from_pretrained(name_or_path))`: a
  `save_pretrained` directory, or a hub name when the network allows it."""
  import transformers  # pylint: disable=g-import-not-at-top
  return from_transformers(
      transformers.SiglipModel.from_pretrained(name_or_path, **kwargs))


def save(config, params, directory: str) -> None:
  """Writes a Hugging Face directory (config.json + model.safetensors)."""
  to_transformers(config, params).save_pretrained(directory)
