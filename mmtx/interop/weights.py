"""Released weights by name or path -> (config, params) for
`mmtx.models.DualEncoder` (CLIP, SigLIP) or `mmtx.models.Captioner` (CoCa),
and the data settings that model expects: what `configs/clip.py:init=...`
and `configs/caption.py:init=...` start a run from.

    config, params = load('/path/to/save_pretrained_dir')    # CLIP or SigLIP
    config, params = load('openai/clip-vit-base-patch32')    # hub, if online
    config, params = load('/path/open_clip.pt', preset='clip-B/32')
    config, params = load('/path/coca.safetensors', preset='coca-B/32')
    config, params = load('/path/w.pt', preset='/path/my_model.json')

A directory or hub name is read by transformers (its config.json's
model_type, 'clip' or 'siglip', picks the converter); a file is an open_clip
checkpoint of the architecture `preset` names: a preset (OPEN_CLIP_NAMES) or
an open_clip model config .json (the format of open_clip's model_configs/).
"""
from __future__ import annotations

import functools
import json
import os

from mmtx.interop import hf_clip, hf_siglip, mapping, open_clip

# preset name -> open_clip model name.
OPEN_CLIP_NAMES = {
    "clip-B/32": "ViT-B-32", "clip-B/16": "ViT-B-16", "clip-L/14": "ViT-L-14",
    "siglip-B/16-224": "ViT-B-16-SigLIP",
    "siglip-So400m/14-224": "ViT-SO400M-14-SigLIP",
    "coca-B/32": "coca_ViT-B-32", "coca-L/14": "coca_ViT-L-14",
}
_HF = {"clip": hf_clip, "siglip": hf_siglip}


@functools.lru_cache(maxsize=1)
def load(spec: str, preset: str = ""):
  """(config, params) of the weights `spec` names (see the module
  docstring). The last result is kept, so a config file and the trainer
  that both ask for it convert it once; `load.cache_clear()` frees it."""
  if os.path.isfile(spec):
    if preset not in OPEN_CLIP_NAMES and not preset.endswith(".json"):
      raise ValueError(
          f"init={spec}: an open_clip checkpoint file needs preset= naming "
          f"its architecture, one of {sorted(OPEN_CLIP_NAMES)} or an "
          f"open_clip model config .json (got {preset!r}); a Hugging Face "
          f"model is a save_pretrained directory.")
    return open_clip_file(spec, preset)
  if preset:
    raise ValueError(f"init={spec}: preset= names the architecture of an "
                     f"open_clip checkpoint file; a Hugging Face directory or "
                     f"hub name carries its own config (drop preset=).")
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    kind = transformers.AutoConfig.from_pretrained(spec).model_type
  except (OSError, ValueError) as e:
    raise ValueError(f"init={spec}: not an open_clip checkpoint file, nor a "
                     f"Hugging Face directory or hub name transformers can "
                     f"read ({type(e).__name__}: {e}).") from None
  if kind not in _HF:
    raise ValueError(f"init={spec}: a transformers {kind!r} model; mmtx "
                     f"imports {sorted(_HF)} (and open_clip files).")
  return _HF[kind].load(spec)


def _open_clip_name(preset: str) -> str:
  """The open_clip model name of a preset, or of an open_clip model config
  .json, which is registered with open_clip under its file name."""
  import open_clip as oc  # pylint: disable=g-import-not-at-top
  if not preset.endswith(".json"):
    return OPEN_CLIP_NAMES[preset]
  try:
    with open(preset, encoding="utf-8") as f:
      cfg = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"preset={preset}: not a readable JSON file "
                     f"({type(e).__name__}: {e}).") from None
  need = ("embed_dim", "vision_cfg", "text_cfg")
  if not isinstance(cfg, dict) or any(k not in cfg for k in need):
    raise ValueError(f"preset={preset}: an open_clip model config needs the "
                     f"keys {need} (open_clip's model_configs/*.json).")
  name = os.path.splitext(os.path.basename(preset))[0]
  known = oc.get_model_config(name)
  if known is not None and known != cfg:
    raise ValueError(f"preset={preset}: open_clip already has a model "
                     f"{name!r} with another config; rename the file.")
  oc.add_model_config(preset)
  return name


def open_clip_file(path: str, preset: str):
  """(config, params) of the open_clip checkpoint file `path` (.pt / .bin /
  .safetensors, a state dict) of the architecture `preset` names: the file
  must hold every tensor of that architecture with its shape, and no other
  (a ValueError names each that differs, with both shapes)."""
  import open_clip as oc  # pylint: disable=g-import-not-at-top
  from open_clip import factory  # pylint: disable=g-import-not-at-top
  from open_clip import model as oc_model  # pylint: disable=g-import-not-at-top
  model = oc.create_model(_open_clip_name(preset))
  try:
    state = factory.load_state_dict(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"init={path}: not a torch or safetensors state dict "
                     f"open_clip can read ({type(e).__name__}: {e}).") from None
  want = model.state_dict()
  # open_clip's own format fixes (no resizing): a CLIP state dict of the
  # layout before the text tower had its own module, a [1] logit scale.
  if "positional_embedding" in state and "positional_embedding" not in want:
    state = oc_model.convert_to_custom_text_state_dict(state)
  for key in ("logit_scale", "logit_bias"):
    if key in state and key in want and state[key].numel() == 1:
      state[key] = state[key].reshape(want[key].shape)
  shape = lambda t: tuple(t.shape)  # noqa: E731
  wrong = [f"{k}: {shape(state[k])} in the file, {shape(v)} in {preset}"
           for k, v in want.items() if k in state and shape(state[k]) !=
           shape(v)]
  missing = [f"{k} {shape(v)}" for k, v in want.items() if k not in state]
  unused = [f"{k} {shape(v)}" for k, v in state.items() if k not in want]
  if wrong or missing or unused:
    raise ValueError(
        f"init={path} is not a checkpoint of preset={preset}: tensors of "
        f"another shape {wrong}, missing from the file {missing}, in the "
        f"file but not in {preset} {unused}.")
  model.load_state_dict(state, strict=True)
  return open_clip.from_open_clip(model.eval())


def is_captioner(model_config) -> bool:
  """Whether a model config (an import's, a preset's) is a Captioner's."""
  return "decoder_depth" in model_config


def check_model(model_config, spec: str, captioner: bool, config: str):
  """Refuses weights of the other model family than `config` trains."""
  if is_captioner(model_config) != captioner:
    other = "configs/clip.py" if captioner else "configs/caption.py"
    kind = "a CoCa (Captioner)" if not captioner else "a CLIP / SigLIP"
    raise ValueError(f"{config}: init={spec} is {kind} model; {other} "
                     f"trains it.")


def data_settings(model_config, params=None, spec: str = "") -> dict:
  """config.data fields the model reads its inputs with: the tokenizer it
  was trained with ('clip', or 'siglip:spiece.model' when the directory
  `spec` holds one; '' = set it yourself), the image normalisation, the
  text length and, given its `params`, the image size its position table
  was made for. A Captioner (CoCa) is open_clip's: CLIP's tokenizer and
  normalisation."""
  sigmoid = model_config.get("loss") == "sigmoid"
  tokenizer = "clip"
  if sigmoid:
    spm = os.path.join(spec, "spiece.model") if spec else ""
    tokenizer = f"siglip:{spm}" if spm and os.path.isfile(spm) else ""
  out = {"tokenizer": tokenizer,
         "normalize": "minus_one_one" if sigmoid else "clip",
         "max_len": model_config["text"]["max_len"]}
  if params is not None:
    img = model_config["image"]
    out["image_size"] = hf_clip.image_size(
        mapping.flat_params(params), img["patch_size"], "init",
        int(img.get("cls_posemb", False)))
  return out
