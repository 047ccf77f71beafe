#!/usr/bin/env bash
# Runs a command inside the project's virtual environment, creating it and
# installing mmtx first when needed (or when setup.py changed since the last
# install). It installs what the command needs: the package alone for the
# main job, matplotlib too for an experiments/ script, and the test
# references (torch, open_clip, transformers, ...) only for pytest.
# Usage:
#   ./run.sh python -m mmtx.main [flags]     # the main job
#   ./run.sh python -m pytest                # the test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV=${MMTX_VENV:-.venv}
PY=""
for cand in python3 python3.12 python3.11; do
  if command -v "$cand" >/dev/null 2>&1 &&
     "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$cand; break
  fi
done
[ -n "$PY" ] || { echo "run.sh: mmtx needs Python >= 3.11 on PATH (python3.11 or python3.12)." >&2; exit 1; }
# Install levels, each a superset of the one before: 0 the package, 1 with
# the 'experiments' extra, 2 with the 'test' extra.
want=0
for a in "$@"; do
  case "$a" in
    *pytest*) want=2 ;;
    experiments/*|*/experiments/*) [ "$want" -ge 1 ] || want=1 ;;
  esac
done
extras=("" "[experiments]" "[test]")
stamp="$VENV/.mmtx-install-stamp"
hash=$(sha256sum setup.py | cut -d' ' -f1)
read -r have_hash have_level 2>/dev/null <"$stamp" || true
level=${have_level:-0}
if [ ! -x "$VENV/bin/python" ] || [ "${have_hash:-}" != "$hash" ] ||
   [ "$level" -lt "$want" ]; then
  [ "$level" -ge "$want" ] || level=$want
  echo "run.sh: installing mmtx${extras[$level]} into $VENV (first run, more extras, or setup.py changed; takes a few minutes)..." >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
         "$VENV/bin/python" -m pip install -e ".${extras[$level]}"; } >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -30 >&2
    echo "run.sh: installing mmtx failed; full log in $log" >&2
    exit 1
  fi
  echo "$hash $level" >"$stamp"
  echo "run.sh: $VENV ready." >&2
fi
export PATH="$PWD/$VENV/bin:$PATH"
# XLA:CPU allocates a compiled step's temporaries afresh on every call, and
# glibc served blocks that large from fresh mappings that it unmapped on
# free, so every training step faulted its working set back in, 4 KiB at a
# time (cpu_step's CLIP: 256 MiB, 66k faults, ~100 ms of a 210 ms step).
# No mappings for large blocks and no trimming let a step reuse the last
# one's memory (where glibc can: the main arena, i.e. mmtx's synchronous
# single-device CPU dispatch, sharding.set_cpu_sync_dispatch); transparent
# huge pages cover what is still mapped. One arena would cover every
# thread but slows the two-device default job by ~15 %. Measurements:
# experiments/benchmarks/NOTES.md. glibc < 2.35 ignores hugetlb; malloc
# settings of the caller's own win.
case "${GLIBC_TUNABLES:-}" in
  *glibc.malloc.*) ;;
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736" ;;
esac
exec "$@"
