"""A read-only, lazy view of one emg2qwerty HDF5 session file.

The file holds one group ``emg2qwerty`` with a compound dataset ``timeseries`` (fields ``emg_left``
and ``emg_right``: 16 float32 electrodes each; ``time``: float64 unix seconds) and the group's
attributes (``session_name``, ``user``, ``condition``, ``duration_mins``, ``keystrokes`` and
``prompts`` as JSON). Only attributes are read when the session opens; EMG rows are read by slice on
demand, so taking one window of a 47-minute session reads that window only.

Every problem with the file raises :class:`~emgscale.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from emgscale.data.errors import DataError
from emgscale.data.labels import LabelData
from emgscale.data.values import value_problem

GROUP, DATASET = "emg2qwerty", "timeseries"
EMG_FIELDS = ("emg_left", "emg_right")
TIME_FIELD = "time"
NUM_BANDS, CHANNELS_PER_BAND = 2, 16
DEFAULT_SAMPLE_RATE_HZ = 2000.0
ON_KEYBOARD = "on_keyboard"


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_str(value.item())
    return str(value)


@dataclass(frozen=True)
class SessionInfo:
    """Summary of a session, from its attributes and row count (no EMG read)."""

    path: str
    session: str
    user: str
    condition: str
    duration_s: float
    num_samples: int
    num_keystrokes: int
    label_length: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON."""
        return dict(self.__dict__)


class EMGSession:
    """One session file, opened read-only. Use as a context manager or call :meth:`close`.

    Args:
        path: the ``<session>.hdf5`` file.

    Raises:
        DataError: the file is missing, not HDF5, truncated, lacks the group, dataset or a field,
            has a wrong channel count or dtype, or its keystroke/prompt JSON does not parse.
    """

    def __init__(self, path: "str | Path") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "no such session file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            problem = "not an HDF5 file" if not h5py.is_hdf5(self.path) else "truncated or corrupt HDF5"
            raise DataError(self.path, f"{problem} ({e})") from None
        try:
            self._open()
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        if GROUP not in self._file:
            raise DataError(self.path, f"missing group '{GROUP}' (found {list(self._file.keys())})")
        group = self._file[GROUP]
        if DATASET not in group or not isinstance(group[DATASET], h5py.Dataset):
            raise DataError(self.path, f"missing dataset '{GROUP}/{DATASET}'")
        ts = group[DATASET]
        fields = ts.dtype.fields or {}
        for name in (*EMG_FIELDS, TIME_FIELD):
            if name not in fields:
                raise DataError(self.path, f"'{GROUP}/{DATASET}' has no field '{name}' (fields: {list(fields)})")
        for name in EMG_FIELDS:
            sub = fields[name][0]
            shape = sub.shape
            if shape != (CHANNELS_PER_BAND,):
                raise DataError(
                    self.path, f"field '{name}' has {shape[0] if shape else 1} channels, expected {CHANNELS_PER_BAND}"
                )
            if sub.base != np.float32:
                raise DataError(self.path, f"field '{name}' is {sub.base}, expected float32")
        if ts.ndim != 1:
            raise DataError(self.path, f"'{GROUP}/{DATASET}' must be 1-D, is {ts.shape}")
        self._ts = ts
        try:
            self.metadata: dict[str, Any] = {k: group.attrs[k] for k in group.attrs.keys()}
        except OSError as e:
            raise DataError(self.path, f"cannot read attributes, file truncated or corrupt ({e})") from None
        for key in ("keystrokes", "prompts"):
            raw = self.metadata.get(key, "[]")
            try:
                value = json.loads(_as_str(raw))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(self.path, f"attribute '{key}' is not valid JSON ({e})") from None
            if not isinstance(value, list):
                raise DataError(self.path, f"attribute '{key}' must be a JSON list, got {type(value).__name__}")
            self.metadata[key] = value
        ks = self.metadata["keystrokes"]
        try:
            self._key_starts = [float(k["start"]) for k in ks]
            for k in ks:
                str(k["key"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(self.path, f"keystroke entry lacks 'key'/'start' or is malformed ({e})") from None
        if any(b < a for a, b in zip(self._key_starts, self._key_starts[1:])):
            raise DataError(self.path, "keystrokes are not sorted by press time")

    # ----------------------------------------------------------------- metadata
    @property
    def session_name(self) -> str:
        return _as_str(self.metadata.get("session_name", self.path.stem))

    @property
    def user(self) -> str:
        return _as_str(self.metadata.get("user", ""))

    @property
    def condition(self) -> str:
        return _as_str(self.metadata.get("condition", ""))

    @property
    def keystrokes(self) -> list[dict[str, Any]]:
        return self.metadata["keystrokes"]

    @property
    def prompts(self) -> list[dict[str, Any]]:
        return self.metadata["prompts"]

    def __len__(self) -> int:
        return int(self._ts.shape[0])

    @property
    def start_time(self) -> float:
        return float(self.time(0, 1)[0]) if len(self) else float("nan")

    @property
    def end_time(self) -> float:
        return float(self.time(len(self) - 1, len(self))[0]) if len(self) else float("nan")

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last sample."""
        return self.end_time - self.start_time if len(self) > 1 else 0.0

    @property
    def sample_rate_hz(self) -> float:
        """Estimated from the timestamps; the released data is 2 kHz."""
        n = len(self)
        if n < 2 or self.duration_s <= 0:
            return DEFAULT_SAMPLE_RATE_HZ
        return (n - 1) / self.duration_s

    # ----------------------------------------------------------------- reads
    def _read(self, start: int, stop: int, fields: list[str]) -> np.ndarray:
        n = len(self)
        if not (0 <= start <= stop <= n):
            raise IndexError(f"{self.path}: rows [{start}, {stop}) out of range 0..{n}")
        try:
            return self._ts.fields(fields)[start:stop] if len(fields) > 1 else self._ts.fields(fields[0])[start:stop]
        except (OSError, RuntimeError) as e:
            raise DataError(self.path, f"cannot read rows [{start}, {stop}): truncated or corrupt ({e})") from None

    def time(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Timestamps (float64 unix seconds) of rows ``[start, stop)``; checked finite and non-decreasing
        (:mod:`emgscale.data.values`)."""
        stop = len(self) if stop is None else stop
        t = np.asarray(self._read(start, stop, [TIME_FIELD]), dtype=np.float64)
        self._check(None, t, start)
        return t

    def emg(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """EMG rows ``[start, stop)`` as float32 ``(T, 2, 16)`` (band 0 left, band 1 right); checked finite
        and within bounds (:mod:`emgscale.data.values`)."""
        stop = len(self) if stop is None else stop
        rows = self._read(start, stop, list(EMG_FIELDS))
        out = np.stack([rows[EMG_FIELDS[0]], rows[EMG_FIELDS[1]]], axis=1).astype(np.float32, copy=False)
        self._check(out, None, start)
        return out

    def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """EMG ``(T, 2, 16)`` and timestamps ``(T,)`` of rows ``[start, stop)``, in one read; both checked
        by the value rule (:mod:`emgscale.data.values`)."""
        rows = self._read(start, stop, [*EMG_FIELDS, TIME_FIELD])
        emg = np.stack([rows[EMG_FIELDS[0]], rows[EMG_FIELDS[1]]], axis=1).astype(np.float32, copy=False)
        t = np.asarray(rows[TIME_FIELD], dtype=np.float64)
        self._check(emg, t, start)
        return emg, t

    def _check(self, emg: np.ndarray | None, t: np.ndarray | None, start: int,
               previous_time: float | None = None) -> None:
        """The one value rule (:func:`emgscale.data.values.value_problem`) on rows read from ``start``."""
        problem = value_problem(emg, t, first_row=start, previous_time=previous_time)
        if problem:
            raise DataError(self.path, problem)

    def index_of_time(self, t: float) -> int:
        """The first row whose timestamp is >= ``t`` (binary search with single-row reads)."""
        lo, hi = 0, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            if float(self._read(mid, mid + 1, [TIME_FIELD])[0]) < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def window_by_time(self, start_t: float, end_t: float) -> tuple[np.ndarray, np.ndarray]:
        """EMG and timestamps of the rows with ``start_t <= time < end_t``."""
        return self.window(self.index_of_time(start_t), self.index_of_time(end_t))

    def iter_chunks(self, chunk_rows: int = 1 << 18) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Stream the whole session as ``(start_row, emg, time)`` chunks of bounded size."""
        for start in range(0, len(self), chunk_rows):
            emg, t = self.window(start, min(start + chunk_rows, len(self)))
            yield start, emg, t

    def scan_values(self, chunk_rows: int = 1 << 18) -> None:
        """Read the whole file in chunks and apply the one value rule (:mod:`emgscale.data.values`): EMG
        finite and within bounds, time finite and non-decreasing, across chunks too."""
        last: float | None = None
        for start, _, t in self.iter_chunks(chunk_rows):
            self._check(None, t[:1], start, previous_time=last)
            last = float(t[-1]) if t.size else last

    # ----------------------------------------------------------------- labels
    def keystroke_labels(self, start_t: float = -np.inf, end_t: float = np.inf) -> LabelData:
        """Labels from the key presses in ``[start_t, end_t]`` (inclusive)."""
        return LabelData.from_keystrokes(self.keystrokes, start_t, end_t, starts=self._key_starts)

    def ground_truth(self, start_t: float = -np.inf, end_t: float = np.inf) -> LabelData:
        """Keystroke labels for ``on_keyboard`` sessions, prompt labels otherwise (as the reference)."""
        if self.condition == ON_KEYBOARD:
            return self.keystroke_labels(start_t, end_t)
        return LabelData.from_prompts(self.prompts, start_t, end_t)

    def info(self) -> SessionInfo:
        """Summary for ``emgscale.data info``."""
        return SessionInfo(
            path=str(self.path),
            session=self.session_name,
            user=self.user,
            condition=self.condition,
            duration_s=self.duration_s,
            num_samples=len(self),
            num_keystrokes=len(self.keystrokes),
            label_length=len(self.ground_truth()),
        )

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "EMGSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EMGSession({self.session_name!r}, user={self.user!r}, samples={len(self)})"
