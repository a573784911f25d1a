#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job end to end on the embedded default:
# synthetic corpus -> shards -> small generic model -> zero-shot and personalized evaluation -> table + plots.
# Extra arguments go to `python -m emgscale.bench demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source "${EMGSCALE_VENV:-.venv}/bin/activate"
exec python -m emgscale.bench demo --out results/demo --jobs 2 "$@"
