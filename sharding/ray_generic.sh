#!/usr/bin/env bash
# The generic benchmark sharded by Ray tasks on a cluster (one task per shard, any node).
# DATA, SPLITS and OUT must be paths every node sees (NFS, Lustre, EFS, a FUSE mount...).
#   ray start --head ...   (and ray start --address HEAD:6379 on the other nodes)
#   DATA=/shared/emg2qwerty SPLITS=/shared/splits OUT=/shared/shards/generic bash sharding/ray_generic.sh
set -euo pipefail
DATA=${DATA:?set DATA to a shared folder of <session>.hdf5 files}
SPLIT=${SPLIT:-${SPLITS:?set SPLITS to the folder of the official split YAMLs}/generic.yaml}
OUT=${OUT:?set OUT to a shared output folder}
ray job submit --address "${RAY_DASHBOARD:-http://127.0.0.1:8265}" --working-dir . -- \
  python -m emgscale.shard --data-root "$DATA" --split "$SPLIT" --out "$OUT" --ray-address auto --skip-bad "$@"
python -m emgscale.shard verify "$OUT"
