"""Weights in and out, each as (config, params) for `mmtx.models.DualEncoder`:
`hf_clip` (transformers CLIPModel, both ways), `hf_siglip` (SiglipModel, both
ways), `open_clip` (open_clip CLIP / SigLIP models, in; CoCa -> `Captioner`
in and out through `open_clip_coca`), `presets` (configs at
the published sizes), `weights` (any of them by path or hub name, for
configs/clip.py:init=), `wise_ft` (interpolating fine-tuned weights with the
zero-shot ones). `mapping` is the rule table they share."""
