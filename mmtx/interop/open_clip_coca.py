"""open_clip's CoCa (`open_clip.create_model('coca_ViT-B-32')`) <->
`mmtx.models.Captioner`.

    config, params = mmtx.interop.open_clip.from_open_clip(coca_model)
    state = to_state_dict(config, params)  # coca_model.load_state_dict(...)
    coca_model = to_open_clip(config, params)  # built and loaded

Where each part of open_clip's CoCa goes (coca_model.py, transformer.py):
- image: a ViT with a class token (`class_token`) and ln_pre; `attn_pool.ln_k`
  normalises all its output tokens, so it is the ViT's final LayerNorm; one
  attentional pooler of n_queries queries (`pool='shared'`, num_queries =
  n_queries - 1) of width embed_dim (`pool_dim`) with `ln_q` on the queries
  (`pool_query_norm`) and `ln_post` after it; query 0 @ `proj` is the image
  embedding, queries 1.. the decoder's context.
- text tower: the CLS token appended, position rows 0..t (`cls_position`),
  its key mask (`cls_mask`: 'shifted' for correct_cls_mask=False, the
  default of released weights); the tokens go to the decoder without a
  LayerNorm, `ln_final` and `text_projection` act on the CLS only
  (`decoder_layer='split'`: `txt_ln`, `txt_head`).
- multimodal decoder: per layer a causal self-attention block and a
  cross-attention block (`ln_1_kv` on the image tokens), each with its own
  MLP (`SplitDecoder`); `ln_final`; `text_projection` [width, vocab] without
  a bias (`head`, `head_bias=False`).
Texts are open_clip's token ids (`mmtx.data.tokenizers.ClipBpeTokenizer`,
context length 76 for the released models), 0 = padding.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import ml_collections
import numpy as np

from mmtx.interop import hf_clip, mapping
from mmtx.interop import open_clip as oc
from mmtx.interop.mapping import Rule
from mmtx.models.captioner import Captioner
from mmtx.models.config import CaptionerTextConfig, parse
from mmtx.models.towers import ViT

WHO = "open_clip.from_open_clip(CoCa)"


def _unmappable(what: str):
  raise ValueError(f"{WHO}: {what} has no mmtx Captioner equivalent.")


def _attention_rules(m: str, s: str, packed: bool) -> list[Rule]:
  """torch nn.MultiheadAttention `s` -> mmtx MultiHeadAttention `m`; with
  `packed=False` (key/value width != query width) q, k, v have their own
  weights and share the packed bias."""
  out = []
  for j, name in enumerate(("query", "key", "value")):
    weight = (Rule(f"{m}/{name}/kernel", f"{s}.in_proj_weight", "heads_in",
                   (j, 3)) if packed else
              Rule(f"{m}/{name}/kernel", f"{s}.{name[0]}_proj_weight",
                   "heads_in"))
    out += [weight, Rule(f"{m}/{name}/bias", f"{s}.in_proj_bias",
                         "heads_bias", (j, 3))]
  return out + [Rule(f"{m}/out/kernel", f"{s}.out_proj.weight", "heads_out"),
                Rule(f"{m}/out/bias", f"{s}.out_proj.bias")]


def _block_rules(m: str, s: str, cross: bool) -> list[Rule]:
  """open_clip ResidualAttentionBlock `s` -> the Captioner's `SplitBlock` at
  `m` (self- or cross-attention)."""
  attn = "cross_attention" if cross else "self_attention"
  out = _attention_rules(f"{m}/{attn}", f"{s}.attn", packed=True)
  out += hf_clip.layer_norm_rules(f"{m}/ln_{'query' if cross else attn}",
                                  f"{s}.ln_1")
  if cross:
    out += hf_clip.layer_norm_rules(f"{m}/ln_context", f"{s}.ln_1_kv")
  out += hf_clip.layer_norm_rules(f"{m}/ln_mlp", f"{s}.ln_2")
  out += hf_clip.linear_rules(f"{m}/mlp/wi", f"{s}.mlp.c_fc")
  out += hf_clip.linear_rules(f"{m}/mlp/wo", f"{s}.mlp.c_proj")
  return out


def rules(config, scalar_shape: tuple = ()) -> list[Rule]:
  """The table for CoCa's state dict, one rule per Captioner parameter."""
  img, txt = config["image"], config["text"]
  out = [Rule("img/embedding/conv/kernel", "visual.conv1.weight", "conv"),
         Rule("img/posemb/pos_embedding", "visual.positional_embedding"),
         Rule("img/cls", "visual.class_embedding", "cls")]
  if img["ln_pre"]:
    out += hf_clip.layer_norm_rules("img/ln_pre", "visual.ln_pre")
  out += oc.block_rules("img/encoder", "visual.transformer", img["depth"])
  p, s = "context_pool", "visual.attn_pool"
  out += hf_clip.layer_norm_rules("img/encoder/ln_final", f"{s}.ln_k")
  out += [Rule(f"{p}/probe", f"{s}.query", "add1")]
  out += hf_clip.layer_norm_rules(f"{p}/ln_query", f"{s}.ln_q")
  out += _attention_rules(f"{p}/attention", f"{s}.attn",
                          packed=config["pool_dim"] == img["width"])
  out += hf_clip.layer_norm_rules(f"{p}/ln", "visual.ln_post")
  out += [Rule("img_head/kernel", "visual.proj"),
          Rule("embedding/embedding", "text.token_embedding.weight"),
          Rule("posemb/pos_embedding", "text.positional_embedding"),
          Rule("cls", "text.cls_emb")]
  for i in range(txt["depth"]):
    out += _block_rules(f"unimodal/self_{i}", f"text.transformer.resblocks.{i}",
                        cross=False)
  out += hf_clip.layer_norm_rules("txt_ln", "text.ln_final")
  out += [Rule("txt_head/kernel", "text.text_projection")]
  for i in range(config["decoder_depth"]):
    d = "text_decoder"
    out += _block_rules(f"multimodal/self_{i}", f"{d}.resblocks.{i}", False)
    out += _block_rules(f"multimodal/cross_{i}", f"{d}.cross_attn.{i}", True)
  out += hf_clip.layer_norm_rules("multimodal/ln_final",
                                  "text_decoder.ln_final")
  out += [Rule("head/kernel", "text_decoder.text_projection"),
          Rule("logit_scale", "logit_scale",
               "scalar1" if scalar_shape == (1,) else "copy")]
  return out


def captioner_shapes(config, image_size: int) -> dict[str, tuple]:
  """'path' -> shape of every Captioner parameter (no memory used)."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  texts = jnp.ones((1, config["text"]["max_len"]), jnp.int32)
  return mapping.param_shapes(Captioner(config), images, texts)


def _same(values: dict, what: str):
  if len(set(values.values())) != 1:
    _unmappable(f"{what} that differ between parts ({values})")
  return next(iter(values.values()))


def _eps(**norms) -> float:
  return _same({k: n.eps for k, n in norms.items()}, "LayerNorm eps")


def from_coca(model) -> tuple[ml_collections.ConfigDict, dict]:
  """open_clip `CoCa` -> (config, params) for `mmtx.models.Captioner`."""
  visual, text, dec = model.visual, model.text, model.text_decoder
  if type(visual).__name__ != "VisionTransformer":
    _unmappable(f"the image tower {type(visual).__name__}")
  if type(text).__name__ != "TextTransformer":
    _unmappable(f"the text tower {type(text).__name__} (Hugging Face)")
  if visual.attn_pool is None or visual.attn_pool_contrastive is not None:
    _unmappable("an image tower without CoCa's one attentional pooler "
                "(attentional_pool='parallel' / 'cascade' or none)")
  if visual.pool_type != "tok":
    _unmappable(f"image pool_type={visual.pool_type!r} after the pooler "
                f"(only 'tok': query 0 is the image embedding)")
  if visual.patch_size[0] != visual.patch_size[1]:
    _unmappable(f"a non-square patch {visual.patch_size}")
  if visual.image_size[0] != visual.image_size[1]:
    _unmappable(f"a non-square image {visual.image_size}")
  if text.cls_emb is None or text.attn_mask is None:
    _unmappable("a text tower without the appended CLS token and causal mask")
  if text.pad_id != 0:
    _unmappable(f"text pad_id={text.pad_id} (mmtx pads with 0)")
  if type(text.text_projection).__name__ != "Parameter":
    _unmappable("a text projection other than a bias-free matrix")
  if getattr(model, "logit_bias", None) is not None:
    _unmappable("a logit bias")
  oc.check_blocks(dec, "text_decoder")
  for i, block in enumerate(dec.cross_attn):
    if type(block.ls_1).__name__ != "Identity":
      _unmappable(f"text_decoder.cross_attn.{i}.ls_1 (LayerScale)")
  tower = oc.tower_common
  img = {"patch_size": visual.patch_size[0], "posemb": "learned",
         "cls_posemb": True, "patch_bias": False,
         "ln_pre": type(visual.ln_pre).__name__ != "Identity",
         "layer_norm_eps": _eps(ln_post=visual.ln_post,
                                ln_k=visual.attn_pool.ln_k,
                                ln_q=visual.attn_pool.ln_q),
         **tower(visual.transformer, "visual.transformer")}
  txt = tower(text.transformer, "text.transformer")
  mm = tower(dec, "text_decoder")
  cross = dec.cross_attn[0]
  mm_cross = {"width": cross.ln_1.normalized_shape[0],
              "num_heads": cross.attn.num_heads,
              "mlp_dim": cross.mlp.c_fc.out_features,
              "activation": oc.mlp_activation(cross.mlp.gelu)}
  for key in ("width", "num_heads", "mlp_dim", "activation"):
    _same({"text": txt[key], "text_decoder": mm[key],
           "text_decoder.cross_attn": mm_cross[key]}, f"{key}s")
  queries, pool_dim = visual.attn_pool.query.shape
  config = ml_collections.ConfigDict({
      "image": img,
      "text": {**txt, "vocab_size": text.vocab_size,
               "max_len": text.positional_embedding.shape[0] - 1,
               "layer_norm_eps": _eps(
                   text=text.ln_final, text_decoder=dec.ln_final),
               "cls_position": True,
               "cls_mask": "cls" if text.correct_cls_mask else "shifted"},
      "decoder_depth": dec.layers,
      "embed_dim": visual.proj.shape[1],
      "pool": "shared", "num_queries": queries - 1, "class_token": True,
      "pool_dim": pool_dim, "pool_heads": visual.attn_pool.attn.num_heads,
      "pool_query_norm": True, "tie_embeddings": False, "head_bias": False,
      "decoder_layer": "split",
      "logit_scale_init": math.exp(float(
          model.logit_scale.detach().reshape(-1)[0])),
  })
  config.max_logit_scale = max(100.0, config.logit_scale_init)
  state = mapping.torch_state(model)
  table = rules(config, tuple(model.logit_scale.shape))
  shapes = captioner_shapes(config, visual.image_size[0])
  return config, mapping.to_params(state, table, shapes, WHO)


def to_state_dict(config, params, *, scalar_shape: tuple = ()
                  ) -> dict[str, np.ndarray]:
  """`Captioner` (config, params) made by `from_coca` (or with its layout)
  -> open_clip CoCa's state dict as float32 numpy arrays (`scalar_shape`:
  (1,) for a model with nonscalar_logit_scale); `from_coca` of a model
  loaded with it gives back `params` bit for bit."""
  layout = {"pool": "shared", "class_token": True, "pool_query_norm": True,
            "tie_embeddings": False, "head_bias": False,
            "decoder_layer": "split"}
  wrong = {k: config.get(k) for k, v in layout.items() if config.get(k) != v}
  if wrong or not config["text"].get("cls_position") or not config.get(
      "pool_dim"):
    raise ValueError(f"{WHO}: to_state_dict needs open_clip's CoCa layout "
                     f"{layout}, text.cls_position=True and pool_dim set; "
                     f"the config has {wrong or 'the text / pool_dim off'}.")
  flat = mapping.flat_params(params)
  size = hf_clip.image_size(flat, config["image"]["patch_size"], WHO,
                            cls_rows=1)
  mapping.check_params(flat, captioner_shapes(config, size), WHO)
  return mapping.to_state(flat, rules(config, scalar_shape))


# open_clip's CoCa builds its pools and multimodal decoder with torch's
# default LayerNorm eps, and gelu / QuickGELU (quick_gelu) everywhere.
_EPS, _ACTIVATIONS = 1e-5, ("gelu", "quick_gelu")


def open_clip_config(config, image_size: int, *,
                     scalar_shape: tuple = ()) -> dict:
  """The open_clip CoCa model config (the layout of open_clip's
  model_configs/*.json, which `weights.load`'s preset= also reads) of a
  `Captioner` config with open_clip's CoCa layout, for `image_size` images;
  a field open_clip's CoCa cannot take is a ValueError naming it."""
  img = hf_clip.resolved(dict(config["image"]), ViT)
  txt = dataclasses.asdict(parse(CaptionerTextConfig, config["text"]))
  wrong = {}
  for part, cfg in (("image", img), ("text", txt)):
    if cfg["layer_norm_eps"] != _EPS:
      wrong[f"config.{part}.layer_norm_eps"] = cfg["layer_norm_eps"]
    if (cfg["activation"] not in _ACTIVATIONS
        or cfg["activation"] != img["activation"]):
      wrong[f"config.{part}.activation"] = cfg["activation"]
  if txt["mlp_dim"] != 4 * txt["width"]:
    wrong["config.text.mlp_dim"] = txt["mlp_dim"]
  if config.get("pool_dim") != config["embed_dim"]:
    wrong["config.pool_dim"] = config.get("pool_dim")
  if wrong:
    raise ValueError(
        f"{WHO}: {wrong} have no open_clip CoCa equivalent (it needs "
        f"layer_norm_eps {_EPS}, one activation of {_ACTIVATIONS}, "
        f"text.mlp_dim = 4 x text.width and pool_dim = embed_dim).")
  return {
      "embed_dim": config["embed_dim"], "custom_text": True,
      "quick_gelu": img["activation"] == "quick_gelu",
      "nonscalar_logit_scale": tuple(scalar_shape) == (1,),
      "vision_cfg": {
          "image_size": image_size, "layers": img["depth"],
          "width": img["width"], "head_width": img["width"] //
          img["num_heads"], "mlp_ratio": img["mlp_dim"] / img["width"],
          "patch_size": img["patch_size"], "no_ln_pre": not img["ln_pre"],
          "attentional_pool": True,
          "attn_pooler_queries": config["num_queries"] + 1,
          "attn_pooler_heads": config.get("pool_heads") or img["num_heads"],
          "output_tokens": True},
      "text_cfg": {
          "context_length": txt["max_len"], "vocab_size": txt["vocab_size"],
          "width": txt["width"], "heads": txt["num_heads"],
          "layers": txt["depth"], "mlp_ratio": txt["mlp_dim"] / txt["width"],
          "embed_cls": True, "output_tokens": True},
      "multimodal_cfg": {
          "context_length": txt["max_len"], "vocab_size": txt["vocab_size"],
          "width": txt["width"], "heads": txt["num_heads"],
          "layers": config["decoder_depth"]},
  }


def to_open_clip(config, params, *, scalar_shape: tuple = ()):
  """`Captioner` (config, params) with open_clip's CoCa layout -> an
  open_clip `CoCa` (float32, eval mode) with the same outputs;
  `from_open_clip` of it gives back `params` bit for bit. Save it with
  `torch.save(model.state_dict(), 'coca.pt')` and
  `open_clip_config(...)` as the model config .json."""
  import open_clip  # pylint: disable=g-import-not-at-top
  state = to_state_dict(config, params, scalar_shape=scalar_shape)
  size = hf_clip.image_size(mapping.flat_params(params),
                            config["image"]["patch_size"], WHO, cls_rows=1)
  cfg = open_clip_config(config, size, scalar_shape=scalar_shape)
  del cfg["custom_text"]
  model = open_clip.CoCa(**cfg)
  # Not a CLIPTextCfg field: which keys the text tower's CLS attends to.
  model.text.correct_cls_mask = config["text"].get("cls_mask") == "cls"
  return mapping.load_torch_state(model, state).eval()
