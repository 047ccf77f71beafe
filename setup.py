"""mmtx: multimodal Transformers in JAX/Flax."""
import setuptools

# Ranges admit both the CPU machines (Python 3.11, JAX 0.10.x) and the GPU
# machines (Python 3.12, JAX 0.11.x with flax/optax/orbax preinstalled).
INSTALL_REQUIRES = [
    "jax>=0.10,<0.13",
    "flax>=0.12,<0.14",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "tensorflow-datasets>=4.9.9,<5",
    "array-record>=0.8",
    "grain>=0.2.12,<0.3",
    "ml-collections>=1.0,<2",
    "absl-py>=2",
    "numpy>=1.26",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "sentencepiece>=0.2",
    "easy-vqa==1.0",
    "pillow>=10",  # image decoding; the notebook's attention sheet
    "ftfy>=6", "regex>=2023",  # ClipBpeTokenizer's text cleaning
]

# Weights in and out of Hugging Face transformers and open_clip
# (mmtx.interop).
INTEROP_REQUIRES = [
    "torch>=2.4",
    "transformers>=4.57,<5",
    "open_clip_torch>=3.2,<4",
    "safetensors>=0.4",
]

# The experiment scripts' charts.
EXPERIMENTS_REQUIRES = ["matplotlib>=3.8,<4"]

# Decoding users' audio and video files in `python -m mmtx.data ingest
# av_*` (mmtx.data.clips): WAV / FLAC through libsndfile, MP4 through FFmpeg
# (both ship inside their wheels).
AV_REQUIRES = ["soundfile>=0.12", "av>=12"]

# References the tests compare against: open_clip's losses, pycocoevalcap's
# BLEU/CIDEr, librosa's mel spectrogram, soxr's resampling, scikit-learn's
# average precision, Hugging Face CLIP / SigLIP
# (transformers 4.57 is the last release with the Flax models the CPU
# benchmark also runs).
# torch/torchvision are pinned as a pair that imports together (a mismatched
# pair fails at import). setuptools builds the wheel that a test installs and
# runs outside the checkout.
TEST_REQUIRES = EXPERIMENTS_REQUIRES + INTEROP_REQUIRES + AV_REQUIRES + [
    "setuptools>=70.1",
    "pytest>=8",
    "pytest-xdist>=3.5",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "pycocoevalcap==1.2",
    "transformers>=4.57,<4.58",
    "librosa>=0.10,<2",   # the log-mel front end's reference
    "webdataset>=0.2.100,<2",   # the image input benchmark's peer loader
    "soxr>=0.3",          # the audio resampler's reference
    "scikit-learn>=1.3",  # the mean average precision's reference
]

setuptools.setup(
    name="mmtx",
    version="0.1.0",
    description="JAX/Flax research codebase for multimodal Transformers",
    packages=setuptools.find_packages(include=["mmtx", "mmtx.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={"av": AV_REQUIRES,
                    "experiments": EXPERIMENTS_REQUIRES,
                    "interop": INTEROP_REQUIRES,
                    "test": TEST_REQUIRES},
)
