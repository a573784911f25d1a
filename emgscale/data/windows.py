"""Windows of sessions as training/evaluation samples, and their collation into batches.

A *sample* is the unit every loader yields (from HDF5 sessions here, from WebDataset shards in
:mod:`emgscale.shard`) and :func:`collate` batches. It is a dict:

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

A sample served from a feature cache (:meth:`emgscale.features.cache.FeatureCache.serve`) has
``features`` (its spectra) and ``rows`` (the raw rows they cover) in place of ``emg``.

Windowing follows the reference: ``window_samples`` (4 s) windows every ``stride_samples``, rows
``[offset - pad_left, offset + window + pad_right)`` clipped to the session, labels from the
un-padded window only; training jitter moves ``offset`` forward by ``randint(0, min(stride, leftover))``.
``window_samples=None`` makes one sample of the whole session (the paper's test setting).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from emgscale.data.errors import DataError
from emgscale.data.session import ON_KEYBOARD, EMGSession


@dataclass(frozen=True)
class WindowSpec:
    """How a session is cut into samples: the one implementation of the window / jitter / label rule.

    The data config (``data.window``), the shard plan (``ShardConfig.window``) and the shard records
    (``RecordSpec.window``) all nest this spec, and both the HDF5 reader (:func:`read_window`) and
    the shard reader (:func:`emgscale.shard.records.record_samples`) cut windows with its methods.

    Attributes:
        window_samples: un-padded window length (8000 = 4 s at 2 kHz); None = the whole session.
        stride_samples: step between windows; None = ``window_samples`` (no overlap).
        pad_left_samples: past context read before the window (1800 = 900 ms).
        pad_right_samples: future context read after it (200 = 100 ms).
        jitter: move each training window's start by a random amount within the stride (the
            reference's training behaviour, on in the data and shard configs; evaluation never
            jitters). Off by default here, so a spec used directly reads fixed windows.
    """

    window_samples: int | None = 8000
    stride_samples: int | None = None
    pad_left_samples: int = 1800
    pad_right_samples: int = 200
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.window_samples is not None and self.window_samples <= 0:
            raise ValueError(f"window_samples must be positive, got {self.window_samples}")
        if self.stride_samples is not None and self.stride_samples <= 0:
            raise ValueError(f"stride_samples must be positive, got {self.stride_samples}")
        if self.pad_left_samples < 0 or self.pad_right_samples < 0:
            raise ValueError(f"pad_left_samples/pad_right_samples must be >= 0, got "
                             f"{self.pad_left_samples}/{self.pad_right_samples}")

    @property
    def stride(self) -> int | None:
        return self.stride_samples or self.window_samples

    def num_windows(self, num_rows: int) -> int:
        """``max(L - W, 0) // stride + 1`` as the reference (0 for a session shorter than a window)."""
        if self.window_samples is None:
            return 1 if num_rows > 0 else 0
        if num_rows < self.window_samples:
            return 0
        return (num_rows - self.window_samples) // self.stride + 1

    def max_jitter(self, num_rows: int, offset: int) -> int:
        """Number of possible jitters of the window at ``offset``: ``min(stride, leftover)``, or 1."""
        leftover = num_rows - (offset + self.window_samples)
        return min(self.stride, leftover) if leftover > 0 else 1

    def jittered(self, offset: int, num_rows: int, rng: np.random.Generator | None) -> int:
        """The window start actually used: ``offset + randint(0, min(stride, leftover))`` when jittering
        (the reference's rule), else ``offset``."""
        if not self.jitter or self.window_samples is None or num_rows - (offset + self.window_samples) <= 0:
            return offset
        rng = rng if rng is not None else np.random.default_rng()
        return offset + int(rng.integers(0, self.max_jitter(num_rows, offset)))

    def padded_rows(self, offset: int, window: int, num_rows: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` read for the window ``[offset, offset + window)``: its context, clipped."""
        return max(offset - self.pad_left_samples, 0), min(offset + window + self.pad_right_samples, num_rows)

    def for_training(self, train: bool) -> "WindowSpec":
        """This spec as used for training (jitter as configured) or evaluation (never jittered)."""
        return self if train or not self.jitter else replace(self, jitter=False)

    def whole_session(self) -> "WindowSpec":
        return WindowSpec(None, None, 0, 0, False)


def training_windows() -> WindowSpec:
    """The reference's training windowing: 4 s windows, 900 ms / 100 ms context, jittered."""
    return WindowSpec(jitter=True)


def labels_in(times: np.ndarray, first_s: float, last_s: float) -> np.ndarray:
    """Mask of the key-press ``times`` inside the un-padded window ``[first_s, last_s]`` (inclusive, as
    the reference's ``LabelData.from_keystrokes`` range)."""
    return (times >= first_s) & (times <= last_s)


def read_window(
    session: EMGSession, index: int, spec: WindowSpec, rng: np.random.Generator | None = None
) -> dict[str, Any]:
    """Sample ``index`` of ``session`` under ``spec`` (see the module docstring for the fields)."""
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
    emg, t = session.window(start, stop)
    w0, w1 = offset - start, offset - start + window - 1
    if session.condition != ON_KEYBOARD:
        raise DataError(session.path, f"condition is {session.condition!r}; windows need 'on_keyboard' sessions")
    label = session.keystroke_labels(t[w0], t[w1])
    return {
        "key": f"{session.user}/{session.session_name}/{offset}",
        "emg": emg,
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

    This is the direct-from-HDF5 loader (what the reference does); :mod:`emgscale.shard` streams the
    same samples from WebDataset shards. Files are opened per worker on first use.

    Args:
        paths: session files.
        spec: the windowing.
        seed: seeds the jitter (per worker and epoch through torch's worker seed).
        skip_bad: leave a bad file out (listed in ``skipped`` with the reason) instead of raising. Bad
            includes bad values: each file is read once, in chunks (:meth:`EMGSession.scan_values`,
            cached per file and process), so NaN/inf EMG or timestamps that go backwards are found
            before training rather than in the middle of it.
        max_rows: per path, use only its first this many rows (None: all).
    """

    def __init__(self, paths: Sequence["str | Path"], spec: WindowSpec, seed: int = 0, skip_bad: bool = False,
                 max_rows: Sequence[int | None] | None = None):
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
                with EMGSession(p) as s:
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
        fi, wi = self._index[item]
        if fi not in self._open:
            session = EMGSession(self.paths[fi])
            limit = self.max_rows[fi]
            self._open[fi] = session if limit is None else TruncatedSession(session, limit)
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, torch.initial_seed() % 2**31])
        return read_window(self._open[fi], wi, self.spec, self._rng)  # type: ignore[arg-type]

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
        emg: float32 ``(B, T, 2, 16)``, zero-padded in time; ``(B, 0, 2, 16)`` when the batch carries
            ``features`` instead.
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

    emg: torch.Tensor
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
    :meth:`emgscale.features.cache.FeatureCache.serve`) give ``Batch.features``.
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
        emg = np.zeros((len(samples), 0, *first.shape[1:3]), dtype=np.float32)
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
        emg=torch.from_numpy(emg),
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


def iter_session_windows(path: "str | Path", spec: WindowSpec) -> Iterator[dict[str, Any]]:
    """All windows of one session in order (no jitter), opening the file once."""
    with EMGSession(path) as s:
        for i in range(spec.num_windows(len(s))):
            yield read_window(s, i, spec)
