"""Data layer: the real emg2qwerty HDF5 format and its BIDS copy, labels and charset, splits, windows.

Names are imported lazily so that ``emgscale.data.charset`` and friends load without torch
(the synthetic-corpus workers and the shard writers never need it).
"""

from __future__ import annotations

import importlib
from typing import Any

# Eager: light, and the function ``charset`` must shadow the submodule of the same name.
from emgscale.data.charset import CharacterSet, charset  # noqa: E402
from emgscale.data.errors import DataError  # noqa: E402

_EXPORTS = {
    "CharacterSet": "charset", "charset": "charset", "DataError": "errors", "LabelData": "labels",
    "EMGSession": "session", "SessionInfo": "session", "open_session": "source", "BIDSSession": "bids",
    "DataRoot": "splits", "Split": "splits", "SessionRef": "splits",
    "load_split": "splits", "read_metadata": "splits", "session_files": "splits", "Batch": "windows",
    "SessionWindows": "windows", "WindowSpec": "window_spec", "collate": "windows", "read_window": "windows",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"emgscale.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'emgscale.data' has no attribute {name!r}")
