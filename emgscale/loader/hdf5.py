"""The HDF5 source of :func:`emgscale.loader.build_loader`: windows read at random from session files.

This is what the reference does (:class:`~emgscale.data.windows.SessionWindows`); the shard source
(:mod:`emgscale.loader.shards`) gives the same samples from WebDataset shards.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import numpy as np
import torch

from emgscale.common import print0
from emgscale.data.source import open_session
from emgscale.data.splits import DataRoot, load_split
from emgscale.data.errors import DataError
from emgscale.data.windows import SessionWindows, WindowSpec, check_values_once, collate
from emgscale.loader.feature_cache import FeatureCache
from emgscale.loader.base import DataConfig, Loader, Selection, minutes_budget, sample_order, window_spec


class CachedWindows(torch.utils.data.Dataset):
    """The samples of a :class:`SessionWindows` with their spectra from a feature cache (one block per
    session file) in place of their EMG (:meth:`FeatureCache.serve`); a window's EMG is never read,
    only its timestamps (for the labels)."""

    def __init__(self, windows: SessionWindows, cache: FeatureCache) -> None:
        self.windows, self.cache = windows, cache

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, item: int) -> dict:
        sample = self.windows.sample(item, with_emg=False)
        return self.cache.serve(sample, self.cache.session_block(self.windows.path_of(item)), first_row=0)


def hdf5_loader(cfg: DataConfig, part: str, *, train: bool, seed: int, epoch: int, rank: int, world: int,
                batch_size: int, sel: Selection, limit: int | None, cache: FeatureCache | None = None) -> Loader:
    """See :func:`emgscale.loader.build_loader` (``cache``: serve windowed samples from it)."""
    if not cfg.data_root or not cfg.split:
        raise ValueError("set data.shards, or data.data_root and data.split")
    split = load_split(cfg.split)
    refs = [r for r in split[part] if sel.keep(r.user, r.session)]
    root = Path(cfg.data_root)
    paths = DataRoot(root, cfg.bids_metadata).paths([r.session for r in refs], cfg.split)  # HDF5 or BIDS
    missing = [p for p in paths if not p.is_file()]
    if missing and not cfg.skip_bad:
        split.resolve(root, part, cfg.bids_metadata)  # raises, listing every missing file
    _report_missing(tuple(str(p) for p in missing))
    paths = [p for p in paths if p.is_file()]
    spec = window_spec(cfg, part, train)
    mix = int(np.random.default_rng([seed, epoch, rank]).integers(2**31))
    if sel.max_minutes is not None:
        if spec.window_samples is None:
            raise ValueError("max_minutes_per_user needs windowed samples, not whole sessions")
        budget = minutes_budget(_session_infos(tuple(paths), cfg.skip_bad, cfg.bids_metadata), sel.max_minutes)
        windows = _session_windows(tuple(Path(k) for k in budget), spec, False, cfg.bids_metadata,
                                   tuple(budget.values()))
    else:
        windows = _session_windows(tuple(paths), spec, cfg.skip_bad, cfg.bids_metadata)
    ds: torch.utils.data.Dataset = copy.copy(windows)  # no open files (__getstate__)
    ds.seed = mix  # a jitter stream of its own for this (seed, epoch, rank)
    if len(ds) == 0 and paths and spec.window_samples is not None:
        _window_fits_no_session(paths, spec, part, cfg.bids_metadata)
    cached = cache is not None and spec.window_samples is not None  # whole sessions stay raw
    if cached:
        ds = CachedWindows(ds, cache)
    indices = sample_order(len(ds), train, cfg.train_samples_per_epoch, seed, epoch, rank, world)
    num_batches = math.ceil(len(indices) / batch_size)
    generator = torch.Generator().manual_seed(mix)
    workers = cfg.num_workers or 0
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=indices, collate_fn=collate,
                                         num_workers=workers, pin_memory=bool(cfg.pin_memory), generator=generator,
                                         drop_last=False, persistent_workers=False)
    where = f"HDF5 {part} of {cfg.split} under {root}" + (f", spectra cached in {cache.folder}" if cached else "")
    return Loader(loader, num_batches, len(indices), where, limit, batch_size)


def _window_fits_no_session(paths: list[Path], spec: WindowSpec, part: str,
                            bids_metadata: str | None = None) -> None:
    """Raise a ValueError saying the window is longer than every (readable) session of ``part``."""
    rows = []
    for p in paths:
        try:
            with open_session(p, bids_metadata) as s:
                rows.append(len(s))
        except DataError:
            continue
    if rows:
        raise ValueError(f"data.window.window_samples={spec.window_samples} is longer than every {part} session "
                         f"(the longest of {len(rows)} holds {max(rows)} rows): no window fits; use a shorter window")


@functools.lru_cache(maxsize=None)
def _report_missing(paths: tuple[str, ...]) -> None:
    """Name each session file the split lists but ``skip_bad`` leaves out, once per process."""
    for p in paths:
        print0(f"[data] skipping {p}: session named by the split is missing")


@functools.lru_cache(maxsize=8)
def _session_windows(paths: tuple[Path, ...], spec: WindowSpec, skip_bad: bool, bids_metadata: str | None = None,
                     max_rows: tuple[int, ...] | None = None) -> SessionWindows:
    """Counting windows opens every file: do it once per (files, windowing, row budget), not once per epoch."""
    ds = SessionWindows(paths, spec, skip_bad=skip_bad, bids_metadata=bids_metadata,
                        max_rows=list(max_rows) if max_rows is not None else None)
    for path, problem in ds.skipped:
        _report_skipped(path, problem)
    return ds


@functools.lru_cache(maxsize=8)
def _session_infos(paths: tuple[Path, ...], skip_bad: bool,
                   bids_metadata: str | None = None) -> tuple[tuple[str, str, float, int, float], ...]:
    """``(user, path, start time, rows, rate)`` of each readable session (for :func:`minutes_budget`), read once
    per process: a fine-tune on a few minutes asks for them every epoch."""
    infos = []
    for p in paths:
        try:
            with open_session(p, bids_metadata) as s:
                if skip_bad:
                    check_values_once(s)
                infos.append((s.user, str(p), s.start_time, len(s), s.sample_rate_hz))
        except DataError as e:
            if not skip_bad:
                raise
            _report_skipped(str(p), e.problem)
    return tuple(infos)


@functools.lru_cache(maxsize=None)
def _report_skipped(path: str, problem: str) -> None:
    """Name a session file ``skip_bad`` leaves out, with the reason, once per process."""
    print0(f"[data] skipping {path}: {problem}")
