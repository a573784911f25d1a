"""Windows of sessions as training/evaluation samples, and their collation into batches.

A *sample* is the unit every loader yields (from HDF5 sessions here, from WebDataset shards in
:mod:`emgscale.loader.shard_pipeline`) and :func:`collate` batches. It is a dict:

=================  =========================================================================
``key``            ``"<user>/<session>/<offset>"``, stable and readable
``emg``            float32 ``(T, 2, 16)``: band 0 left, band 1 right, with past/future context
``labels``         int64 ``(S,)`` class labels of the keys pressed in the un-padded window
``label_time_s``   float64 ``(S,)`` press times in seconds from the first row of ``emg``
``user``           user id (string)
``session``        session name
``start``          session row of ``emg[0]``
``offset``         session row where the un-padded window starts
``sample_rate_hz`` sampling rate of ``emg``
=================  =========================================================================

A sample served from a feature cache (:meth:`emgscale.loader.feature_cache.FeatureCache.serve`) has
``features`` (its spectra) and ``rows`` (the raw rows they cover) in place of ``emg``; its batch has
``Batch.features`` and ``Batch.emg`` None.

Windowing follows the reference: ``window_samples`` (4 s) windows every ``stride_samples``, rows
``[offset - pad_left, offset + window + pad_right)`` clipped to the session, labels from the
un-padded window only; training jitter moves ``offset`` forward by ``randint(0, min(stride, leftover))``.
``window_samples=None`` makes one sample of the whole session (the paper's test setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from emgscale.data.errors import DataError
from emgscale.data.session import ON_KEYBOARD, EMGSession
from emgscale.data.source import open_session
from emgscale.data.window_spec import WindowSpec, labels_in, training_windows  # noqa: F401 (re-exported)


def read_window(
    session: EMGSession, index: int, spec: WindowSpec, rng: np.random.Generator | None = None, with_emg: bool = True
) -> dict[str, Any]:
    """Sample ``index`` of ``session`` under ``spec`` (see the module docstring for the fields).

    ``with_emg=False`` reads the timestamps only (:meth:`EMGSession.time`, no EMG field): the sample has
    ``rows`` (the rows it covers) in place of ``emg``, for a caller that brings its own features of
    those rows (:class:`emgscale.loader.hdf5.CachedWindows`). Same rows, labels and jitter draws."""
    n = len(session)
    if spec.window_samples is None:
        offset, window = 0, n
    else:
        window = spec.window_samples
        offset = index * spec.stride
        if n - (offset + window) < 0:
            raise IndexError(f"{session.path}: window {index} does not fit in {n} rows")
        offset = spec.jittered(offset, n, rng)
    start, stop = spec.padded_rows(offset, window, n)
    if with_emg:
        emg, t = session.window(start, stop)
        rows: dict[str, Any] = {"emg": emg}
    else:
        t, rows = session.time(start, stop), {"rows": stop - start}
    w0, w1 = offset - start, offset - start + window - 1
    if session.condition != ON_KEYBOARD:
        raise DataError(session.path, f"condition is {session.condition!r}; windows need 'on_keyboard' sessions")
    label = session.keystroke_labels(t[w0], t[w1])
    return {
        "key": f"{session.user}/{session.session_name}/{offset}",
        **rows,
        "labels": label.labels,
        "label_time_s": label.timestamps - t[0],
        "user": session.user,
        "session": session.session_name,
        "start": start,
        "offset": offset,
        "sample_rate_hz": session.sample_rate_hz,
    }


class TruncatedSession:
    """An open session seen as ending at ``num_rows`` (a data budget, e.g. the first N minutes)."""

    def __init__(self, session: EMGSession, num_rows: int) -> None:
        self._session, self._rows = session, min(num_rows, len(session))

    def __len__(self) -> int:
        return self._rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class SessionWindows(torch.utils.data.Dataset):
    """Map-style dataset of the windows of some session files, read lazily from HDF5.

    This is the direct-from-HDF5 loader (what the reference does); :mod:`emgscale.loader.shard_pipeline`
    streams the same samples from WebDataset shards. Files are opened per worker on first use.

    Args:
        paths: session files.
        spec: the windowing.
        seed: seeds the jitter (per worker and epoch through torch's worker seed).
        skip_bad: leave a bad file out (listed in ``skipped`` with the reason) instead of raising. Bad
            includes bad values: each file is read once, in chunks (:meth:`EMGSession.scan_values`,
            cached per file and process), so NaN/inf EMG or timestamps that go backwards are found
            before training rather than in the middle of it.
        max_rows: per path, use only its first this many rows (None: all).
        bids_metadata: the ``metadata.csv`` a BIDS copy was made from, when its root has none.
    """

    def __init__(self, paths: Sequence["str | Path"], spec: WindowSpec, seed: int = 0, skip_bad: bool = False,
                 max_rows: Sequence[int | None] | None = None, bids_metadata: "str | Path | None" = None):
        self.bids_metadata = bids_metadata
        self.paths = [Path(p) for p in paths]
        self.spec = spec
        self.seed = seed
        self.max_rows = list(max_rows) if max_rows is not None else [None] * len(self.paths)
        if len(self.max_rows) != len(self.paths):
            raise ValueError(f"max_rows has {len(self.max_rows)} entries for {len(self.paths)} paths")
        self.skipped: list[tuple[str, str]] = []
        self._index: list[tuple[int, int]] = []
        for i, p in enumerate(self.paths):
            try:
                with open_session(p, self.bids_metadata) as s:
                    rows = len(s) if self.max_rows[i] is None else min(len(s), self.max_rows[i])
                    count = spec.num_windows(rows)
                    if skip_bad:
                        check_values_once(s)
            except DataError as e:
                if not skip_bad:
                    raise
                self.skipped.append((str(p), e.problem))
                continue
            self._index.extend((i, j) for j in range(count))
        self._open: dict[int, EMGSession | TruncatedSession] = {}
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self._index)

    def path_of(self, item: int) -> Path:
        """The session file sample ``item`` is cut from."""
        return self.paths[self._index[item][0]]

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.sample(item)

    def sample(self, item: int, with_emg: bool = True) -> dict[str, Any]:
        """Sample ``item``; ``with_emg=False`` reads its timestamps only (:func:`read_window`)."""
        fi, wi = self._index[item]
        if fi not in self._open:
            session = open_session(self.paths[fi], self.bids_metadata)
            limit = self.max_rows[fi]
            self._open[fi] = session if limit is None else TruncatedSession(session, limit)
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, torch.initial_seed() % 2**31])
        return read_window(self._open[fi], wi, self.spec, self._rng, with_emg)  # type: ignore[arg-type]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"], state["_rng"] = {}, None  # h5py handles don't cross process boundaries
        return state


_CHECKED: dict[tuple[str, int, int], str | None] = {}


def check_values_once(session: EMGSession) -> None:
    """:meth:`EMGSession.scan_values` (one streaming pass over the file), once per file and process.

    Raises:
        DataError: NaN/inf EMG or timestamps that go backwards (again on later calls, from the cache).
    """
    st = session.path.stat()
    key = (str(session.path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CHECKED:
        try:
            session.scan_values()
            _CHECKED[key] = None
        except DataError as e:
            _CHECKED[key] = e.problem
    if _CHECKED[key] is not None:
        raise DataError(session.path, _CHECKED[key])


@dataclass
class Batch:
    """A padded batch; tensors travel with their lengths.

    Attributes:
        emg: float32 ``(B, T, 2, 16)``, zero-padded in time; None when the batch carries ``features``
            instead (exactly one of the two is set).
        emg_lengths: int64 ``(B,)`` valid rows of each sequence (with ``features``: the raw rows they
            cover).
        labels: int64 ``(B, S)`` padded with 0 (only ``label_lengths`` tells padding apart).
        label_lengths: int64 ``(B,)``.
        keys, users: per-sample identifiers.
        sample_labels: int64 ``(B, T)`` class of every EMG row (frame-level tasks), -1 on padding and
            unlabelled rows; None for keystroke data.
        label_times: float64 ``(B, S)`` press time of each label in seconds from ``emg[b, 0]`` (padded
            with 0 like ``labels``); None when the samples carried no ``label_time_s``.
        features: float32 ``(B, T', 2, 16, K)`` precomputed spectra (``data.feature_cache``,
            :meth:`emgscale.features.Featurizer.spectra`), zero-padded, or None (raw EMG).
        feature_lengths: int64 ``(B,)`` valid frames of ``features``.
    """

    emg: torch.Tensor | None
    emg_lengths: torch.Tensor
    labels: torch.Tensor
    label_lengths: torch.Tensor
    keys: list[str]
    users: list[str]
    sample_labels: torch.Tensor | None = None
    label_times: torch.Tensor | None = None
    features: torch.Tensor | None = None
    feature_lengths: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _map(self, fn: Any, k: int | None = None) -> "Batch":
        """A batch of ``fn(tensor)`` for every tensor (None stays None), the first ``k`` identifiers."""
        def f(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else fn(t)
        return Batch(f(self.emg), f(self.emg_lengths), f(self.labels), f(self.label_lengths), self.keys[:k],
                     self.users[:k], f(self.sample_labels), f(self.label_times), f(self.features),
                     f(self.feature_lengths))

    def to(self, device: "torch.device | str") -> "Batch":
        """The tensors on ``device`` (asynchronous copies from pinned memory)."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def head(self, k: int) -> "Batch":
        """The first ``k`` samples."""
        return self._map(lambda t: t[:k], k)

    def pin_memory(self) -> "Batch":
        """Pinned copies of the tensors (the DataLoader calls this with ``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())


def collate(samples: Sequence[dict[str, Any]]) -> Batch:
    """Zero-pad samples into a :class:`Batch` (one preallocated array per field, one copy per sample).

    Samples with a ``sample_labels`` field (int64 ``(T,)``, a class per EMG row) give
    ``Batch.sample_labels`` padded with -1. Samples with ``features`` (precomputed spectra
    ``(T', 2, 16, K)`` and ``rows``, the raw rows they cover, in place of ``emg``:
    :meth:`emgscale.loader.feature_cache.FeatureCache.serve`) give ``Batch.features``.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    cached = ["features" in s for s in samples]
    if any(cached) and not all(cached):
        raise ValueError("cannot collate samples with precomputed features together with raw-EMG samples")
    label_lengths = [len(s["labels"]) for s in samples]
    labels = np.zeros((len(samples), max(label_lengths)), dtype=np.int64)
    timed = all(s.get("label_time_s") is not None for s in samples)
    times = np.zeros(labels.shape, dtype=np.float64) if timed else None
    for i, s in enumerate(samples):
        labels[i, : label_lengths[i]] = s["labels"]
        if times is not None:
            times[i, : label_lengths[i]] = s["label_time_s"]
    features = feature_lengths = None
    if all(cached):
        lengths = [int(s["rows"]) for s in samples]
        frames = [len(s["features"]) for s in samples]
        first = np.asarray(samples[0]["features"])
        feats = np.zeros((len(samples), max(frames), *first.shape[1:]), dtype=np.float32)
        for i, s in enumerate(samples):
            feats[i, : frames[i]] = s["features"]
        emg = None
        features, feature_lengths = torch.from_numpy(feats), torch.tensor(frames, dtype=torch.int64)
    else:
        lengths = [len(s["emg"]) for s in samples]
        first = np.asarray(samples[0]["emg"])
        emg = np.zeros((len(samples), max(lengths), *first.shape[1:]), dtype=np.float32)
        for i, s in enumerate(samples):
            emg[i, : lengths[i]] = s["emg"]
    sample_labels = None
    if "sample_labels" in samples[0]:
        sample_labels = torch.full((len(samples), max(lengths)), -1, dtype=torch.int64)
        for i, s in enumerate(samples):
            sample_labels[i, : lengths[i]] = torch.as_tensor(s["sample_labels"], dtype=torch.int64)
    return Batch(
        emg=None if emg is None else torch.from_numpy(emg),
        emg_lengths=torch.tensor(lengths, dtype=torch.int64),
        labels=torch.from_numpy(labels),
        label_lengths=torch.tensor(label_lengths, dtype=torch.int64),
        keys=[str(s["key"]) for s in samples],
        users=[str(s["user"]) for s in samples],
        sample_labels=sample_labels,
        label_times=None if times is None else torch.from_numpy(times),
        features=features,
        feature_lengths=feature_lengths,
    )


def iter_session_windows(path: "str | Path", spec: WindowSpec,
                         bids_metadata: "str | Path | None" = None) -> Iterator[dict[str, Any]]:
    """All windows of one session in order (no jitter), opening the file once."""
    with open_session(path, bids_metadata) as s:
        for i in range(spec.num_windows(len(s))):
            yield read_window(s, i, spec)
