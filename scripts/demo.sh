#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job end to end on the embedded default:
# synthetic corpus -> shards -> small generic model -> zero-shot and personalized evaluation -> tables + plots.
# Extra arguments go to `python -m emgscale.bench demo` (e.g. --budget tiny for the one-minute version).
# Corpus, shards and models go to the user-level benchmark cache ($EMGSCALE_CACHE, else
# ~/.cache/emgscale/bench), where later benchmarks (any --out) reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source "${EMGSCALE_VENV:-.venv}/bin/activate"
python -m emgscale.bench demo --out results/demo --jobs 2 "$@"
echo "[demo] tables: results/demo/zero_shot/table.md, results/demo/personalized/table.md"
echo "[demo] plots:  results/demo/zero_shot/zero_shot.png, results/demo/personalized/personalized.png"
echo "[demo] full results (per user, settings, provenance): results/demo/*/results.json"
