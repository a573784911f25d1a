#!/usr/bin/env bash
# Idempotent environment setup: a virtualenv in .venv with torch 2.13.0 (CPU wheel), emgscale and
# its extras, and KenLM's lmplz/build_binary for building language models. A second run reuses all.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EMGSCALE_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.emgscale-setup-$(sha1sum pyproject.toml scripts/setup.sh scripts/build_kenlm.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # torch first, exactly 2.13.0: any other request would pull a multi-GB CUDA build.
  python -c "import torch,sys; sys.exit(torch.__version__.split('+')[0]!='2.13.0')" 2>/dev/null \
    || python -m pip install -q torch==2.13.0
  python -m pip install -q -e ".[all]"
  touch "$stamp"
fi
# KenLM's estimator, binarizer and C++ query library ship in no wheel: build them once into
# $VENV/bin and $VENV/kenlm (the native beam-search decoder compiles against the library).
if [ ! -x "$VENV/bin/lmplz" ] || [ ! -x "$VENV/bin/build_binary" ] || [ ! -f "$VENV/kenlm/lib/libkenlm.a" ]; then
  bash scripts/build_kenlm.sh "$VENV/bin"
fi
echo "[setup] environment ready: $VENV"
