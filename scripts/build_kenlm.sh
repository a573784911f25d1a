#!/usr/bin/env bash
# Build KenLM from the kenlm source distribution on PyPI:
#   - lmplz (estimator) and build_binary (binarizer), installed into DEST (default .venv/bin);
#   - the query library (static libkenlm.a + libkenlm_util.a, position-independent) and its headers,
#     installed into PREFIX (default DEST/../kenlm: include/{lm,util}, lib/, max_order), which the
#     native beam-search decoder (emgscale/decode/csrc) compiles and links against on first use.
# One KENLM_MAX_ORDER (env, default 8) is used for the binaries, the library and, through
# PREFIX/max_order, the decoder extension. Needs cmake, a C++ compiler and Boost; on Debian/Ubuntu the
# packages are installed with apt-get when missing and we are root.
# Usage: scripts/build_kenlm.sh [DEST_BIN_DIR] [PREFIX]
set -euo pipefail
DEST=${1:-.venv/bin}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
PREFIX=${2:-$DEST/../kenlm}
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
case "$PREFIX" in /|"$HOME") echo "[kenlm] refusing PREFIX=$PREFIX (it is replaced whole)" >&2; exit 1;; esac
MAX_ORDER=${KENLM_MAX_ORDER:-8}
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
need_pkgs=(libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
           libeigen3-dev cmake g++)
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
echo "[kenlm] building lmplz, build_binary and the query library, max order $MAX_ORDER (about a minute)"
# --no-binary for kenlm only: ':all:' would also build kenlm's build dependencies (cmake!) from source.
"$PY" -m pip download -q --no-binary kenlm --no-deps -d "$work" kenlm==0.3.0
tar -xzf "$work"/kenlm-*.tar.gz -C "$work"
src=$(find "$work" -maxdepth 1 -type d -name 'kenlm-*' | head -1)
# Compression support is switched off so the static library needs nothing beyond pthread; emgscale
# decompresses .gz/.bz2/.xz training text itself.
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER="$MAX_ORDER" \
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_ZLIB=ON -DCMAKE_DISABLE_FIND_PACKAGE_BZip2=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_LibLZMA=ON >/dev/null
cmake --build "$work/build" --target lmplz build_binary kenlm kenlm_util -j "$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; echo "[kenlm] build failed" >&2; exit 1; }
install -m 755 "$work/build/bin/lmplz" "$work/build/bin/build_binary" "$DEST/"
# Library + headers; written to a temporary folder first and moved into place, so a half-finished
# build never looks complete to the decoder.
stage="$PREFIX.tmp.$$"
rm -rf "$stage"
mkdir -p "$stage/lib" "$stage/include"
install -m 644 "$work/build/lib/libkenlm.a" "$work/build/lib/libkenlm_util.a" "$stage/lib/"
(cd "$src" && find lm util \( -name '*.hh' -o -name '*.h' \) -print0 | xargs -0 -I{} install -D -m 644 {} "$stage/include/{}")
echo "$MAX_ORDER" > "$stage/max_order"
rm -rf "$PREFIX"
mv "$stage" "$PREFIX"
echo "[kenlm] installed lmplz and build_binary into $DEST, the KenLM library into $PREFIX"
