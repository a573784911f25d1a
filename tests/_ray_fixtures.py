"""Helpers for the Ray and SWAD tests: a tiny deterministic training config and a local Ray cluster.

The tiny config makes a 2-worker DDP run comparable with a single process: sessions exactly one window
long (so training windows are never jittered), no augmentation, no dropout, no batch statistics
(``features.norm=none``), a small TDS model, HDF5 input (the loader deals global-order samples
``order[rank::world]``, so two ranks' half-batches together are the single process's batch).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from emgscale.config import build_config
from emgscale.train import TrainConfig

#: Environment for a Ray instance that keeps every listener on 127.0.0.1 (see cluster/README.md), plus
#: two Ray Train settings that only shorten tests: poll workers every 0.5 s (default 2 s) and skip the
#: spot-instance preemption watcher.
RAY_TEST_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
SESSION_SECONDS = 2.0  # sessions of exactly one 4000-sample window


def tiny_overrides(data_root: Path, split: Path, out_dir: Path) -> list[str]:
    """``dotted.key=value`` overrides of a tiny, deterministic CPU training run."""
    window = int(SESSION_SECONDS * 2000)
    return [
        f"data.data_root={data_root}", f"data.split={split}", f"data.window.window_samples={window}",
        "data.window.pad_left_samples=0", "data.window.pad_right_samples=0", "data.batch_size=4", "data.val_mode=windows",
        "model.arch=tds", "model.tds.block_channels=[4]", "model.tds.kernel_width=4",
        "model.frontend.mlp_features=[16]", "model.features.channels=[0,4,8,12]", "model.features.norm=none",
        "model.augment.band_rotation=0", "model.augment.temporal_jitter_samples=0",
        "model.augment.time_masks=0", "model.augment.freq_masks=0",
        "optim.lr=3e-3", "optim.warmup_epochs=0", f"run.out_dir={out_dir}", "run.max_epochs=2",
        "run.eval_every_steps=2", "run.ckpt_every_steps=0", "run.log_every_steps=1", "run.tensorboard=false",
        "run.threads=1", "run.seed=7",
    ]


def tiny_config(data_root: Path, split: Path, out_dir: Path, *extra: str) -> TrainConfig:
    """The tiny config plus ``extra`` overrides."""
    return build_config(TrainConfig, [], [*tiny_overrides(data_root, split, out_dir), *extra])


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[None]:
    """A private Ray instance (``run.ray_address=local``), shut down (and its temp dir removed) afterwards."""
    from emgscale.cluster import LOCAL, connect, shutdown

    old = {k: os.environ.get(k) for k in RAY_TEST_ENV}
    os.environ.update(RAY_TEST_ENV)
    connect(LOCAL, num_cpus=num_cpus)  # run.ray_address=local: a private instance in a 0700 temp dir
    try:
        yield
    finally:
        shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
