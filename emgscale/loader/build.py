"""The dispatcher: :func:`build_loader` picks the source of a :class:`~emgscale.loader.base.DataConfig`
(see :mod:`emgscale.loader`)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from emgscale.common import rank as env_rank
from emgscale.common import world_size as env_world_size
from emgscale.data.device import DeviceView, apply_view
from emgscale.data.splits import normalize_user
from emgscale.data.windows import Batch
from emgscale.features.config import FeatureConfig
from emgscale.loader.base import DataConfig, Loader, Selection
from emgscale.loader.feature_cache import FeatureCache
from emgscale.loader.csv import csv_loader
from emgscale.loader.hdf5 import hdf5_loader
from emgscale.loader.shards import shard_loader


def build_loader(cfg: DataConfig, part: str, *, train: bool, seed: int, epoch: int = 0, rank: int | None = None,
                 world_size: int | None = None, batch_size: int | None = None, users: list[str] | None = None,
                 sessions: list[str] | None = None, max_minutes_per_user: float | None = None,
                 limit_samples: int | None = None, features: FeatureConfig | None = None) -> Loader:
    """Batches of ``part`` for training (shuffled, jittered, an epoch long) or evaluation (every sample once).

    Args:
        cfg: the data config.
        part: ``train``, ``val`` or ``test``.
        train: shuffle and jitter (else a deterministic pass).
        seed, epoch: seed the order and jitter; the same arguments give the same batches.
        rank, world_size: this process among the data-parallel ones (default: from
            ``torch.distributed`` or the RANK / WORLD_SIZE environment).
        batch_size: this rank's batch size (default: ``cfg.batch_size``).
        users, sessions, max_minutes_per_user, limit_samples: override the config's subsets.
        features: the model's feature settings; needed (and used) only with ``cfg.feature_cache``.

    Returns:
        A :class:`Loader` of :class:`Batch` (``emg`` (B, T, 2, 16) float32 with ``emg_lengths``; with
        ``cfg.feature_cache``, windowed batches carry ``features`` and ``emg`` None).

    Raises:
        ValueError: inconsistent settings (no source, windowing different from the shards', ...); the
            settings :meth:`DataConfig.check` judges are assumed checked (launch and ``train()`` do).
        DataError: a missing or bad split, manifest or session file.
    """
    rank = env_rank() if rank is None else rank
    world = env_world_size() if world_size is None else world_size
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    if part not in ("train", "val", "test"):
        raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
    users = users if users is not None else cfg.users
    sessions = sessions if sessions is not None else cfg.sessions
    sel = Selection(users=frozenset(normalize_user(u) for u in users) if users else None,
                    sessions=frozenset(sessions) if sessions else None,
                    max_minutes=max_minutes_per_user if max_minutes_per_user is not None else cfg.max_minutes_per_user)
    bs = batch_size or cfg.batch_size
    limit = limit_samples if limit_samples is not None else cfg.limit_samples
    extra = {}
    if cfg.feature_cache:  # which settings it works with: DataConfig.check (launch and train() call it)
        if features is None:
            raise ValueError("data.feature_cache needs the model's feature settings: "
                             "build_loader(..., features=cfg.model.features)")
        extra["cache"] = FeatureCache(cfg.feature_cache, features)
    source = csv_loader if cfg.format == "csv" else shard_loader if cfg.shards else hdf5_loader
    loader = source(cfg, part, train=train, seed=seed, epoch=epoch, rank=rank, world=world, batch_size=bs, sel=sel,
                    limit=limit, **extra)
    if not cfg.view.active:
        return loader
    return Loader(_Viewed(loader, cfg.view.for_training(train), [seed, epoch, rank]), loader.num_batches,
                  loader.num_samples, f"{loader.source} as {cfg.view}", None, bs)


class _Viewed:
    """The batches of ``loader`` through :func:`apply_view` (rotations seeded per pass)."""

    def __init__(self, loader: Loader, view: DeviceView, seed: list[int]) -> None:
        self.loader, self.view, self.seed = loader, view, seed

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([*self.seed, 7])
        return (apply_view(b, self.view, rng) for b in self.loader)

