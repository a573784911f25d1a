"""Tables of EMG rows ("time + N channels + label per row", CSV/TSV) and folders of them.

A *recording* is one file: ``emg`` (T, C) float32 at a stated ``sample_rate_hz`` and, when the file
has them, ``labels`` (T,) int64, one class per row. :class:`CSVFormat` says how a file is laid out:
delimiter (sniffed by default), header row or not (detected by default), which columns hold the time,
the channels and the label (by index, negative from the end, or by header name), the time unit
(``s``/``ms``/``us``), and, for one-file-per-class layouts such as LibEMG's
``R_<rep>_C_<class>_EMG.csv``, a regular expression giving the class of a whole file.

Timestamps: rows must be in strictly increasing time. When they sit on the stated rate's grid (every
row within ``grid_tolerance`` of a period of ``t0 + i / rate``) the rows are kept as they are;
otherwise the channels are interpolated linearly onto that grid and each grid point takes the label
of the last row at or before it. Rows much denser than the stated rate are first interpolated at
their own median rate and then decimated with the anti-aliased resampler
(:func:`emgscale.data.device.resample`).

A problem in a file (a short row, a missing column, a non-number, time going backwards, an unknown
label) is a :class:`~emgscale.data.errors.DataError` naming the file and the line.

A *split* (:func:`load_file_split`, :func:`make_split`) lists the files of ``train`` / ``val`` / ``test``
relative to a data root (glob patterns allowed), e.g. for LibEMG leave-one-repetition-out::

    train: ["R_[0-2]_C_*_EMG.csv"]
    val: ["R_3_C_*_EMG.csv"]
    test: ["R_3_C_*_EMG.csv"]
"""

from __future__ import annotations

import csv
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from emgscale.common import atomic_write_text
from emgscale.data.errors import DataError

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
SUFFIXES = (".csv", ".tsv", ".txt")
PARTS = ("train", "val", "test")
#: The finger dataset's labels (the synthetic corpus writes their indices).
FINGER_CLASSES = ("rest", "thumb", "index", "middle", "ring", "little")

Column = "int | str | None"


@dataclass
class CSVFormat:
    """How a table of EMG rows is laid out (the ``data.csv`` section of the training config).

    Attributes:
        delimiter: ``auto`` (tab for ``.tsv``, else the most frequent of ``,`` ``;`` tab on the first
            line), or the delimiter itself (``","``, ``"\\t"``, ``";"``).
        header: ``auto`` (a first row with a non-number outside the label column is a header),
            ``yes`` or ``no``.
        time_column: index (negative from the end) or header name of the time column; None = no
            time column (rows are samples at ``sample_rate_hz``).
        channel_columns: indices or names of the channels; None = every column that is neither time
            nor label.
        label_column: index or name of the per-row label; None = no label column.
        time_unit: ``s``, ``ms`` or ``us``.
        sample_rate_hz: the stated rate; irregular timestamps are resampled to it.
        class_names: label names in class order (``[rest, thumb, ...]``): name labels map to their
            index (numeric labels are used as they are, and must be below ``len(class_names)``).
        file_label: regular expression on the file name whose first group is the class of every row
            (LibEMG: ``C_(\\d+)``), for files without a label column; a number, or a class name.
        grid_tolerance: timestamps within this fraction of a period of the uniform grid are kept.
    """

    delimiter: str = "auto"
    header: str = "auto"
    time_column: int | str | None = 0
    channel_columns: list[int | str] | None = None
    label_column: int | str | None = -1
    time_unit: str = "s"
    sample_rate_hz: float = 200.0
    class_names: list[str] | None = None
    file_label: str | None = None
    grid_tolerance: float = 0.25


def libemg_format(sample_rate_hz: float = 200.0) -> CSVFormat:
    """LibEMG's layout: no header, no time, only channel columns, the class in the file name (``C_<k>``)."""
    return CSVFormat(delimiter=",", header="no", time_column=None, label_column=None, sample_rate_hz=sample_rate_hz,
                     file_label=r"C_(\d+)")


@dataclass
class Recording:
    """One file of EMG rows.

    Attributes:
        path: the file.
        emg: float32 (T, C) at ``sample_rate_hz``.
        labels: int64 (T,) class per row, or None (unlabelled file).
        sample_rate_hz: rate of ``emg``.
        user, session: identifiers (the file's folder and its path below the data root, without suffix).
        resampled: the timestamps were irregular and the rows were resampled onto the rate's grid.
    """

    path: str
    emg: np.ndarray
    labels: np.ndarray | None
    sample_rate_hz: float
    user: str
    session: str
    resampled: bool = False

    @property
    def duration_s(self) -> float:
        return len(self.emg) / self.sample_rate_hz

    def __len__(self) -> int:
        return len(self.emg)


def check_class_labels(rec: Recording, num_classes: int) -> None:
    """The one rule for a frame classifier's labels: every row's class is below ``num_classes`` (-1: none).

    Raises:
        DataError: naming the file, the first bad row and its label.
    """
    if rec.labels is None or not len(rec.labels):
        return
    bad = np.flatnonzero((rec.labels >= num_classes) | (rec.labels < -1))
    if bad.size:
        r = int(bad[0])
        raise DataError(rec.path, f"row {r}: label {int(rec.labels[r])} is not a class of the model, which has "
                                  f"{num_classes} (0..{num_classes - 1}; model.num_classes)")


def label_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal labels as ``(start_row, stop_row, label)`` (stop exclusive), in order."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return []
    edges = np.flatnonzero(np.diff(labels)) + 1
    starts, stops = np.r_[0, edges], np.r_[edges, len(labels)]
    return [(int(a), int(b), int(labels[a])) for a, b in zip(starts, stops)]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _delimiter(path: Path, first_line: str, fmt: CSVFormat) -> str:
    if fmt.delimiter != "auto":
        return "\t" if fmt.delimiter in ("\\t", "tab") else fmt.delimiter
    if path.suffix.lower() == ".tsv":
        return "\t"
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _resolve(col: "int | str", header: list[str] | None, width: int, path: Path, what: str) -> int:
    """Column index of ``col`` (an index, negative from the end, or a header name)."""
    if isinstance(col, str) and not col.lstrip("-").isdigit():
        if header is None:
            raise DataError(path, f"{what} {col!r} is a name, but the file has no header row")
        names = [h.strip() for h in header]
        if col not in names:
            raise DataError(path, f"line 1: no column named {col!r} for the {what} (header: {', '.join(names)})")
        return names.index(col)
    i = int(col)
    j = i + width if i < 0 else i
    if not 0 <= j < width:
        raise DataError(path, f"{what} {i} does not exist: the rows have {width} columns")
    return j


def _parse_label(cell: str, classes: list[str] | None, path: Path, line: int) -> int:
    cell = cell.strip()
    try:
        value = float(cell)
    except ValueError:
        if classes is None:
            raise DataError(path, f"line {line}: label {cell!r} is not a number (set csv.class_names to map "
                                  f"label names to classes)") from None
        if cell not in classes:
            raise DataError(path, f"line {line}: unknown label {cell!r} (known: {', '.join(classes)})") from None
        return classes.index(cell)
    if not value.is_integer() or value < 0 or (classes is not None and value >= len(classes)):
        bound = f" below {len(classes)}" if classes is not None else ""
        raise DataError(path, f"line {line}: label {cell!r} is not a class index (a whole number >= 0{bound})")
    return int(value)


def _file_label(path: Path, fmt: CSVFormat) -> int:
    m = re.search(fmt.file_label or "", path.name)
    if m is None or not m.groups():
        raise DataError(path, f"the file name does not match csv.file_label {fmt.file_label!r} (with one group)")
    return _parse_label(m.group(1), fmt.class_names, path, 0)


def read_table(path: "str | Path", fmt: CSVFormat | None = None, *, user: str | None = None,
               session: str | None = None) -> Recording:
    """Read one CSV/TSV file of EMG rows.

    Args:
        path: the file.
        fmt: its layout (default :class:`CSVFormat`: time, channels, label; header detected).
        user, session: identifiers (default: the parent folder's name and the file's stem).

    Returns:
        The :class:`Recording` (resampled onto the stated rate's grid when its timestamps are irregular).

    Raises:
        DataError: naming the file and line: a row of the wrong width, a missing column, a value that
            is not a finite number, time not increasing, a bad label, no rows.
    """
    fmt = fmt or CSVFormat()
    path = Path(path)
    if fmt.time_unit not in TIME_UNITS:
        raise ValueError(f"csv.time_unit must be one of {', '.join(TIME_UNITS)}, got {fmt.time_unit!r}")
    if fmt.header not in ("auto", "yes", "no"):
        raise ValueError(f"csv.header must be auto, yes or no, got {fmt.header!r}")
    if not fmt.sample_rate_hz > 0:
        raise ValueError(f"csv.sample_rate_hz must be positive, got {fmt.sample_rate_hz}")
    if not path.is_file():
        raise DataError(path, "no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        first_line = f.readline()
        f.seek(0)
        rows = [(r.line_num, row) for r in [csv.reader(f, delimiter=_delimiter(path, first_line, fmt))]
                for row in r if row and any(c.strip() for c in row)]
    if not rows:
        raise DataError(path, "no rows")
    width = len(rows[0][1])
    label_guess = fmt.label_column if isinstance(fmt.label_column, int) else None
    if fmt.header == "auto":
        cells = [c for i, c in enumerate(rows[0][1]) if label_guess is None or i != label_guess % width]
        has_header = isinstance(fmt.label_column, str) and not fmt.label_column.lstrip("-").isdigit() \
            or not all(_is_number(c) for c in cells)
    else:
        has_header = fmt.header == "yes"
    header = rows[0][1] if has_header else None
    rows = rows[1:] if has_header else rows
    if not rows:
        raise DataError(path, "a header but no data rows")
    t_col = None if fmt.time_column is None else _resolve(fmt.time_column, header, width, path, "time column")
    l_col = None if fmt.label_column is None else _resolve(fmt.label_column, header, width, path, "label column")
    if fmt.channel_columns is not None:
        ch_cols = [_resolve(c, header, width, path, "channel column") for c in fmt.channel_columns]
    else:
        ch_cols = [i for i in range(width) if i not in (t_col, l_col)]
    if not ch_cols or (set(ch_cols) & {t_col, l_col}):
        raise DataError(path, "no channel columns (or a channel column is also the time or label column)")
    names = [h.strip() for h in header] if header else [str(i) for i in range(width)]
    emg = np.empty((len(rows), len(ch_cols)), dtype=np.float32)
    times = np.empty(len(rows), dtype=np.float64) if t_col is not None else None
    labels = np.empty(len(rows), dtype=np.int64) if l_col is not None else None
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise DataError(path, f"line {line}: expected {width} columns, got {len(row)}")
        try:
            values = [float(row[c]) for c in ch_cols]
            if times is not None:
                times[r] = float(row[t_col])
        except ValueError:
            bad = next(c for c in [t_col, *ch_cols] if c is not None and not _is_number(row[c]))
            raise DataError(path, f"line {line}, column {names[bad]!r}: {row[bad]!r} is not a number") from None
        if not all(math.isfinite(v) for v in values) or (times is not None and not math.isfinite(times[r])):
            raise DataError(path, f"line {line}: a value is not finite")
        emg[r] = values
        if labels is not None:
            labels[r] = _parse_label(row[l_col], fmt.class_names, path, line)
        if times is not None and r and times[r] <= times[r - 1]:
            raise DataError(path, f"line {line}: time {row[t_col].strip()} is not after the previous row's "
                                  f"(rows must be in increasing time; a file without a time column needs "
                                  f"csv.time_column=null)")
    if labels is None and fmt.file_label:
        labels = np.full(len(emg), _file_label(path, fmt), dtype=np.int64)
    resampled = False
    if times is not None:
        emg, labels, resampled = to_grid(times * TIME_UNITS[fmt.time_unit], emg, labels, fmt.sample_rate_hz,
                                         fmt.grid_tolerance)
    return Recording(str(path), emg, labels, float(fmt.sample_rate_hz), user or path.parent.name,
                     session or path.stem, resampled)


def to_grid(times_s: np.ndarray, emg: np.ndarray, labels: np.ndarray | None, sample_rate_hz: float,
            tolerance: float = 0.25) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Rows at ``times_s`` (increasing) onto the uniform grid ``t0 + i / sample_rate_hz``.

    Args:
        times_s: (T,) row times in seconds.
        emg: (T, C) channels.
        labels: (T,) labels or None.
        sample_rate_hz: the grid's rate.
        tolerance: rows all within this fraction of a period of the grid are kept unchanged.

    Returns:
        ``(emg, labels, resampled)``: channels interpolated linearly (rows denser than 1.5x the rate
        are interpolated at their median rate, then decimated with anti-aliasing), each grid point with
        the label of the last row at or before it.
    """
    period = 1.0 / sample_rate_hz
    t = times_s - times_s[0]
    if len(t) < 2 or np.max(np.abs(t - np.arange(len(t)) * period)) <= tolerance * period:
        return emg, labels, False
    from emgscale.data.device import resample

    src_rate = 1.0 / float(np.median(np.diff(t)))
    work_rate = src_rate if src_rate > 1.5 * sample_rate_hz else sample_rate_hz
    grid = np.arange(int(math.floor(t[-1] * work_rate + 1e-9)) + 1) / work_rate
    out = np.stack([np.interp(grid, t, emg[:, c]) for c in range(emg.shape[1])], axis=1).astype(np.float32)
    lab = None if labels is None else labels[np.searchsorted(t, grid, side="right") - 1]
    if work_rate != sample_rate_hz:
        out = resample(out, work_rate, sample_rate_hz, axis=0)
        if lab is not None:
            lab = lab[np.minimum((np.arange(len(out)) * work_rate / sample_rate_hz).round().astype(int), len(lab) - 1)]
    return out, lab, True


def write_table(path: "str | Path", emg: np.ndarray, labels: np.ndarray | None, sample_rate_hz: float,
                start_s: float = 0.0, delimiter: str = ",", decimals: int | None = 3) -> Path:
    """Write rows ``time_s, emg0..emgN-1[, label]`` (a header, time in seconds), atomically.

    Args:
        path: the file.
        emg: (T, C) channels.
        labels: (T,) integer labels, or None for no label column.
        sample_rate_hz: rate of the rows (the time column is ``start_s + i / rate``).
        start_s: time of the first row.
        delimiter: column separator.
        decimals: decimals written for the channels; None writes 8 significant digits (any unit: a fixed
            number of decimals would round EMG in volts to zero).
    """
    emg = np.asarray(emg)
    cols = ["time_s", *(f"emg{c}" for c in range(emg.shape[1]))] + (["label"] if labels is not None else [])
    t = start_s + np.arange(len(emg)) / sample_rate_hz
    body = [np.char.mod("%.6f", t)] + [np.char.mod("%.8g" if decimals is None else f"%.{decimals}f", emg[:, c]) for c in range(emg.shape[1])]
    if labels is not None:
        body.append(np.asarray(labels).astype(np.int64).astype(str))
    lines = [delimiter.join(cols)] + [delimiter.join(r) for r in zip(*body)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)


def table_files(root: "str | Path") -> list[Path]:
    """The CSV/TSV files under ``root`` (recursively), sorted."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def session_of(path: Path, root: Path) -> tuple[str, str]:
    """``(user, session)`` of a file under ``root``: its first folder below ``root`` (or the root's name
    for files directly in it) and its path below ``root`` without the suffix."""
    rel = path.relative_to(root)
    user = rel.parts[0] if len(rel.parts) > 1 else root.name
    return user, str(rel.with_suffix(""))


@functools.lru_cache(maxsize=64)
def _cached_read(path: str, fmt_key: str, user: str, session: str) -> Recording:
    return read_table(path, CSVFormat(**yaml.safe_load(fmt_key)), user=user, session=session)


def read_file(root: "str | Path", path: "str | Path", fmt: CSVFormat) -> Recording:
    """One file under ``root`` with its user and session (cached per process: loaders reread every epoch)."""
    from dataclasses import asdict

    root, path = Path(root), Path(path)
    user, session = session_of(path, root)
    return _cached_read(str(path), yaml.safe_dump(asdict(fmt)), user, session)


def load_file_split(path: "str | Path", root: "str | Path") -> dict[str, list[Path]]:
    """The files of each part of a split YAML (``train`` / ``val`` / ``test``: paths or globs under ``root``).

    Raises:
        DataError: an unreadable split, an unknown part, or an entry that matches no file.
    """
    path, root = Path(path), Path(root)
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(path, f"cannot read the split ({e})") from None
    if not isinstance(d, dict) or set(d) - set(PARTS):
        raise DataError(path, f"a split maps {', '.join(PARTS)} to lists of files, got keys {sorted(d) if isinstance(d, dict) else d!r}")
    out: dict[str, list[Path]] = {}
    for part in PARTS:
        files: list[Path] = []
        for entry in d.get(part) or []:
            found = sorted(p for p in root.glob(str(entry)) if p.is_file()) if any(ch in str(entry) for ch in "*?[") \
                else [root / str(entry)] if (root / str(entry)).is_file() else []
            if not found:
                raise DataError(path, f"{part}: {entry!r} matches no file under {root}")
            files += [f for f in found if f not in files]
        out[part] = files
    return out


def make_split(root: "str | Path", val_sessions: int = 1, test_sessions: int = 1,
               users: Iterable[str] | None = None) -> dict[str, list[str]]:
    """A split of a folder of recordings: per user (first folder level), its last ``test_sessions``
    files (in name order) are test, the ``val_sessions`` before them val, the rest train.

    Raises:
        DataError: a user with too few files for the split.
    """
    root = Path(root)
    by_user: dict[str, list[Path]] = {}
    for p in table_files(root):
        by_user.setdefault(session_of(p, root)[0], []).append(p)
    if not by_user:
        raise DataError(root, "no .csv/.tsv files")
    out: dict[str, list[str]] = {part: [] for part in PARTS}
    for user in sorted(by_user):
        if users is not None and user not in set(users):
            continue
        files = [str(p.relative_to(root)) for p in by_user[user]]
        if len(files) < val_sessions + test_sessions + 1:
            raise DataError(root, f"user {user!r} has {len(files)} files; the split needs "
                                  f"{val_sessions + test_sessions + 1} (train, val, test)")
        cut = len(files) - test_sessions
        out["test"] += files[cut:]
        out["val"] += files[cut - val_sessions:cut]
        out["train"] += files[:cut - val_sessions]
    return out


def write_split(split: dict[str, Any], path: "str | Path") -> Path:
    """Write a split (``{part: [files]}``) as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump({p: list(split.get(p, [])) for p in PARTS}, sort_keys=False))
    return Path(path)
