#!/usr/bin/env bash
# The generic (zero-shot) benchmark: 837 train sessions of 96 users, 192 val, 16 test (319 h of EMG).
# Expected (float16): train 153 GB in ~576 shards, val 34 GB, test 2.1 GB (whole sessions).
#   DATA=/data/emg2qwerty SPLITS=/path/to/splits OUT=/scratch/shards/generic WORKERS=16 bash sharding/generic.sh
set -euo pipefail
DATA=${DATA:?set DATA to the folder of <session>.hdf5 files}
SPLIT=${SPLIT:-${SPLITS:?set SPLITS to the folder of the official split YAMLs}/generic.yaml}
OUT=${OUT:-shards/generic}
python -m emgscale.shard --data-root "$DATA" --split "$SPLIT" --out "$OUT" --workers "${WORKERS:-8}" --skip-bad "$@"
python -m emgscale.shard verify "$OUT"
