"""One recording of the BIDS copy of emg2qwerty, read like an HDF5 session.

Meta's ``scripts/convert_to_bids.py`` (reference repository at 3200d91) writes each HDF5 session as
``sub-NN/ses-NN/eeg/sub-NN_ses-NN_task-emg2qwerty_*``: a BrainVision recording (``_eeg.vhdr`` /
``.vmrk`` / ``.eeg``, IEEE float32, 2 kHz, channels ``emg0_left`` ... ``emg15_left``, ``emg0_right`` ...
``emg15_right``), its ``_channels.tsv`` and an ``_events.tsv`` whose ``trial_type`` is ``key/<key name>``
(one zero-duration event per key of the reference's ground truth, at the first EMG sample at or after
the press) or ``prompt/<text>`` (a text prompt, ``⏎`` written as ``\\n``, with its duration).

:class:`BIDSSession` is an :class:`~emgscale.data.session.EMGSession` over those files, so windows, the
label rule, the value checks and :meth:`info` are the HDF5 session's own. What differs:

* EMG: the converter handed MNE the HDF5 values as volts and pybv stored them as
  ``value * 1e6 / 0.1`` (µV at 0.1 µV resolution); :meth:`emg` divides by the same float64 factor
  (read from the header's resolution and unit), giving the HDF5 values back to float32 rounding.
* Timestamps: BIDS keeps none per sample. Row ``i`` is at ``t0 + i / sample_rate_hz`` seconds, where
  ``t0`` is the ``acq_time`` of the ``_scans.tsv`` (unix seconds) or 0 when it is ``n/a`` (the
  converter's case: its recordings carry no date). These are the HDF5 times up to a constant and the
  HDF5 clock's jitter around an exact 2 kHz; a key press is at the time of the row it was moved to.
  So the labels of a window of rows ``[a, b]`` are those of the HDF5 window, except a press that fell
  between rows ``a - 1`` and ``a`` (in no HDF5 window, in this one here) — the converter kept no finer time.
* Identity: the session name, user and condition come from the ``metadata.csv`` the copy was made from
  (the root's own, or ``bids_metadata``) by the converter's numbering rule
  (:func:`~emgscale.data.splits.bids_names`); without one they are the BIDS names (``sub-01_ses-02``,
  ``sub-01``) and ``on_keyboard`` (the converter only handles keyboard sessions).

EMG is a :class:`numpy.memmap` of the ``.eeg`` file: a window reads that window's bytes only.
Every problem with the files raises :class:`~emgscale.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from emgscale.data.brainvision import read_header
from emgscale.data.charset import ENTER, charset
from emgscale.data.errors import DataError
from emgscale.data.session import CHANNELS_PER_BAND, EMG_FIELDS, NUM_BANDS, ON_KEYBOARD, TIME_FIELD, EMGSession
from emgscale.data.splits import DataRoot, bids_root_of

#: Channel names the converter writes, in the order of emgscale's ``(2, 16)`` bands.
CHANNEL_NAMES = tuple(f"emg{i}_{side}" for side in ("left", "right") for i in range(CHANNELS_PER_BAND))
KEY_PREFIX, PROMPT_PREFIX = "key/", "prompt/"
#: How far the metadata's duration may be from the recording's before the mapping is called wrong.
DURATION_TOLERANCE = (0.05, 2.0)  # relative, seconds


def sidecar(recording: Path, suffix: str) -> Path:
    """The BIDS sidecar of a recording: ``X_eeg.vhdr`` -> ``X_<suffix>``."""
    return recording.with_name(re.sub(r"_[A-Za-z0-9]+\.vhdr$", "", recording.name, flags=re.I) + f"_{suffix}")


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a BIDS TSV file (tab-separated, no quoting: a key named ``"`` stays ``"``). A row cut by a
    newline inside a value (a prompt written by the converter under pandas < 2, whose ``str.replace``
    turned ``⏎`` into a real newline) is joined back."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if not lines or not lines[0].strip():
        raise DataError(path, "empty TSV file (no header)")
    header = lines[0].rstrip("\r").split("\t")
    rows, pending = [], ""
    for lineno, line in enumerate(lines[1:], start=2):
        text = f"{pending}\n{line}" if pending else line.rstrip("\r")
        if not text:
            continue
        values = text.split("\t")
        if len(values) < len(header) and lineno < len(lines):
            pending = text
            continue
        pending = ""
        if len(values) != len(header):
            raise DataError(path, f"line {lineno} has {len(values)} columns, the header {len(header)}")
        rows.append(dict(zip(header, values)))
    return rows


class BIDSSession(EMGSession):
    """One BIDS recording (its ``.vhdr``), opened read-only; the :class:`EMGSession` interface.

    Args:
        path: the recording's ``_eeg.vhdr``.
        bids_metadata: the ``metadata.csv`` the copy was made from, when the BIDS root has none.

    Raises:
        DataError: naming the file: a missing header, data file or events file, a channel count other
            than 32 or other channel names, unknown key names, no key events, or a metadata file whose
            session lasts other than this recording.
    """

    def __init__(self, path: "str | Path", bids_metadata: "str | Path | None" = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "no such BIDS recording (.vhdr header)")
        header = read_header(self.path)
        if header.num_channels != NUM_BANDS * CHANNELS_PER_BAND:
            raise DataError(self.path, f"{header.num_channels} channels, expected {NUM_BANDS * CHANNELS_PER_BAND} "
                                       f"({CHANNEL_NAMES[0]} ... {CHANNEL_NAMES[-1]})")
        missing = [c for c in CHANNEL_NAMES if c not in header.channel_names]
        if missing:
            raise DataError(self.path, f"channels {missing[:4]}{' ...' if len(missing) > 4 else ''} missing "
                                       f"(has {list(header.channel_names[:3])} ...)")
        self._check_channels_tsv(header.channel_names)
        order = [header.channel_names.index(c) for c in CHANNEL_NAMES]
        self.header = header
        self._order = np.asarray(order)
        self._identity_order = order == list(range(len(order)))
        self._counts_per_unit = header.counts_per_volt()[self._order]  # pybv's factor, undone by division
        self._n = header.num_samples()
        self._data: np.ndarray | None = header.memmap()
        self._rate = float(header.sample_rate_hz)
        self._t0 = self._acq_time()
        keystrokes, prompts = self._events()
        user, session, row = DataRoot(bids_root_of(self.path), bids_metadata).identity(self.path)
        duration_s = (self._n - 1) / self._rate if self._n > 1 else 0.0
        if row is not None:
            said = row.duration_mins * 60.0
            if abs(said - duration_s) > max(DURATION_TOLERANCE[0] * said, DURATION_TOLERANCE[1]):
                raise DataError(self.path, f"lasts {duration_s:.1f} s, but the metadata names it session {session} "
                                           f"of user {user}, {said:.1f} s long: is that the metadata.csv the copy was "
                                           f"made from?")
        self.metadata: dict[str, Any] = {
            "session_name": session, "user": user, "condition": (row.condition if row else "") or ON_KEYBOARD,
            "duration_mins": duration_s / 60.0, "keystrokes": keystrokes, "prompts": prompts,
        }
        self._key_starts = [k["start"] for k in keystrokes]

    # ----------------------------------------------------------------- sidecars
    def _check_channels_tsv(self, names: tuple[str, ...]) -> None:
        path = sidecar(self.path, "channels.tsv")
        if not path.is_file():
            return  # optional: the header names the channels
        listed = tuple(r.get("name", "") for r in read_tsv(path))
        if listed != names:
            raise DataError(path, f"lists {len(listed)} channels {list(listed[:3])} ..., the header "
                                  f"{len(names)} {list(names[:3])} ...")

    def _acq_time(self) -> float:
        """Unix seconds of the first sample from ``_scans.tsv`` (0.0 when absent or ``n/a``)."""
        sub = next((p for p in self.path.parents if p.name.startswith("sub-")), None)
        scans = next(iter(sorted(self.path.parent.parent.glob("*_scans.tsv"))), None) if sub else None
        if scans is None:
            return 0.0
        for r in read_tsv(scans):
            if Path(r.get("filename", "")).name == self.path.name and r.get("acq_time", "n/a") != "n/a":
                try:
                    return datetime.fromisoformat(r["acq_time"].replace("Z", "+00:00")).timestamp()
                except ValueError:
                    raise DataError(scans, f"acq_time {r['acq_time']!r} is not an ISO 8601 time") from None
        return 0.0

    def _time_of(self, samples: np.ndarray) -> np.ndarray:
        """float64 time of sample indices (the one formula for rows and events alike)."""
        return self._t0 + np.asarray(samples, dtype=np.float64) / self._rate

    def _events(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Keystrokes and prompts (the HDF5 attributes' shapes) from ``_events.tsv``."""
        path = sidecar(self.path, "events.tsv")
        if not path.is_file():
            raise DataError(self.path, f"no events file {path.name} beside it (its key/... events are the labels)")
        rows = read_tsv(path)
        keys = set(charset().keys)
        found: list[tuple[int, int, str, float]] = []  # (sample, line, trial_type, duration_s)
        for lineno, r in enumerate(rows, start=2):
            trial = r.get("trial_type", "")
            if not trial.startswith((KEY_PREFIX, PROMPT_PREFIX)):
                continue
            try:
                sample = r.get("sample", "n/a")
                onset = round(float(sample)) if sample != "n/a" else round(float(r["onset"]) * self._rate)
                dur = r.get("duration", "n/a")
                duration = float(dur) if dur != "n/a" else 0.0
            except (KeyError, ValueError):
                raise DataError(path, f"line {lineno}: onset/sample {r.get('onset')!r}/{r.get('sample')!r} "
                                      f"is not a number") from None
            if trial.startswith(KEY_PREFIX) and trial[len(KEY_PREFIX):] not in keys:
                raise DataError(path, f"line {lineno}: unknown key name {trial[len(KEY_PREFIX):]!r} (expected the "
                                      f"emg2qwerty charset's: a, A, 1, !, Key.space, Key.shift, Key.backspace, ...)")
            found.append((onset, lineno, trial, duration))
        found.sort()  # by sample, ties in file order
        key_rows = [f for f in found if f[2].startswith(KEY_PREFIX)]
        if not key_rows:
            raise DataError(path, "no key/<name> events: not an emg2qwerty keystroke recording")
        t = self._time_of(np.array([f[0] for f in key_rows], dtype=np.int64))
        keystrokes = [{"key": f[2][len(KEY_PREFIX):], "start": float(ti), "end": float(ti)}
                      for f, ti in zip(key_rows, t)]
        prompts = []
        for onset, _, trial, duration in (f for f in found if f[2].startswith(PROMPT_PREFIX)):
            end = onset + int(round(duration * self._rate))
            start_t, end_t = self._time_of(np.array([onset, end]))
            text = trial[len(PROMPT_PREFIX):].replace("\\n", ENTER).replace("\n", ENTER)  # written or real newline
            prompts.append({"name": "text_prompt", "start": float(start_t), "end": float(end_t),
                            "payload": {"text": text}})
        return keystrokes, prompts

    # ----------------------------------------------------------------- reads (EMGSession's primitives)
    def __len__(self) -> int:
        return self._n

    @property
    def sample_rate_hz(self) -> float:
        """From the header's ``SamplingInterval`` (2 kHz for emg2qwerty)."""
        return self._rate

    def _read(self, start: int, stop: int, fields: list[str]) -> "np.ndarray | dict[str, np.ndarray]":
        """Rows ``[start, stop)`` as the HDF5 dataset gives them to :class:`EMGSession`: ``{field: array}``
        (indexable like its structured rows) for several fields, the plain array for one. Only the rows
        asked for are read from the mapped file."""
        n = len(self)
        if not (0 <= start <= stop <= n):
            raise IndexError(f"{self.path}: rows [{start}, {stop}) out of range 0..{n}")
        if self._data is None:
            raise DataError(self.path, "session is closed")
        out: dict[str, np.ndarray] = {}
        if TIME_FIELD in fields:
            out[TIME_FIELD] = self._time_of(np.arange(start, stop))
        if any(f in fields for f in EMG_FIELDS):
            try:
                rows = self._data[start:stop]  # (T, 32) stored counts: the only disk read
                rows = rows if self._identity_order else rows[:, self._order]
                emg = (rows / self._counts_per_unit).astype(np.float32)  # HDF5 units (float64 division, as written)
            except OSError as e:
                raise DataError(self.header.data_file, f"cannot read rows [{start}, {stop}) ({e})") from None
            for band, f in enumerate(EMG_FIELDS):
                out[f] = emg[:, band * CHANNELS_PER_BAND:(band + 1) * CHANNELS_PER_BAND]
        return out if len(fields) > 1 else out[fields[0]]

    def index_of_time(self, t: float) -> int:
        """The first row whose timestamp is >= ``t`` (closed form: rows are evenly spaced)."""
        if not math.isfinite(t):
            return 0 if t < 0 else len(self)
        i = min(max(int(math.ceil((t - self._t0) * self._rate)), 0), len(self))
        while i > 0 and self._time_of(np.array([i - 1]))[0] >= t:
            i -= 1
        while i < len(self) and self._time_of(np.array([i]))[0] < t:
            i += 1
        return i

    def close(self) -> None:
        self._data = None  # the map closes when its last view goes

    def __repr__(self) -> str:
        return f"BIDSSession({self.session_name!r}, user={self.user!r}, samples={len(self)}, path={str(self.path)!r})"
