"""Data layer: the real emg2qwerty HDF5 format, labels and charset, splits, windows."""

from emgscale.data.charset import CharacterSet, charset
from emgscale.data.errors import DataError
from emgscale.data.labels import LabelData
from emgscale.data.session import EMGSession, SessionInfo
from emgscale.data.splits import Split, SessionRef, load_split, read_metadata, session_files
from emgscale.data.windows import Batch, SessionWindows, WindowSpec, collate, read_window

__all__ = [
    "Batch", "CharacterSet", "DataError", "EMGSession", "LabelData", "SessionInfo", "SessionRef",
    "SessionWindows", "Split", "WindowSpec", "charset", "collate", "load_split", "read_metadata",
    "read_window", "session_files",
]
