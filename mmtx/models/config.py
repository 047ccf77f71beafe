"""What a top-level model accepts, checked once where it enters: its typed
config and its inputs. Also the two output pieces the models share
(L2-normalised embeddings, the learned logit scale).

Each top-level model reads its ml_collections config in `__call__` (or
`setup`) into one frozen dataclass (`parse`), so the fields, their defaults
and their checks are written in one place. A key the model does not read
is an error that names it.

Towers and fusion strategies are Flax dataclasses themselves; a sub-config
for one (config.image, config.text, config.fusion, ...) is checked against
that module's fields (`module_kwargs`, `mmtx.fusion.build_fusion`).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmtx import losses
from mmtx.layers import audio as audio_lib
from mmtx.layers.transformer import check_choice
from mmtx.models.audio import AudioTransformer
from mmtx.models.towers import TextTransformer, ViT, decode_variant
from mmtx.models.video import VideoTransformer

Array = jax.Array


def as_dict(cfg) -> dict[str, Any]:
  """A ConfigDict, FrozenConfigDict or mapping as a plain (shallow) dict."""
  if isinstance(cfg, (ml_collections.ConfigDict,
                      ml_collections.FrozenConfigDict)):
    return cfg.to_dict()
  return dict(cfg)


def parse(cls, config, where: str = "config"):
  """`config` (a mapping) -> `cls(**config)`, with an error naming any key
  `cls` has no field for and any required field that is missing."""
  given = as_dict(config)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(given) - set(fields))
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {unknown}; the keys are "
                     f"{sorted(fields)}.")
  for name, f in fields.items():
    if (name not in given and f.default is dataclasses.MISSING and
        f.default_factory is dataclasses.MISSING):
      raise ValueError(f"{where}.{name} is required (keys: "
                       f"{sorted(fields)}).")
  out = cls(**given)
  unread = sorted(out.unread(set(given))) if hasattr(out, "unread") else []
  if unread:
    raise ValueError(f"{where}: key(s) {unread} are not read by this "
                     f"configuration ({out.unread_reason()}); remove them.")
  return out


def module_kwargs(module_cls, config, where: str,
                  owned: tuple[str, ...] = ()) -> dict[str, Any]:
  """A tower's sub-config as keyword arguments of `module_cls`: an error
  names a key that is not one of its fields, or one in `owned` (fields the
  enclosing model sets itself)."""
  given = as_dict(config)
  fields = {f.name for f in dataclasses.fields(module_cls)} - {
      "parent", "name"}
  for key in owned:
    if key in given:
      raise ValueError(f"{where}.{key}: the model sets this field itself; "
                       f"remove the key.")
  unknown = sorted(set(given) - fields)
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {unknown}; "
                     f"{module_cls.__name__} fields are {sorted(fields)}.")
  return given


# ----------------------------------------------------------------------------
# Inputs and shared outputs
# ----------------------------------------------------------------------------
def check_images(images, who):
  """NHWC float images of 1 or 3 channels; uint8 pixels are an error, not
  silently 0..255."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or (
      not jnp.issubdtype(images.dtype, jnp.floating)):
    raise ValueError(f"{who}: images must be NHWC float32 [batch, height, "
                     f"width, 1|3] in [-1, 1], got shape {images.shape} "
                     f"dtype {images.dtype}. uint8 pixels p become "
                     f"p / 127.5 - 1, as mmtx.data gives them "
                     f"(mmtx.data.views.normalize_image).")


def check_token_ids(texts, vocab_size, who):
  """Token ids must be in [0, vocab_size): a larger one embeds as NaN and a
  negative one as another token's row. Checked here when the values are
  known (a call outside jit); under jit TokenEmbedding makes both NaN, which
  the trainer stops on."""
  if vocab_size is None or isinstance(texts, jax.core.Tracer):
    return
  ids = np.asarray(texts)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    bad = int(((ids < 0) | (ids >= vocab_size)).sum())
    raise ValueError(f"{who}: token ids must be in [0, vocab_size="
                     f"{vocab_size}) (0 = padding), got {bad} outside it "
                     f"(min {ids.min()}, max {ids.max()}). Encode the texts "
                     f"with the tokenizer the model was built for.")


def check_images_texts(images, texts, who, vocab_size=None):
  check_images(images, who)
  if texts.ndim != 2 or not jnp.issubdtype(texts.dtype, jnp.integer):
    raise ValueError(f"{who}: texts must be int32 token ids [batch, len] with "
                     f"0 as padding, got shape {texts.shape}, dtype "
                     f"{texts.dtype}.")
  if images.shape[0] != texts.shape[0]:
    raise ValueError(f"{who}: images batch {images.shape[0]} != texts batch "
                     f"{texts.shape[0]}.")
  check_token_ids(texts, vocab_size, who)


def l2_normalize(x: Array) -> Array:
  """`[..., d]` -> float32 unit vectors along the last axis."""
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def logit_scale(module: nn.Module, init: float, max_scale: float) -> Array:
  """CLIP's learned temperature (Radford et al. 2021, Sec. 2.5): the scalar
  param `logit_scale` holds log(scale), initialised to log(init); returns
  the multiplier exp(.) clamped at max_scale. Call from `setup` or a
  compact method of `module`."""
  log_scale = module.param("logit_scale", losses.logit_scale_init(init), (),
                           jnp.float32)
  return losses.logit_scale_from_param(log_scale, max_scale)


# ----------------------------------------------------------------------------
# DualEncoder
# ----------------------------------------------------------------------------
PROJECTIONS = ("linear", "linear_bias", "none")


@dataclasses.dataclass(frozen=True)
class DualEncoderConfig:
  """CLIP / SigLIP two towers and their projections to `embed_dim`."""
  image: Mapping[str, Any]   # ViT fields
  text: Mapping[str, Any]    # TextTransformer fields, incl. vocab_size
  embed_dim: int
  loss: str = "softmax"      # 'softmax' (CLIP) | 'sigmoid' (SigLIP)
  # The exponentiated multiplier at init; None: 1/0.07 (softmax), 10 (sigmoid).
  logit_scale_init: Optional[float] = None
  logit_bias_init: float = -10.0   # sigmoid only
  max_logit_scale: float = 100.0
  # Projection to embed_dim: 'linear' (no bias, CLIP), 'linear_bias'
  # (SigLIP's text head) or 'none' (the tower's width is embed_dim).
  img_head: str = "linear"
  txt_head: str = "linear"

  def __post_init__(self):
    check_choice("DualEncoder: config.loss", self.loss,
                 ("softmax", "sigmoid"))
    check_choice("DualEncoder: config.img_head", self.img_head, PROJECTIONS)
    check_choice("DualEncoder: config.txt_head", self.txt_head, PROJECTIONS)
    module_kwargs(ViT, self.image, "config.image")
    module_kwargs(TextTransformer, self.text, "config.text")

  @property
  def scale_init(self) -> float:
    if self.logit_scale_init is not None:
      return self.logit_scale_init
    return 1 / 0.07 if self.loss == "softmax" else 10.0


# ----------------------------------------------------------------------------
# FusionModel
# ----------------------------------------------------------------------------
HEADS = ("vqa", "itm", "mlm", "contrastive")
TEXT_QUERIES = ("tokens", "mean")
_HEAD_KEYS = {"num_answers": "vqa", "head_hidden": "vqa",
              "head_dropout": "vqa", "embed_dim": "contrastive"}


@dataclasses.dataclass(frozen=True)
class FusionModelConfig:
  """Image tower + text tower + one fusion strategy + heads."""
  image: Mapping[str, Any]   # ViT fields (pool: the model sets 'none')
  text: Mapping[str, Any]    # TextTransformer fields (pool: from text_query)
  fusion: Mapping[str, Any]  # name + the strategy's fields
  heads: tuple = ("vqa",)
  num_answers: Optional[int] = None   # 'vqa'
  head_hidden: int = 256              # 'vqa'
  head_dropout: float = 0.0           # 'vqa'
  embed_dim: Optional[int] = None     # 'contrastive'
  zero_image: bool = False            # ablation: the image becomes zeros
  # 'tokens': every text token enters the fusion (ALBEF); 'mean': one token,
  # the mean of the text tower's outputs (a question vector).
  text_query: str = "tokens"
  # > 0: the text tower encodes each distinct token row of a batch once, for
  # up to this many distinct rows, and the rows are gathered back (a batch
  # with more is refused by VqaTask on the host, and gives NaN in the model).
  # The same function as 0 (the tower sees one row at a time); cheaper when
  # a batch repeats its questions, as templated VQA data does. Needs text
  # dropout_rate 0 (a dropout mask per row).
  unique_texts: int = 0

  def __post_init__(self):
    object.__setattr__(self, "heads", tuple(self.heads))
    if not isinstance(self.unique_texts, int) or self.unique_texts < 0:
      raise ValueError(f"FusionModel: unique_texts must be an int >= 0 (0 = "
                       f"off), got {self.unique_texts!r}.")
    if self.unique_texts and float(
        self.text.get("dropout_rate", 0.0) or 0.0) > 0:
      raise ValueError(f"FusionModel: unique_texts={self.unique_texts} "
                       f"encodes repeated questions once, so they cannot "
                       f"draw their own dropout masks; set "
                       f"config.text.dropout_rate=0 or unique_texts=0.")
    for head in self.heads:
      if head not in HEADS:
        raise ValueError(f"FusionModel: unknown head {head!r} in "
                         f"config.heads; known: {HEADS}.")
    check_choice("FusionModel: text_query", self.text_query, TEXT_QUERIES)
    if self.text_query != "tokens" and "mlm" in self.heads:
      raise ValueError("FusionModel: the 'mlm' head needs every text token "
                       "in the fusion; set text_query='tokens'.")
    if "contrastive" in self.heads and (not self.embed_dim or
                                        int(self.embed_dim) < 1):
      raise ValueError(f"FusionModel: the 'contrastive' head needs "
                       f"config.embed_dim (an int >= 1), got "
                       f"{self.embed_dim!r}.")
    if "vqa" in self.heads and self.num_answers is None:
      raise ValueError("FusionModel: the 'vqa' head needs "
                       "config.num_answers.")
    module_kwargs(ViT, self.image, "config.image", owned=("pool",))
    module_kwargs(TextTransformer, self.text, "config.text", owned=("pool",))

  def unread(self, given):
    return {k for k in given
            if k in _HEAD_KEYS and _HEAD_KEYS[k] not in self.heads}

  def unread_reason(self):
    return (f"heads={self.heads}; num_answers, head_hidden and head_dropout "
            f"go with 'vqa', embed_dim with 'contrastive'")


# ----------------------------------------------------------------------------
# AudioVisualModel
# ----------------------------------------------------------------------------
# config.audio.spec_augment's keys: spec_augment's keyword arguments.
_SPEC_AUGMENT_KEYS = tuple(
    k for k in inspect.signature(audio_lib.spec_augment).parameters
    if k not in ("rng", "spec"))


@dataclasses.dataclass(frozen=True)
class AudioVisualConfig:
  """Video, audio (and text) towers, one fusion strategy, an answer head."""
  video: Mapping[str, Any]   # VideoTransformer fields
  # AudioTransformer fields plus 'mel': log_mel_spectrogram's keywords, and
  # optionally 'spec_augment': spec_augment's keywords (training only).
  audio: Mapping[str, Any]
  fusion: Mapping[str, Any]  # name + the strategy's fields
  num_answers: int
  # TextTransformer fields: the question tower (unset for event
  # classification, where the model is called without texts).
  text: Optional[Mapping[str, Any]] = None
  head_hidden: int = 256
  zero: tuple = ()           # 'video' / 'audio': replaced by zeros (floors)

  def __post_init__(self):
    object.__setattr__(self, "zero", tuple(self.zero))
    if set(self.zero) - {"video", "audio"}:
      raise ValueError(f"AudioVisualModel: zero may name 'video' and "
                       f"'audio', got {self.zero}.")
    audio = dict(self.audio)
    if "mel" not in audio:
      raise ValueError("config.audio.mel is required: log_mel_spectrogram's "
                       "keyword arguments (sample_rate, n_fft, hop_length, "
                       "n_mels).")
    del audio["mel"]
    augment = audio.pop("spec_augment", None)
    if augment is not None:
      unknown = sorted(set(augment) - set(_SPEC_AUGMENT_KEYS))
      if unknown:
        raise ValueError(f"config.audio.spec_augment: unknown key(s) "
                         f"{unknown}; its keys are {list(_SPEC_AUGMENT_KEYS)} "
                         f"(mmtx.layers.audio.spec_augment).")
    module_kwargs(AudioTransformer, audio, "config.audio", owned=("pool",))
    module_kwargs(VideoTransformer, self.video, "config.video",
                  owned=("pool",))
    if self.text is not None:
      module_kwargs(TextTransformer, self.text, "config.text",
                    owned=("pool",))


# ----------------------------------------------------------------------------
# Captioner
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaptionerTextConfig:
  """The Captioner's text side: embeddings and both decoders."""
  vocab_size: int
  width: int
  depth: int         # unimodal decoder layers
  mlp_dim: int
  num_heads: int
  max_len: int
  dropout_rate: float = 0.0
  dtype: str = "float32"
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  # The CLS token gets position row t (t text tokens; the table has max_len
  # + 1 rows) and text tokens 0..t-1 (right-padded texts).
  cls_position: bool = False
  # 'cls': keys are the real tokens and the CLS; 'shifted': key 0 always,
  # key j iff token j-1 is real (open_clip's CoCa, correct_cls_mask=False).
  cls_mask: str = "cls"

  def __post_init__(self):
    if self.cls_mask not in ("cls", "shifted"):
      raise ValueError(f"config.text.cls_mask: expected 'cls' or 'shifted', "
                       f"got {self.cls_mask!r}.")
    for key in ("vocab_size", "width", "depth", "mlp_dim", "num_heads",
                "max_len"):
      if int(getattr(self, key)) < 1:
        raise ValueError(f"config.text.{key}: expected an int >= 1, got "
                         f"{getattr(self, key)}.")


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
  """CoCa: image tower, attentional pooling, unimodal + multimodal text
  decoders (see mmtx.models.captioner)."""
  image: Mapping[str, Any]   # ViT fields except pool
  text: Any                  # CaptionerTextConfig fields
  decoder_depth: int         # multimodal decoder layers
  embed_dim: int
  # How img_emb pools the ViT tokens: 'attention' | 'gap' | 'shared' (one
  # pool of 1 + num_queries queries; query 0 gives img_emb, the rest the
  # context, as open_clip's CoCa).
  pool: str = "attention"
  num_queries: int = 0       # 0: the context is the ViT tokens
  tie_embeddings: bool = True
  logit_scale_init: float = 1.0 / 0.07
  max_logit_scale: float = 100.0
  class_token: bool = False  # the ViT prepends a class token the pools read
  pool_dim: int = 0          # the pools' query/output width (0: the ViT's)
  pool_heads: int = 0        # the pools' heads (0: the ViT's)
  pool_query_norm: bool = False  # a LayerNorm on the pools' learned queries
  head_bias: bool = True     # the untied LM head has a bias
  # 'fused' (layers.Decoder) or 'split' (SplitDecoder: self- and
  # cross-attention blocks with an MLP each, open_clip's CoCa layout).
  decoder_layer: str = "fused"

  def __post_init__(self):
    if isinstance(self.text, Mapping) or hasattr(self.text, "to_dict"):
      object.__setattr__(self, "text", parse(CaptionerTextConfig, self.text,
                                             "config.text"))
    image = as_dict(self.image)
    if "pool" in image:
      raise ValueError("config.image.pool: the Captioner reads all ViT "
                       "tokens (pool='none') and pools them itself; remove "
                       "the key and set config.pool ('attention' or 'gap') "
                       "instead.")
    module_kwargs(ViT, image, "config.image")
    if self.pool not in ("attention", "gap", "shared"):
      raise ValueError(f"config.pool: expected 'attention', 'gap' or "
                       f"'shared', got {self.pool!r}.")
    if self.pool == "shared" and int(self.num_queries) < 1:
      raise ValueError("config.num_queries: pool='shared' takes img_emb from "
                       "the context pool, so it needs num_queries >= 1, got "
                       f"{self.num_queries}.")
    if self.decoder_layer not in ("fused", "split"):
      raise ValueError(f"config.decoder_layer: expected 'fused' or 'split', "
                       f"got {self.decoder_layer!r}.")
    for key, lo in (("decoder_depth", 1), ("embed_dim", 1),
                    ("num_queries", 0), ("pool_dim", 0), ("pool_heads", 0)):
      if int(getattr(self, key)) < lo:
        raise ValueError(f"config.{key}: expected an int >= {lo}, got "
                         f"{getattr(self, key)}.")

  @property
  def image_heads(self) -> int:
    """The ViT's head count (explicit, or from its variant)."""
    image = as_dict(self.image)
    base = decode_variant(image["variant"]) if image.get("variant") else {}
    heads = image.get("num_heads") or base.get("num_heads")
    if heads is None:
      raise ValueError("config.image: num_heads is unset; give a variant "
                       "(e.g. 'S/16') or num_heads.")
    return heads

