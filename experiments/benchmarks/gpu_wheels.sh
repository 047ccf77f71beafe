#!/usr/bin/env bash
# Downloads, into .whl/ (git-ignored), the wheels that the lent GPU machine
# (Python 3.12; JAX, flax, optax, orbax, torch, timm preinstalled) lacks for
# gpu_session.sh: the data stack, open_clip, librosa and transformers 4.57
# (mmtx.interop targets 4.x; the machine has 5.x). ~30 MB. Run here, once,
# from the repository root, then carry .whl with the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for p in tensorflow-datasets==4.9.10 array-record==0.8.6 grain==0.2.18 \
         ml-collections==1.1.0 tensorboardX==2.6.5 easy-vqa==1.0 \
         open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 dm-tree==0.1.10 \
         immutabledict==4.3.1 simple-parsing==0.1.9 \
         tensorflow-metadata==1.21.0 toml==0.10.2 termcolor==3.3.0 \
         docstring-parser==0.18.0 googleapis-common-protos==1.76.0 \
         transformers==4.57.6 librosa==0.11.0 soundfile==0.14.0 \
         audioread==3.1.0 soxr==1.1.0 pooch==1.9.0 decorator==5.3.1; do
  python3 -m pip download -q --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp "${plat[@]}" -d .whl "$p"
done
# promise (needed by TFDS's download manager) ships as a source archive only.
python3 -m pip wheel -q --no-deps -w .whl promise==2.3
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
du -sh .whl
