"""What every data source shares: the data config, the :class:`Loader` pass, subsets and data budgets.

The sources (:mod:`emgscale.loader.hdf5`, :mod:`emgscale.loader.shards`, :mod:`emgscale.loader.csv`)
import from here and nothing from each other or from the dispatcher
(:func:`emgscale.loader.build_loader`). This module does not import torch: a config that nests
:class:`DataConfig` is parsed and checked (:meth:`DataConfig.check`) before torch loads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from emgscale.config import ConfigError
from emgscale.data.device import DeviceView
from emgscale.data.splits import normalize_user
from emgscale.data.tables import CSVFormat
from emgscale.data.window_spec import WindowSpec, training_windows

if TYPE_CHECKING:  # both import torch (their packages do): annotations only
    from emgscale.data.windows import Batch
    from emgscale.features.config import AugmentConfig


@dataclass
class DataConfig:
    """Where the data comes from and how it is batched (the ``data`` section of the training config).

    Attributes:
        format: ``emg2qwerty`` (HDF5 sessions or shards of them) or ``csv`` (a folder of CSV/TSV
            recordings with a label per row, :mod:`emgscale.loader.csv`; ``split`` is then a split of
            files, :func:`emgscale.data.tables.load_file_split`).
        data_root: folder of HDF5 sessions (read directly when ``shards`` is unset), a BIDS copy of them
            (Meta's ``convert_to_bids.py`` layout, :mod:`emgscale.data.bids`), or a folder of CSV files.
        split: official split YAML.
        bids_metadata: the ``metadata.csv`` a BIDS ``data_root`` was made from, when the root has none
            (maps the split's session names to its ``sub-NN/ses-NN`` recordings).
        shards: shard folder / URL prefix (``{name}`` is replaced by ``train/train-000000.tar`` etc.) /
            brace pattern of tar URLs; preferred when set.
        shards_manifest: where the manifest is, when not at ``<shards>/manifest.json``.
        window: the windowing (:class:`~emgscale.data.windows.WindowSpec`: window, stride, context,
            training jitter); must match the shards' settings.
        val_mode, test_mode: ``windows`` or ``session`` (whole sessions, the paper's test setting).
        batch_size: samples per optimiser step over all devices (the *global* batch); the loop gives
            each of N data-parallel workers ``batch_size / N``.
        batch_size_per_device: when set, the global batch is this times the number of workers (the
            reference's generic model: 32 per GPU on 8 GPUs = 256), and ``batch_size`` is ignored.
        num_workers: DataLoader worker processes; None = automatic (0 on CPU, up to 4 per GPU process).
        pin_memory: DataLoader ``pin_memory``; None = automatic (on when training on a GPU).
        shuffle_buffer: windows in the shuffle buffer of each training worker (shards).
        record_shuffle_buffer: training records (chunks of windows) in the first shuffle buffer.
        train_samples_per_epoch: windows per epoch over all ranks (default: all training windows).
        skip_bad: leave out unreadable session files (HDF5 source), each named once with the reason.
        users, sessions: keep only these users / sessions.
        max_minutes_per_user: keep the first N minutes of each user's data.
        limit_samples: stop each pass after this many samples on each rank (quick checks).
        csv: the layout of the CSV files (``format: csv``).
        view: the data as a smaller device would record it (one band, some electrodes, a lower rate;
            :class:`~emgscale.data.device.DeviceView`), applied to every batch.
        feature_cache: a folder: windowed samples (training, and ``windows`` val/test) carry the model's
            spectra, computed once per session (HDF5) or shard record and stored there
            (:mod:`emgscale.loader.feature_cache`), instead of raw EMG; whole sessions stay raw. Needs
            the emg2qwerty format, no ``view`` and no augmentation that needs raw EMG (:meth:`check`);
            None = raw EMG.
    """

    format: str = "emg2qwerty"

    data_root: str | None = None
    split: str | None = None
    bids_metadata: str | None = None
    shards: str | None = None
    shards_manifest: str | None = None
    window: WindowSpec = field(default_factory=training_windows)
    val_mode: str = "windows"
    test_mode: str = "session"
    batch_size: int = 32
    batch_size_per_device: int | None = None
    num_workers: int | None = None
    pin_memory: bool | None = None
    shuffle_buffer: int = 256
    record_shuffle_buffer: int = 16
    train_samples_per_epoch: int | None = None
    skip_bad: bool = False
    users: list[str] | None = None
    sessions: list[str] | None = None
    max_minutes_per_user: float | None = None
    limit_samples: int | None = None
    csv: CSVFormat = field(default_factory=CSVFormat)
    view: DeviceView = field(default_factory=DeviceView)
    feature_cache: str | None = None

    def check(self, augment: AugmentConfig | None = None) -> None:
        """The settings that only work together, judged in one place (launch and ``train()`` call it).

        Precomputed spectra (``feature_cache``) exist for emg2qwerty sessions and shards only, cannot be
        seen through a device ``view`` (it changes the raw EMG), and cannot take an augmentation of the
        model that has no feature-space form (:meth:`~emgscale.features.config.AugmentConfig.needs_raw_emg`).

        Args:
            augment: the model's augmentations (``model.augment``); None checks the data settings only.

        Raises:
            ConfigError: one line naming the keys that conflict.
        """
        if self.format not in ("emg2qwerty", "csv"):
            raise ConfigError(f"data.format={self.format!r}: must be 'emg2qwerty' or 'csv'")
        if not self.feature_cache:
            return
        if self.format == "csv":
            raise ConfigError("data.feature_cache caches emg2qwerty sessions and shards, not data.format=csv: "
                              "unset data.feature_cache")
        if self.view.active:
            raise ConfigError("data.view changes the raw EMG before the model, which cached spectra cannot: unset "
                              "data.view or data.feature_cache")
        for name in augment.needs_raw_emg() if augment is not None else []:
            raise ConfigError(f"model.augment.{name}={getattr(augment, name)!r}: augment.{name} needs raw EMG: "
                              f"set it to 0 or unset data.feature_cache")

    def global_batch_size(self, world_size: int) -> int:
        """Samples per optimiser step over ``world_size`` data-parallel workers."""
        return self.batch_size_per_device * world_size if self.batch_size_per_device else self.batch_size

    def for_device(self, device_type: str, local_world_size: int = 1) -> "DataConfig":
        """This config with ``num_workers`` / ``pin_memory`` resolved for a ``cpu`` or ``cuda`` process.

        On a GPU the loader reads in worker processes (up to 4 per GPU process, never more than the
        cores allow) into pinned memory, so the host keeps the device fed; on a CPU it reads in the
        training process, which leaves every core to the model.
        """
        gpu = device_type == "cuda"
        workers = self.num_workers
        if workers is None:
            workers = min(4, max(1, (os.cpu_count() or 1) // max(1, local_world_size) - 1)) if gpu else 0
        pin = self.pin_memory if self.pin_memory is not None else gpu
        return replace(self, num_workers=workers, pin_memory=pin)


@dataclass(frozen=True)
class Selection:
    """The subset of sessions a loader reads: users, session names, and minutes per user."""

    users: frozenset[str] | None = None
    sessions: frozenset[str] | None = None
    max_minutes: float | None = None

    def keep(self, user: str, session: str) -> bool:
        return ((self.users is None or normalize_user(user) in self.users)
                and (self.sessions is None or session in self.sessions))

    @property
    def filtered(self) -> bool:
        return bool(self.users or self.sessions or self.max_minutes is not None)


class Loader:
    """One pass of batches (an epoch when training).

    Attributes:
        num_batches: batches this rank gets in the pass, when known (``len()`` raises otherwise).
        num_samples: samples this rank gets in the pass, when known.
        source: a description of where the data comes from.
    """

    def __init__(self, iterable: Iterable[Batch], num_batches: int | None, num_samples: int | None, source: str,
                 limit_samples: int | None = None, batch_size: int = 1) -> None:
        self._iterable = iterable
        self.limit_samples = limit_samples
        if limit_samples is not None:
            num_samples = limit_samples if num_samples is None else min(num_samples, limit_samples)
            if num_batches is not None:
                num_batches = min(num_batches, math.ceil(limit_samples / batch_size))
        self.num_batches, self.num_samples, self.source = num_batches, num_samples, source

    def __iter__(self) -> Iterator[Batch]:
        left = self.limit_samples
        for batch in self._iterable:
            if left is not None:
                if left <= 0:
                    return
                if len(batch) > left:
                    batch = batch.head(left)
                left -= len(batch)
            yield batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError(f"the number of batches of {self.source} is not known in advance")
        return self.num_batches

    def __repr__(self) -> str:
        return f"Loader({self.source}, batches={self.num_batches}, samples={self.num_samples})"


def minutes_budget(sessions: Iterable[tuple[str, str, float, int, float]], max_minutes: float) -> dict[str, int]:
    """Rows of each session inside each user's first ``max_minutes`` of recordings.

    Args:
        sessions: ``(user, session, start_time_s, num_rows, sample_rate_hz)`` tuples.
        max_minutes: minutes per user.

    Returns:
        ``{session: rows}`` for sessions with at least one row in budget (in recording order).
    """
    if max_minutes < 0:
        raise ValueError(f"max_minutes_per_user must be >= 0, got {max_minutes}")
    out: dict[str, int] = {}
    by_user: dict[str, list[tuple[float, str, int, float]]] = {}
    for user, name, t0, rows, sr in sessions:
        by_user.setdefault(normalize_user(user), []).append((t0, name, rows, sr))
    for items in by_user.values():
        left_s = max_minutes * 60.0
        for t0, name, rows, sr in sorted(items):
            take = min(rows, int(math.floor(left_s * sr + 1e-9)))
            if take <= 0:
                break
            out[name] = take
            left_s -= take / sr
    return out


def sample_order(n: int, train: bool, total: int | None, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """The sample indices this rank reads in one pass over ``n`` samples.

    Training: ``total`` (default ``n``) indices from whole permutations seeded by ``(seed, epoch)``,
    resized to an equal share per rank; evaluation: every sample once over all ranks, in order.
    """
    if not train:
        return list(range(rank, n, world))
    total = total or n
    rng = np.random.default_rng([seed, epoch])
    reps = math.ceil(total / max(n, 1)) if n else 0
    order = np.concatenate([rng.permutation(n) for _ in range(reps)])[:total] if n else np.zeros(0, np.int64)
    per_rank = math.ceil(len(order) / world)
    order = np.resize(order, per_rank * world) if len(order) else order  # equal share per rank
    return order[rank::world].tolist()


def window_spec(cfg: DataConfig, part: str, train: bool) -> WindowSpec:
    """The windowing of ``part``: jittered training windows, plain windows or whole sessions for evaluation."""
    mode = {"val": cfg.val_mode, "test": cfg.test_mode}.get(part, "windows")
    if mode not in ("windows", "session"):
        raise ValueError(f"data.{part}_mode must be 'windows' or 'session', got {mode!r}")
    return cfg.window.whole_session() if mode == "session" else cfg.window.for_training(train)
