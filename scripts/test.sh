#!/usr/bin/env bash
# Set up the environment (idempotent) and run the default test suite (the fast loop: about 6 minutes on 2 cores).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "slow or ray"` for the end-to-end and Ray checks (.ci/run runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source "${EMGSCALE_VENV:-.venv}/bin/activate"
export EMGSCALE_PROGRESS=${EMGSCALE_PROGRESS:-0}
exec python -m pytest -q -p no:cacheprovider --timeout=900 "$@"
