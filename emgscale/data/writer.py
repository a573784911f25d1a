"""Write a session file in the official emg2qwerty HDF5 layout (used by the synthetic corpus and tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from emgscale.common import atomic_path
from emgscale.data.session import CHANNELS_PER_BAND, DATASET, GROUP

TIMESERIES_DTYPE = np.dtype([
    ("emg_left", np.float32, (CHANNELS_PER_BAND,)),
    ("emg_right", np.float32, (CHANNELS_PER_BAND,)),
    ("time", np.float64),
])


def write_session_file(
    path: "str | Path",
    emg: np.ndarray,
    time: np.ndarray,
    *,
    session_name: str,
    user: str,
    keystrokes: Sequence[dict[str, Any]],
    prompts: Sequence[dict[str, Any]] = (),
    condition: str = "on_keyboard",
    extra_attrs: dict[str, Any] | None = None,
) -> Path:
    """Write one session atomically (temp file + rename).

    Args:
        path: destination ``<session>.hdf5``.
        emg: float32 ``(T, 2, 16)``; band 0 is stored as ``emg_left``, band 1 as ``emg_right``.
        time: float64 ``(T,)`` unix seconds, non-decreasing.
        session_name, user, condition: the group attributes of the same names.
        keystrokes: ``{"key", "start", "end"}`` objects sorted by ``start`` (stored as JSON).
        prompts: ``{"name", "start", "end", "payload"}`` objects (stored as JSON).
        extra_attrs: more attributes to store as they are.
    """
    emg = np.asarray(emg, dtype=np.float32)
    time = np.asarray(time, dtype=np.float64)
    if emg.ndim != 3 or emg.shape[1:] != (2, CHANNELS_PER_BAND):
        raise ValueError(f"emg must be (T, 2, {CHANNELS_PER_BAND}), got {emg.shape}")
    if time.shape != (emg.shape[0],):
        raise ValueError(f"time must be ({emg.shape[0]},), got {time.shape}")
    rows = np.empty(len(time), dtype=TIMESERIES_DTYPE)
    rows["emg_left"] = emg[:, 0]
    rows["emg_right"] = emg[:, 1]
    rows["time"] = time
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group(GROUP)
            g.create_dataset(DATASET, data=rows)
            g.attrs["session_name"] = session_name
            g.attrs["user"] = str(user)
            g.attrs["condition"] = condition
            g.attrs["duration_mins"] = float((time[-1] - time[0]) / 60.0) if len(time) > 1 else 0.0
            g.attrs["keystrokes"] = json.dumps(list(keystrokes))
            g.attrs["prompts"] = json.dumps(list(prompts))
            for k, v in (extra_attrs or {}).items():
                g.attrs[k] = v
    return path
