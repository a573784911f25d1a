#!/usr/bin/env bash
# Build KenLM's lmplz (estimator) and build_binary (binarizer) from the kenlm source distribution
# on PyPI and install them into DEST (default .venv/bin). Needs cmake, a C++ compiler and Boost;
# on Debian/Ubuntu the Boost packages are installed with apt-get when missing and we are root.
set -euo pipefail
DEST=${1:-.venv/bin}
DEST=$(cd "$DEST" && pwd)
need_pkgs=(libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
           libeigen3-dev zlib1g-dev libbz2-dev liblzma-dev cmake g++)
if command -v dpkg >/dev/null 2>&1; then
  missing=()
  for p in "${need_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "[kenlm] installing ${missing[*]}"
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "[kenlm] missing system packages: ${missing[*]} (install them, then rerun)" >&2
      exit 1
    fi
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[kenlm] building lmplz and build_binary (about a minute)"
python -m pip download -q --no-binary :all: --no-deps -d "$work" kenlm==0.3.0
tar -xzf "$work"/kenlm-*.tar.gz -C "$work"
src=$(find "$work" -maxdepth 1 -type d -name 'kenlm-*' | head -1)
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=8 >/dev/null
cmake --build "$work/build" --target lmplz build_binary -j "$(nproc)" >/dev/null
install -m 755 "$work/build/bin/lmplz" "$work/build/bin/build_binary" "$DEST/"
echo "[kenlm] installed lmplz and build_binary into $DEST"
