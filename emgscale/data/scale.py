"""Signal scale: what amplitude the front end expects, what a recording has, and the gain between them.

The reference front end takes ``log10(power + 1e-6)`` of the STFT, then a per-channel normalisation.
A constant gain on the EMG only shifts the log power, which the normalisation removes, *as long as the
power stays well above the fixed 1e-6 floor*. emg2qwerty's HDF5 files hold microvolt-like values
(quiet floor of a few units, typing bursts of tens to hundreds; the released generic model's first-layer
statistics agree), and there the floor is 4-8 decades below the signal. The same EMG in volts (~1e-5,
power ~1e-10) sits *under* the floor everywhere, every feature is the floor value, and a model trains
to chance without a word — what real 8-channel recordings in their own units did.

The rule, one implementation used by ``data info``, training (``model.features.input_gain``, chosen at
launch) and evaluation:

* a recording's scale is the median over channels of each channel's standard deviation (DC removed)
  over a sample of its windows (:func:`channel_scale`);
* a scale inside :data:`EXPECTED_SCALE` (``[1, 1e4]``: microvolt-like values, integer ADC counts of
  common armbands) is what the front end expects: gain 1, features exactly as the reference computes
  them;
* outside it, the gain is the power of ten that brings the scale nearest :data:`TARGET_SCALE` (30):
  volts (~1e-5) get 1e6, millivolts (~1e-2) 1e3. A power of ten keeps the gain a unit conversion, so a
  model trained on volts sees the features a model trained on microvolts sees (up to float rounding).

This module needs numpy only (no torch), so ``data info`` stays light.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

#: (low, high): per-channel standard deviations the front end is built for (a microvolt-like scale).
EXPECTED_SCALE = (1.0, 1e4)
#: Where a gain brings a scale that lies outside :data:`EXPECTED_SCALE` (to the nearest power of ten).
TARGET_SCALE = 30.0


def channel_scale(x: np.ndarray) -> float:
    """The scale of EMG ``x`` ``(T, ...channels)``: the median over channels of each one's standard deviation.

    The mean is removed per channel (a DC offset, e.g. unsigned ADC counts, is not amplitude); channels
    that are exactly constant (dead, or masked) are left out. Returns 0.0 when every channel is constant
    or ``x`` is empty, NaN when a value is not finite.
    """
    if x.size == 0:
        return 0.0
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if not np.isfinite(flat).all():
        return math.nan
    sd = flat.std(axis=0)
    sd = sd[sd > 0]
    return float(np.median(sd)) if sd.size else 0.0


def sampled_scale(read: Callable[[int, int], np.ndarray], num_samples: int, sample_rate_hz: float,
                  max_seconds: float = 60.0, pieces: int = 12) -> float:
    """:func:`channel_scale` of up to ``max_seconds`` of a recording, read as ``pieces`` evenly spread windows.

    Args:
        read: ``read(start, stop) -> (stop - start, ...)`` EMG rows of the recording.
        num_samples: rows in the recording.
        sample_rate_hz: its sampling rate.
        max_seconds: at most this much EMG is read (the whole recording when shorter).
        pieces: windows it is read in, spread over the recording.
    """
    want = int(max_seconds * sample_rate_hz)
    if num_samples <= want:
        return channel_scale(read(0, num_samples))
    size = max(1, want // pieces)
    starts = np.linspace(0, num_samples - size, pieces).astype(int)
    return channel_scale(np.concatenate([read(int(s), int(s) + size) for s in starts]))


def in_expected_range(scale: float) -> bool:
    """True when ``scale`` (:func:`channel_scale`) is one the front end expects without a gain."""
    return EXPECTED_SCALE[0] <= scale <= EXPECTED_SCALE[1]


def gain_for_scale(scale: float) -> float:
    """The input gain for data of this scale: 1 inside :data:`EXPECTED_SCALE`, else the power of ten that
    brings it nearest :data:`TARGET_SCALE`.

    Raises:
        ValueError: ``scale`` is not a positive finite number (all-constant or non-finite data).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"cannot choose an input gain for EMG of scale {scale!r} (constant or non-finite data)")
    if in_expected_range(scale):
        return 1.0
    return float(10.0 ** round(math.log10(TARGET_SCALE / scale)))


def scale_warning(scale: float, gain: float = 1.0, where: str = "") -> str | None:
    """One line when EMG of ``scale``, multiplied by ``gain``, is far from what the front end expects; else None.

    Args:
        scale: the data's :func:`channel_scale`, in the file's units.
        gain: the model's ``features.input_gain`` (1 for data info: the raw file).
        where: what the data is (a file, a split), for the message.
    """
    if not math.isfinite(scale):
        return f"{where}: EMG values are not finite".lstrip(": ")
    seen = scale * gain
    if in_expected_range(seen):
        return None
    lo, hi = EXPECTED_SCALE
    if gain == 1.0:
        fix = (f"training picks model.features.input_gain={gain_for_scale(scale):g} for it automatically"
               if scale > 0 else "the channels are constant")
    else:
        fix = f"the model's input_gain is {gain:g}: are these files in other units than its training data?"
    return (f"{where}: EMG scale {scale:.3g} per channel (median std) x gain {gain:g} is outside the "
            f"{lo:g}-{hi:g} the log-spectrogram front end (log10(power + 1e-6)) expects; {fix}").lstrip(": ")


# ----------------------------------------------------------------------------- the same data in other units
def rescale_session_file(src: "str | Path", dst: "str | Path", factor: float, integer: bool = False) -> Path:
    """Copy an emg2qwerty HDF5 session with its EMG multiplied by ``factor`` (and rounded, for ``integer``
    ADC-count-like values): the same recording in other units, everything else as it was.

    Args:
        src: the session file.
        dst: the copy to write (atomically).
        factor: e.g. 1e-6 for microvolts -> volts.
        integer: round the scaled values to whole numbers (stored as float32, as the format requires).
    """
    import shutil

    import h5py

    from emgscale.common import atomic_path
    from emgscale.data.session import DATASET, EMG_FIELDS, GROUP

    with atomic_path(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            ds = f[GROUP][DATASET]
            rows = ds[()]
            for name in EMG_FIELDS:
                v = rows[name].astype(np.float64) * factor
                rows[name] = np.round(v) if integer else v
            ds[()] = rows
    return Path(dst)


def rescale_table(src: "str | Path", dst: "str | Path", factor: float, columns: Sequence[int],
                  integer: bool = False) -> Path:
    """Copy a CSV/TSV recording with the given columns multiplied by ``factor``, keeping its layout
    (header, delimiter, other columns) byte for byte; values are written with 8 significant digits
    (whole numbers for ``integer``).

    Args:
        src: the file.
        dst: the copy to write (atomically).
        factor: the unit conversion.
        columns: indices of the EMG columns.
        integer: round to whole numbers (ADC counts).
    """
    from emgscale.common import atomic_write_text

    text = Path(src).read_text()
    delim = "\t" if "\t" in text.split("\n", 1)[0] else ","
    out = []
    for line in text.splitlines():
        fields = line.split(delim)
        try:
            values = [float(fields[c]) * factor for c in columns]
        except (ValueError, IndexError):
            out.append(line)  # a header or a blank line
            continue
        for c, v in zip(columns, values):
            fields[c] = str(int(round(v))) if integer else f"{v:.8g}"
        out.append(delim.join(fields))
    atomic_write_text(dst, "\n".join(out) + "\n")
    return Path(dst)


def rescaled_copy(src_root: "str | Path", dst_root: "str | Path", factor: float, integer: bool = False,
                  table_columns: Sequence[int] | None = None) -> Path:
    """Copy a data root (HDF5 sessions, or CSV/TSV recordings with ``table_columns``) with its EMG in other
    units; every other file (``metadata.csv``, split YAMLs, ...) is copied as it is.

    Returns:
        ``dst_root``.
    """
    import shutil

    src_root, dst_root = Path(src_root), Path(dst_root)
    for p in sorted(src_root.rglob("*")):
        if not p.is_file():
            continue
        q = dst_root / p.relative_to(src_root)
        q.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".hdf5":
            rescale_session_file(p, q, factor, integer)
        elif table_columns is not None and p.suffix.lower() in (".csv", ".tsv") and p.name != "metadata.csv":
            rescale_table(p, q, factor, table_columns, integer)
        else:
            shutil.copyfile(p, q)
    return dst_root
