"""The input pipeline: batches for training and evaluation, from shards or straight from HDF5 sessions.

``build_loader(cfg, part, train=..., seed=..., epoch=..., rank=..., world_size=...)`` returns a
:class:`Loader` (an iterable of :class:`~emgscale.data.windows.Batch`, with ``len`` when known),
whichever the source:

* ``cfg.shards`` set: WebDataset shards written by ``python -m emgscale.shard`` (a local folder with
  ``manifest.json``, a URL prefix such as ``pipe:aws s3 cp s3://bucket/shards/{name} -`` or
  ``https://host/shards``, or a brace pattern of ``.tar`` URLs without a manifest). Training is an
  endless resampled stream cut into epochs; evaluation reads every sample exactly once over all
  ranks and workers (:mod:`emgscale.shard.stream`).
* otherwise ``cfg.data_root`` + ``cfg.split``: windows read at random from the HDF5 files
  (:class:`~emgscale.data.windows.SessionWindows`), as the reference does.

Both give the same samples (same windows, jitter rule, labels) and honour the same subsets:
``users``, ``sessions`` and ``max_minutes_per_user`` (the first N minutes of each user's sessions in
recording order, as if the recordings stopped there — for few-shot curves).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from emgscale.common import rank as env_rank
from emgscale.common import world_size as env_world_size
from emgscale.data.errors import DataError
from emgscale.data.session import EMGSession
from emgscale.data.splits import load_split, normalize_user
from emgscale.data.windows import Batch, SessionWindows, WindowSpec, collate, read_window
from emgscale.shard.manifest import Manifest


@dataclass
class DataConfig:
    """Where the data comes from and how it is batched (the ``data`` section of the training config).

    Attributes:
        data_root: folder of HDF5 sessions (read directly when ``shards`` is unset).
        split: official split YAML.
        shards: shard folder / URL prefix (``{name}`` is replaced by ``train/train-000000.tar`` etc.) /
            brace pattern of tar URLs; preferred when set.
        shards_manifest: where the manifest is, when not at ``<shards>/manifest.json``.
        window_samples, stride_samples, pad_left_samples, pad_right_samples: windowing (must match
            the shards' settings).
        val_mode, test_mode: ``windows`` or ``session`` (whole sessions, the paper's test setting).
        batch_size: samples per batch (the training loop may pass a per-rank size instead).
        num_workers: DataLoader worker processes.
        shuffle_buffer: windows in the shuffle buffer of each training worker (shards).
        record_shuffle_buffer: training records (chunks of windows) in the first shuffle buffer.
        train_samples_per_epoch: windows per epoch over all ranks (default: all training windows).
        skip_bad: leave out unreadable session files (HDF5 source).
        users, sessions: keep only these users / sessions.
        max_minutes_per_user: keep the first N minutes of each user's data.
        limit_samples: stop each pass after this many samples on each rank (quick checks).
        pin_memory: DataLoader ``pin_memory`` (for GPUs).
    """

    data_root: str | None = None
    split: str | None = None
    shards: str | None = None
    shards_manifest: str | None = None
    window_samples: int = 8000
    stride_samples: int | None = None
    pad_left_samples: int = 1800
    pad_right_samples: int = 200
    val_mode: str = "windows"
    test_mode: str = "session"
    batch_size: int = 32
    num_workers: int = 0
    shuffle_buffer: int = 256
    record_shuffle_buffer: int = 16
    train_samples_per_epoch: int | None = None
    skip_bad: bool = False
    users: list[str] | None = None
    sessions: list[str] | None = None
    max_minutes_per_user: float | None = None
    limit_samples: int | None = None
    pin_memory: bool = False


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
                    batch = _head(batch, left)
                left -= len(batch)
            yield batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError(f"the number of batches of {self.source} is not known in advance")
        return self.num_batches

    def __repr__(self) -> str:
        return f"Loader({self.source}, batches={self.num_batches}, samples={self.num_samples})"


def _head(batch: Batch, k: int) -> Batch:
    return Batch(batch.emg[:k], batch.emg_lengths[:k], batch.labels[:k], batch.label_lengths[:k], batch.keys[:k],
                 batch.users[:k])


def build_loader(cfg: DataConfig, part: str, *, train: bool, seed: int, epoch: int = 0, rank: int | None = None,
                 world_size: int | None = None, batch_size: int | None = None, users: list[str] | None = None,
                 sessions: list[str] | None = None, max_minutes_per_user: float | None = None,
                 limit_samples: int | None = None) -> Loader:
    """Batches of ``part`` for training (shuffled, jittered, an epoch long) or evaluation (every sample once).

    Args:
        cfg: the data config.
        part: ``train``, ``val`` or ``test``.
        train: shuffle and jitter (else a deterministic pass).
        seed, epoch: seed the order and jitter; the same arguments give the same batches.
        rank, world_size: this process among the data-parallel ones (default: from
            ``torch.distributed`` or the RANK / WORLD_SIZE environment).
        batch_size: overrides ``cfg.batch_size`` (e.g. a per-rank share).
        users, sessions, max_minutes_per_user, limit_samples: override the config's subsets.

    Returns:
        A :class:`Loader` of :class:`Batch` (``emg`` (B, T, 2, 16) float32 with ``emg_lengths``).

    Raises:
        ValueError: inconsistent settings (no source, windowing different from the shards', ...).
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
    sel = _Selection(users=frozenset(normalize_user(u) for u in users) if users else None,
                     sessions=frozenset(sessions) if sessions else None,
                     max_minutes=max_minutes_per_user if max_minutes_per_user is not None else cfg.max_minutes_per_user)
    bs = batch_size or cfg.batch_size
    limit = limit_samples if limit_samples is not None else cfg.limit_samples
    if cfg.shards:
        from emgscale.shard.source import shard_loader

        return shard_loader(cfg, part, train=train, seed=seed, epoch=epoch, rank=rank, world=world, batch_size=bs,
                            sel=sel, limit=limit)
    return _hdf5_loader(cfg, part, train=train, seed=seed, epoch=epoch, rank=rank, world=world, batch_size=bs,
                        sel=sel, limit=limit)


@dataclass
class _Selection:
    users: frozenset[str] | None
    sessions: frozenset[str] | None
    max_minutes: float | None

    def keep(self, user: str, session: str) -> bool:
        return ((self.users is None or normalize_user(user) in self.users)
                and (self.sessions is None or session in self.sessions))


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


def _window_spec(cfg: DataConfig, part: str, train: bool) -> WindowSpec:
    spec = WindowSpec(cfg.window_samples, cfg.stride_samples, cfg.pad_left_samples, cfg.pad_right_samples,
                      jitter=train)
    mode = {"val": cfg.val_mode, "test": cfg.test_mode}.get(part, "windows")
    if mode not in ("windows", "session"):
        raise ValueError(f"data.{part}_mode must be 'windows' or 'session', got {mode!r}")
    return spec.whole_session() if mode == "session" else spec


# ----------------------------------------------------------------------------- HDF5 source
def _hdf5_loader(cfg: DataConfig, part: str, *, train: bool, seed: int, epoch: int, rank: int, world: int,
                 batch_size: int, sel: _Selection, limit: int | None) -> Loader:
    if not cfg.data_root or not cfg.split:
        raise ValueError("set data.shards, or data.data_root and data.split")
    split = load_split(cfg.split)
    refs = [r for r in split[part] if sel.keep(r.user, r.session)]
    root = Path(cfg.data_root)
    paths = [root / f"{r.session}.hdf5" for r in refs]
    missing = [p for p in paths if not p.is_file()]
    if missing and not cfg.skip_bad:
        split.resolve(root, part)  # raises, listing every missing file
    paths = [p for p in paths if p.is_file()]
    spec = _window_spec(cfg, part, train)
    mix = int(np.random.default_rng([seed, epoch, rank]).integers(2**31))
    if sel.max_minutes is not None:
        if spec.window_samples is None:
            raise ValueError("max_minutes_per_user needs windowed samples, not whole sessions")
        infos = []
        for p in paths:
            with EMGSession(p) as s:
                infos.append((s.user, str(p), s.start_time, len(s), s.sample_rate_hz))
        budget = minutes_budget(infos, sel.max_minutes)
        ds: torch.utils.data.Dataset = SessionWindows([Path(k) for k in budget], spec, seed=mix,
                                                      max_rows=list(budget.values()))
    else:
        ds = copy.copy(_session_windows(tuple(paths), spec, cfg.skip_bad))  # no open files (__getstate__)
        ds.seed = mix  # a jitter stream of its own for this (seed, epoch, rank)
    n = len(ds)
    if train:
        total = cfg.train_samples_per_epoch or n
        rng = np.random.default_rng([seed, epoch])
        reps = math.ceil(total / max(n, 1)) if n else 0
        order = np.concatenate([rng.permutation(n) for _ in range(reps)])[:total] if n else np.zeros(0, np.int64)
        per_rank = math.ceil(len(order) / world)
        order = np.resize(order, per_rank * world) if len(order) else order  # equal share per rank
        indices = order[rank::world].tolist()
        num_batches = math.ceil(len(indices) / batch_size)
    else:
        indices = list(range(rank, n, world))
        num_batches = math.ceil(len(indices) / batch_size)
    generator = torch.Generator().manual_seed(mix)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=indices, collate_fn=collate,
                                         num_workers=cfg.num_workers, pin_memory=cfg.pin_memory, generator=generator,
                                         drop_last=False)
    return Loader(loader, num_batches, len(indices), f"HDF5 {part} of {cfg.split} under {root}", limit, batch_size)


@functools.lru_cache(maxsize=8)
def _session_windows(paths: tuple[Path, ...], spec: WindowSpec, skip_bad: bool) -> SessionWindows:
    """Counting windows opens every file: do it once per (files, windowing), not once per epoch."""
    return SessionWindows(paths, spec, skip_bad=skip_bad)


def _check_windowing(cfg: DataConfig, manifest: Manifest, part: str) -> None:
    """The config's windowing (and eval mode of ``part``) must be the shards'."""
    s = manifest.settings
    keys = ["window_samples", "pad_left_samples", "pad_right_samples"]
    keys += [f"{part}_mode"] if part in ("val", "test") else []
    for key in keys:
        if key in s and s[key] != getattr(cfg, key):
            raise ValueError(f"data.{key} is {getattr(cfg, key)!r} but the shards at {manifest.location} were "
                             f"written with {s[key]!r}; reshard or set data.{key}={s[key]!r}")
    stride = cfg.stride_samples or cfg.window_samples
    if (s.get("stride_samples") or s.get("window_samples")) != stride:
        raise ValueError(f"data.stride_samples gives {stride} but the shards at {manifest.location} use "
                         f"{s.get('stride_samples') or s.get('window_samples')}")


__all__ = ["DataConfig", "DataError", "Loader", "build_loader", "minutes_budget"]
