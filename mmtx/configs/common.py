"""Pieces every config shares: the trainer fields, mesh, optimizer, transfer."""
import dataclasses
import difflib

import ml_collections


def parse_args(arg: str, config: str, **defaults) -> dict:
  """A config file's ARGS string ('k=v,k2=v2', after the ':' in
  --config=configs/NAME.py:ARGS) -> {name: value} over `defaults`, which name
  every arg `config` accepts with its default. A value is converted to its
  default's type when that is int or float. A misspelt or malformed item is
  an error naming the valid args (and the closest), not a silent default."""
  args = dict(defaults)
  for item in (a for a in arg.split(",") if a):
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"{config}: arg {item!r} is not key=value; args are "
                       f"comma-separated k=v (valid: {sorted(defaults)}).")
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.5)
      raise ValueError(f"{config}: unknown arg {key!r}; valid: "
                       f"{sorted(defaults)}" + (f" (closest: {close})" if close
                                                else "") + ".")
    kind = type(defaults[key])
    if kind in (int, float):
      try:
        value = kind(value)
      except ValueError:
        a = "an int" if kind is int else "a float"
        raise ValueError(f"{config}: arg {key}={value!r} is not {a} "
                         f"(default: {defaults[key]!r}).") from None
    args[key] = value
  return args


def base(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "vqa"
  c.total_steps = 1000
  c.batch_size = 64
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.best_metric = "accuracy"  # an eval metric name ('' = keep latest only)
  c.best_mode = "max"
  # cpu_devices: split a CPU-only host into this many XLA devices (data
  # parallel across its cores; 0 = one device). Applied by `mmtx.main`
  # before JAX starts (sharding.set_cpu_devices); ignored on accelerators.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                          num_devices=-1, cpu_devices=0))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=1e-4, warmup_steps=100, schedule="cosine",
      # schedule: 'cosine', 'constant' or 'wsd' (warmup, constant, then a
      # linear decay over the last decay_fraction of the steps).
      end_lr_factor=0.01, decay_fraction=0.2, grad_clip_norm=1.0,
      accumulate_steps=1, freeze=(), lr_multipliers=(), layer_decay=0.0))
  # Pretrain -> fine-tune: params from another run's latest checkpoint, with
  # [regex, replacement] rules mapping this model's param paths to its paths;
  # or released weights (weights: a Hugging Face directory or hub name, or an
  # open_clip file of the architecture `preset` names: mmtx.interop.weights),
  # which the task imports and every param must come from. inflate: how a
  # checkpoint's 2-D patch kernel starts a video tower's tubelet kernel
  # ('central' frame as ViViT, 'average' as I3D, '' = not at all).
  c.init_from = ml_collections.ConfigDict(dict(workdir="", rules=(),
                                               weights="", preset="",
                                               inflate="central"))
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def data(name, **kw) -> ml_collections.ConfigDict:
  # train_fraction: train on the first round(fraction * records) records of
  # train_split (label-efficiency runs); 1.0 = all of it.
  # questions_per_image (VQA training only): 0 = one example per question;
  # Q > 0 = one example per image with Q of its questions, so the image
  # tower runs once per Q questions (batch_size then counts images).
  # Encoded images (ingested datasets): image_size, the crop's side (0 = the
  # dataset's own size); normalize, the model's constants ('minus_one_one',
  # 'clip', 'imagenet'); hflip, random training flips where no text says
  # left or right; num_workers, grain processes that decode (0 = threads).
  d = dict(name=name, train_split="train", eval_splits=("test",),
           eval_batch_size=256, max_len=16, augment=False, data_dir="",
           tokenizer="", train_fraction=1.0, questions_per_image=0,
           image_size=0, normalize="minus_one_one", hflip=False,
           num_workers=0)
  d.update(kw)
  return ml_collections.ConfigDict(d)


def fusion(name: str, target: str, **fields) -> dict:
  """config.model.fusion for strategy `name` from settings a config gives
  every strategy. `target` (the modality that queries) and the common
  fields of mmtx.fusion.Fusion (dim, num_heads, num_layers, mlp_dim, ...)
  go in only where the strategy reads them (`fusion_fields(name)`: only a
  DirectionalFusion has a target, 'sum' has no attention and so no
  num_heads), as a model's config.fusion holds only fields its strategy
  reads; so `:fusion=NAME` switches strategy with one flag. Any other field
  goes in as given (build_fusion names it if the strategy does not read
  it)."""
  from mmtx import fusion as fusion_lib
  reads = fusion_lib.fusion_fields(name)
  shared = {f.name for f in dataclasses.fields(fusion_lib.DirectionalFusion)}
  fields["target"] = target
  return dict(name=name, **{k: v for k, v in fields.items()
                            if k in reads or k not in shared})


def av_towers(width: int) -> dict:
  """The video and audio towers of the AV-Scenes jobs (avqa, av_event)."""
  w = width
  return dict(
      # 8 frames of 32x32 -> 4 x 4 x 4 tubelets of 2 x 8 x 8.
      video=dict(width=w, depth=1, mlp_dim=2 * w, num_heads=4,
                 patch_size=(2, 8, 8), attention="joint"),
      # 1 s at 8 kHz -> 33 frames x 32 mels; 4 x 8 patches (one per 125 ms).
      audio=dict(width=w, depth=1, mlp_dim=2 * w, num_heads=4,
                 patch_size=(4, 8), strides=(4, 8),
                 mel=dict(sample_rate=8000, n_fft=256, hop_length=250,
                          n_mels=32)))


def image_tower(width: int, depth: int = 0, **kw) -> dict:
  """The image tower of the default VQA job: three 3x3 stride-2
  convolutions (75x75 -> 10x10 tokens of ~8x8 pixels), fixed 2-D sin-cos
  positions and `depth` self-attention layers (0 = none). Temperature 30
  spreads the 16 frequencies per axis over 10 positions (with 10^4 most are
  nearly constant). On Sort-of-CLEVR it finds the named object several
  times faster than a ViT on 15-pixel patches with learned positions
  (experiments/results/README.md, "Default job")."""
  return dict(patch_size=1, stem_channels=(32, 32, 32), width=width,
              depth=depth, mlp_dim=2 * width, num_heads=4, posemb="sincos2d",
              posemb_temperature=30.0, dtype="float32", **kw)


def published_model(c, args: dict, full, *, captioner: bool,
                    where: str) -> dict:
  """The model dict of a config's preset= / init= args (configs/clip.py,
  configs/caption.py): read from the init= weights (a Hugging Face
  directory or an open_clip file of the preset's architecture), or built
  from the preset; `full` completes it with every key the CLI can set. Sets
  c.data's image and text settings and c.init_from to match."""
  # Imported here: the interop pulls in the models and torch, which a plain
  # run's config does not need.
  from mmtx.interop import presets, weights  # noqa: E402
  if args["init"]:
    imported, params = weights.load(args["init"], args["preset"])
    weights.check_model(imported, args["init"], captioner, where)
    model = full(imported.to_dict())
    c.data.update(weights.data_settings(model, params, args["init"]))
  else:
    preset, image_size = (presets.captioner_preset if captioner
                          else presets.preset)(args["preset"])
    model = full(preset.to_dict())
    c.data.update(weights.data_settings(model), image_size=image_size)
  c.init_from.weights = args["init"]
  c.init_from.preset = args["preset"]
  return model
