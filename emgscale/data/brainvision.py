"""BrainVision recordings (``.vhdr`` header + flat binary ``.eeg``), mapped rather than read.

The header is an INI-like text file (``[Common Infos]``, ``[Binary Infos]``, ``[Channel Infos]``) naming
the data file, its layout (``DataFormat=BINARY``, ``DataOrientation=MULTIPLEXED|VECTORIZED``), its
sample type (``BinaryFormat=IEEE_FLOAT_32|INT_16|INT_32``, little-endian) and, per channel,
``Ch<n>=<name>,<reference>,<resolution>,<unit>``. A value in the file times its channel's
``resolution`` is in ``unit``; :attr:`BrainVisionHeader.volts_per_count` turns that into volts, the unit
MNE (and Meta's BIDS converter, which hands MNE the HDF5 values as volts) works in.

The data file is opened with :class:`numpy.memmap`: a window of rows is read from the disk when it is
sliced, and nothing else is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emgscale.data.errors import DataError

#: ``BinaryFormat`` -> little-endian numpy dtype (the BrainVision spec stores little-endian only).
BINARY_FORMATS = {"IEEE_FLOAT_32": "<f4", "INT_16": "<i2", "INT_32": "<i4", "UINT_16": "<u2"}
#: Voltage units -> their size in volts (pybv's table; the BrainVision spec itself knows only µV).
VOLTS = {"V": 1.0, "mV": 1e-3, "µV": 1e-6, "μV": 1e-6, "uV": 1e-6, "nV": 1e-9}


@dataclass(frozen=True)
class BrainVisionHeader:
    """What a ``.vhdr`` says about its data file.

    Attributes:
        path: the ``.vhdr`` file.
        data_file: the binary file it names (resolved beside the header).
        marker_file: the ``.vmrk`` it names, if any.
        orientation: ``MULTIPLEXED`` (one row per sample) or ``VECTORIZED`` (one row per channel).
        dtype: numpy dtype of one stored value.
        sample_rate_hz: ``1e6 / SamplingInterval`` (the interval is in microseconds).
        channel_names: in file order.
        resolutions: per channel, the unit value of one stored count.
        units: per channel, the unit (``µV`` as pybv writes it).
    """

    path: Path
    data_file: Path
    marker_file: Path | None
    orientation: str
    dtype: np.dtype
    sample_rate_hz: float
    channel_names: tuple[str, ...]
    resolutions: tuple[float, ...]
    units: tuple[str, ...]

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def volts_per_count(self) -> np.ndarray:
        """float64 ``(C,)``: stored value -> volts, per channel. A non-voltage unit is not scaled (pybv's rule).

        pybv writes ``value_in_volts * (unit_scale / resolution)`` (one float64 factor per channel); the
        exact inverse of that is dividing by the same factor, which :meth:`counts_per_volt` gives.
        """
        return 1.0 / self.counts_per_volt()

    def counts_per_volt(self) -> np.ndarray:
        """float64 ``(C,)``: pybv's writing factor ``unit_scale * (1 / resolution)`` per channel."""
        return np.array([(1.0 / VOLTS[u] if u in VOLTS else 1.0) * (1.0 / r)
                         for u, r in zip(self.units, self.resolutions)], dtype=np.float64)

    def num_samples(self) -> int:
        """Samples in the data file, from its size.

        Raises:
            DataError: the data file is missing or its size is not a whole number of samples.
        """
        try:
            size = self.data_file.stat().st_size
        except FileNotFoundError:
            raise DataError(self.path, f"DataFile={self.data_file.name}: no such file beside the header") from None
        frame = self.dtype.itemsize * self.num_channels
        if size % frame:
            raise DataError(self.data_file, f"{size} bytes is not a whole number of {self.num_channels}-channel "
                                            f"{self.dtype.name} samples (truncated?)")
        return size // frame

    def memmap(self) -> np.ndarray:
        """The data file as a read-only map, ``(samples, channels)`` (a transposed view when vectorized)."""
        n = self.num_samples()
        if n == 0:
            return np.zeros((0, self.num_channels), dtype=self.dtype)
        if self.orientation == "MULTIPLEXED":
            return np.memmap(self.data_file, dtype=self.dtype, mode="r", shape=(n, self.num_channels))
        return np.memmap(self.data_file, dtype=self.dtype, mode="r", shape=(self.num_channels, n)).T


def _sections(path: Path) -> dict[str, dict[str, str]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # Codepage=ANSI headers
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or not lines[0].startswith("Brain Vision"):
        raise DataError(path, "not a BrainVision header (first line should start 'Brain Vision')")
    out: dict[str, dict[str, str]] = {}
    section = ""
    for line in lines[1:]:
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
        elif "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(section, {})[key.strip()] = value.strip()
    return out


def read_header(path: "str | Path") -> BrainVisionHeader:
    """Parse a ``.vhdr`` file.

    Raises:
        DataError: naming the header: missing, not BrainVision, not binary, an unknown orientation or
            binary format, no channels, a bad sampling interval or resolution, or a data file it names
            that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such BrainVision header")
    s = _sections(path)
    common, binary, chans = s.get("Common Infos", {}), s.get("Binary Infos", {}), s.get("Channel Infos", {})
    fmt = common.get("DataFormat", "BINARY").upper()
    if fmt != "BINARY":
        raise DataError(path, f"DataFormat={fmt}: only BINARY data files are supported")
    orientation = common.get("DataOrientation", "MULTIPLEXED").upper()
    if orientation not in ("MULTIPLEXED", "VECTORIZED"):
        raise DataError(path, f"DataOrientation={orientation}: expected MULTIPLEXED or VECTORIZED")
    binfmt = binary.get("BinaryFormat", "INT_16").upper()
    if binfmt not in BINARY_FORMATS:
        raise DataError(path, f"BinaryFormat={binfmt}: expected one of {sorted(BINARY_FORMATS)}")
    if "DataFile" not in common:
        raise DataError(path, "[Common Infos] has no DataFile=")
    data_file = path.parent / common["DataFile"]
    if not data_file.is_file():
        raise DataError(path, f"DataFile={common['DataFile']}: no such file beside the header")
    marker = path.parent / common["MarkerFile"] if common.get("MarkerFile") else None
    try:
        interval_us = float(common["SamplingInterval"])
        if not interval_us > 0:
            raise ValueError(interval_us)
    except (KeyError, ValueError):
        raise DataError(path, f"SamplingInterval={common.get('SamplingInterval')!r}: expected microseconds > 0") \
            from None
    try:
        count = int(common.get("NumberOfChannels", len(chans)))
    except ValueError:
        raise DataError(path, f"NumberOfChannels={common['NumberOfChannels']!r} is not a number") from None
    names, resolutions, units = [], [], []
    for i in range(1, count + 1):
        entry = chans.get(f"Ch{i}")
        if entry is None:
            raise DataError(path, f"[Channel Infos] has no Ch{i}= (NumberOfChannels={count})")
        fields = [f.replace("\\1", ",") for f in entry.split(",")]
        names.append(fields[0])
        try:
            res = float(fields[2]) if len(fields) > 2 and fields[2] else 1.0
            if not res > 0:
                raise ValueError(res)
        except ValueError:
            raise DataError(path, f"Ch{i}: resolution {fields[2]!r} is not a positive number") from None
        resolutions.append(res)
        units.append(fields[3] if len(fields) > 3 and fields[3] else "µV")
    if not names:
        raise DataError(path, "no channels")
    return BrainVisionHeader(path, data_file, marker, orientation, np.dtype(BINARY_FORMATS[binfmt]),
                             1e6 / interval_us, tuple(names), tuple(resolutions), tuple(units))
