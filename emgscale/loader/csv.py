"""The CSV source of :func:`emgscale.loader.build_loader` (``data.format: csv``): windows of recordings
with a label per row, from a folder of CSV/TSV files (:mod:`emgscale.data.tables`).

``data.data_root`` is the folder, ``data.split`` a split YAML of files (paths or globs) per part,
``data.csv`` the files' layout. Samples are cut by the same :class:`~emgscale.data.windows.WindowSpec`
rule as the HDF5 source (in samples at the files' rate) and carry ``sample_labels`` (the class of every
row read, context included). Subsets: ``users`` / ``sessions`` (a file's first folder and its path
without suffix) and ``max_minutes_per_user`` (the first N minutes of each user's files, in split order).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from emgscale.data.errors import DataError
from emgscale.data.windows import WindowSpec, collate
from emgscale.data.tables import Recording, check_class_labels, load_file_split, read_file
from emgscale.loader.base import DataConfig, Loader, Selection, minutes_budget, sample_order, window_spec


class RecordingWindows(torch.utils.data.Dataset):
    """Map-style dataset of the windows of in-memory recordings (labels per row).

    Args:
        recordings: the files, read.
        spec: the windowing (in samples at the recordings' rate).
        seed: seeds the training jitter.
        max_rows: per recording, use only its first this many rows (None: all).
    """

    def __init__(self, recordings: Sequence[Recording], spec: WindowSpec, seed: int = 0,
                 max_rows: Sequence[int | None] | None = None) -> None:
        self.recordings, self.spec, self.seed = list(recordings), spec, seed
        self.rows = [len(r) if m is None else min(len(r), m)
                     for r, m in zip(self.recordings, max_rows or [None] * len(self.recordings))]
        self._index = [(i, j) for i, n in enumerate(self.rows) for j in range(spec.num_windows(n))]
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, item: int) -> dict[str, Any]:
        ri, wi = self._index[item]
        rec, n = self.recordings[ri], self.rows[ri]
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, torch.initial_seed() % 2**31])
        if self.spec.window_samples is None:
            offset, window = 0, n
        else:
            window = self.spec.window_samples
            offset = self.spec.jittered(wi * self.spec.stride, n, self._rng)
        start, stop = self.spec.padded_rows(offset, window, n)
        return {"key": f"{rec.user}/{rec.session}/{offset}", "emg": rec.emg[start:stop, None, :],
                "labels": np.zeros(0, dtype=np.int64), "sample_labels": rec.labels[start:stop],
                "user": rec.user, "session": rec.session, "start": start, "offset": offset,
                "sample_rate_hz": rec.sample_rate_hz}


def read_part(cfg: DataConfig, part: str, sel: Selection | None = None) -> list[Recording]:
    """The labelled recordings of ``part`` of ``cfg.split`` under ``cfg.data_root`` kept by ``sel``.

    Raises:
        ValueError: no data root or split set.
        DataError: a bad split or file, a file without labels, files with different channel counts.
    """
    if not cfg.data_root or not cfg.split:
        raise ValueError("data.format=csv needs data.data_root (a folder of CSV/TSV files) and data.split "
                         "(a split YAML: python -m emgscale.fingers split ...)")
    root = Path(cfg.data_root)
    recs = [read_file(root, p, cfg.csv) for p in load_file_split(cfg.split, root)[part]]
    recs = [r for r in recs if sel is None or sel.keep(r.user, r.session)]
    for r in recs:
        if r.labels is None:
            raise DataError(r.path, "no labels (set data.csv.label_column, or data.csv.file_label for "
                                    "one-file-per-class layouts)")
        if r.emg.shape[1] != recs[0].emg.shape[1]:
            raise DataError(r.path, f"{r.emg.shape[1]} channels, but {recs[0].path} has {recs[0].emg.shape[1]}")
    return recs


def check_labels(cfg: DataConfig, num_classes: int, parts: Sequence[str] = ("train", "val")) -> None:
    """Check, before training, that every label of ``parts`` is a class of a model with ``num_classes``.

    Raises:
        DataError: naming the file and row of the first label out of range.
    """
    for part in parts:
        for rec in read_part(cfg, part):
            check_class_labels(rec, num_classes)


def csv_loader(cfg: DataConfig, part: str, *, train: bool, seed: int, epoch: int, rank: int, world: int,
               batch_size: int, sel: Selection, limit: int | None) -> Loader:
    """See :func:`emgscale.loader.build_loader`."""
    recs = read_part(cfg, part, sel)
    spec = window_spec(cfg, part, train)
    max_rows: list[int | None] | None = None
    if sel.max_minutes is not None:
        if spec.window_samples is None:
            raise ValueError("max_minutes_per_user needs windowed samples, not whole sessions")
        budget = minutes_budget([(r.user, r.session, float(i), len(r), r.sample_rate_hz) for i, r in enumerate(recs)],
                                sel.max_minutes)
        recs = [r for r in recs if r.session in budget]
        max_rows = [budget[r.session] for r in recs]
    mix = int(np.random.default_rng([seed, epoch, rank]).integers(2**31))
    ds = RecordingWindows(recs, spec, seed=mix, max_rows=max_rows)
    indices = sample_order(len(ds), train, cfg.train_samples_per_epoch, seed, epoch, rank, world)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=indices, collate_fn=collate,
                                         num_workers=cfg.num_workers or 0, pin_memory=bool(cfg.pin_memory),
                                         generator=torch.Generator().manual_seed(mix), drop_last=False)
    return Loader(loader, math.ceil(len(indices) / batch_size), len(indices),
                  f"CSV {part} of {cfg.split} under {cfg.data_root}", limit, batch_size)
