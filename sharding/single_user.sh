#!/usr/bin/env bash
# One subject: the UCLA course split of user 89335547 (16 train, 1 val, 1 test sessions; 4.8 h of EMG).
# Expected: train 2.55 GB (float16) in ~10 shards, val 0.14 GB, test 0.14 GB; a few minutes on 4 cores.
#   DATA=/data/emg2qwerty SPLITS=/path/to/emg2qwerty/config/user OUT=shards/single_user bash sharding/single_user.sh
set -euo pipefail
DATA=${DATA:?set DATA to the folder of <session>.hdf5 files}
SPLIT=${SPLIT:-${SPLITS:?set SPLITS to the folder of the official split YAMLs}/single_user.yaml}
OUT=${OUT:-shards/single_user}
python -m emgscale.shard --data-root "$DATA" --split "$SPLIT" --out "$OUT" --workers "${WORKERS:-4}" "$@"
python -m emgscale.shard verify "$OUT"
