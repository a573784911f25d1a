#!/usr/bin/env bash
# Set up the environment (idempotent) and run the default test suite (under 10 minutes on 2 cores).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow end-to-end checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source "${EMGSCALE_VENV:-.venv}/bin/activate"
export EMGSCALE_PROGRESS=${EMGSCALE_PROGRESS:-0}
exec python -m pytest -q -p no:cacheprovider --timeout=900 "$@"
