#!/usr/bin/env bash
# The whole dataset: all 1,135 sessions of 108 users (346 h) as training chunks, plus the generic
# split's val windows and test sessions in the same folder (one manifest). Any split can then train
# from these shards by session filter (data.sessions) while evaluating on the stored val/test parts.
# Expected (float16): train 207 GB in ~781 shards, val 34 GB, test 2.1 GB.
#   DATA=/data/emg2qwerty SPLITS=/path/to/splits OUT=/scratch/shards/all WORKERS=16 bash sharding/whole_dataset.sh
set -euo pipefail
DATA=${DATA:?set DATA to the folder of <session>.hdf5 files}
SPLIT=${SPLIT:-${SPLITS:?set SPLITS to the folder of the official split YAMLs}/generic.yaml}
OUT=${OUT:-shards/all}
python -m emgscale.shard --data-root "$DATA" --parts train --out "$OUT" --workers "${WORKERS:-8}" --skip-bad "$@"
python -m emgscale.shard --data-root "$DATA" --split "$SPLIT" --parts val,test --out "$OUT" --workers "${WORKERS:-8}" --skip-bad "$@"
python -m emgscale.shard verify "$OUT"
