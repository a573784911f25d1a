"""Shard records: what one tar sample holds, how it is cut from a session, and how it becomes samples.

Three kinds of record, all stored as ``.npy`` members plus one ``.json`` member of metadata:

``train_chunk`` (the ``train`` part)
    ``train_windows_per_record`` consecutive training windows of one session *with every row any
    jittered version of them can read*: rows ``[base_0 - pad_left, base_last + max_jitter + window +
    pad_right)`` clipped to the session, where ``max_jitter = min(stride, leftover) - 1`` as in the
    reference's ``offset += randint(0, min(stride, leftover))``. Members: ``emg.npy`` (R, 2, 16),
    ``time.npy`` (R,) float64 unix seconds, ``labels.npy`` (K,) int64 and ``label_time.npy`` (K,)
    float64 unix seconds of every in-vocabulary key pressed inside those rows. At load time
    :func:`record_samples` draws each window's jitter independently and crops it, giving exactly
    what :func:`emgscale.data.windows.read_window` gives for that offset (same rows, labels and
    ``label_time_s``, bit for bit with float32 storage).
``window`` (``val``/``test`` with ``--eval-mode windows``)
    One un-jittered sample in the :mod:`emgscale.data.windows` format: ``emg.npy``, ``labels.npy``,
    ``label_time_s.npy`` and the metadata.
``session`` (``--eval-mode session``, the paper's test setting)
    A whole session as one sample (``window_samples=None`` in ``read_window``).

The tar member key is a dot-free, readable ``<user>__<session>__<offset:09d>``; the original
``<user>/<session>/<offset>`` is the ``key`` field of the JSON member.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from emgscale.data.charset import charset
from emgscale.data.errors import DataError
from emgscale.data.session import ON_KEYBOARD, EMGSession
from emgscale.data.values import value_problem
from emgscale.data.windows import WindowSpec, labels_in, read_window, training_windows

RECORD_FORMAT_VERSION = 1
KIND_TRAIN, KIND_WINDOW, KIND_SESSION = "train_chunk", "window", "session"
FLOAT16_MAX = float(np.finfo(np.float16).max)
_UNSAFE = re.compile(r"[^A-Za-z0-9@_\-]")
_NUM_KEYS = charset().blank  # label values 0 .. blank - 1


@dataclass(frozen=True)
class RecordSpec:
    """How sessions are cut into records (the settings that decide a shard's content).

    Attributes:
        window: the windowing (:class:`~emgscale.data.windows.WindowSpec`; its ``jitter`` says whether
            training records carry the rows every jittered window can read).
        train_windows_per_record: windows per ``train_chunk`` record; more windows per record means
            less duplicated context on disk (see :func:`record_rows`) but coarser shuffling units.
        dtype: ``float16`` or ``float32`` storage of EMG (loaders always return float32).
        min_float16_snr_db: a record whose float16 round trip is worse than this (or overflows) is
            stored as float32 instead, whatever the unit of the data.
    """

    window: WindowSpec = field(default_factory=training_windows)
    train_windows_per_record: int = 8
    dtype: str = "float16"
    min_float16_snr_db: float = 60.0

    def __post_init__(self) -> None:
        if self.window.window_samples is None:
            raise ValueError("shard records need windowed data (window_samples > 0)")
        if self.train_windows_per_record < 1:
            raise ValueError(f"train_windows_per_record must be >= 1, got {self.train_windows_per_record}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {self.dtype!r}")


def sample_key(user: str, session: str, offset: int) -> str:
    """The tar member key: no dots or slashes (WebDataset splits names at the first dot)."""
    return f"{_UNSAFE.sub('_', str(user))}__{_UNSAFE.sub('_', session)}__{offset:09d}"


def record_rows(spec: RecordSpec, kind: str, num_rows: int, first_window: int, num_windows: int) -> tuple[int, int]:
    """Session rows ``[start, stop)`` a record stores.

    For a ``train_chunk`` of windows ``first_window .. first_window + num_windows - 1`` this is
    ``num_windows * stride + window + pad_left + pad_right - 1`` rows at most (for 8 windows at the
    defaults: 74,000 rows for 64,000 rows of new data, +16 %; for 1 window: 18,000 for 8,000, +125 %).
    """
    if kind == KIND_SESSION:
        return 0, num_rows
    win = spec.window
    first, last = first_window * win.stride, (first_window + num_windows - 1) * win.stride
    stop = last + win.window_samples + win.pad_right_samples
    if kind == KIND_TRAIN and win.jitter:
        stop += win.max_jitter(num_rows, last) - 1
    return max(first - win.pad_left_samples, 0), min(stop, num_rows)


def estimate_record_bytes(spec: RecordSpec, kind: str, num_rows: int, first_window: int, num_windows: int) -> int:
    """Planned size of a record in a tar (deterministic; used to cut shards, not a promise)."""
    start, stop = record_rows(spec, kind, num_rows, first_window, num_windows)
    per_row = np.dtype(spec.dtype).itemsize * 32 + (8 if kind == KIND_TRAIN else 0)
    return (stop - start) * per_row + 5 * 1024  # tar and npy headers, padding, labels, JSON


# ----------------------------------------------------------------------------- writing
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def float16_snr_db(emg: np.ndarray) -> float:
    """SNR in dB of ``emg`` against its float16 round trip (inf when exact, -inf on overflow)."""
    x = np.asarray(emg, dtype=np.float64)
    if x.size and np.abs(x).max() > FLOAT16_MAX:
        return float("-inf")
    err = np.sum((x - x.astype(np.float16).astype(np.float64)) ** 2)
    sig = np.sum(x ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(sig / err)) if sig > 0 else float("-inf")


def encode_emg(emg: np.ndarray, spec: RecordSpec) -> tuple[bytes, bool]:
    """``.npy`` bytes of EMG in the storage dtype; True when float16 was refused for float32."""
    if spec.dtype == "float32":
        return _npy(emg.astype(np.float32, copy=False)), False
    if float16_snr_db(emg) < spec.min_float16_snr_db:
        return _npy(emg.astype(np.float32, copy=False)), True
    return _npy(emg.astype(np.float16)), False


def build_record(session: EMGSession, spec: RecordSpec, kind: str, first_window: int,
                 num_windows: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read one record from an open session.

    Args:
        session: the open session.
        spec: the record settings.
        kind: ``train_chunk``, ``window`` or ``session``.
        first_window, num_windows: which windows (ignored for ``session``).

    Returns:
        ``(members, stats)``: the tar sample (``__key__`` and bytes per member name) and
        ``{"windows", "rows", "float32_fallback"}``.

    Raises:
        DataError: the session cannot be read or is not an ``on_keyboard`` session.
    """
    if session.condition != ON_KEYBOARD:
        raise DataError(session.path, f"condition is {session.condition!r}; shards need 'on_keyboard' sessions")
    n = len(session)
    meta: dict[str, Any] = {"kind": kind, "user": session.user, "session": session.session_name,
                            "num_rows": n, "sample_rate_hz": session.sample_rate_hz,
                            "format_version": RECORD_FORMAT_VERSION}
    if kind == KIND_TRAIN:
        start, stop = record_rows(spec, kind, n, first_window, num_windows)
        emg, t = session.window(start, stop)
        label = session.keystroke_labels(float(t[0]), float(t[-1]))
        win = spec.window
        offset = first_window * win.stride
        meta.update(start=start, offset=offset, num_windows=num_windows, window_samples=win.window_samples,
                    stride_samples=win.stride, pad_left_samples=win.pad_left_samples,
                    pad_right_samples=win.pad_right_samples)
        arrays = {"time.npy": _npy(t), "labels.npy": _npy(label.labels), "label_time.npy": _npy(label.timestamps)}
    else:
        wspec = spec.window.whole_session() if kind == KIND_SESSION else spec.window.for_training(False)
        sample = read_window(session, 0 if kind == KIND_SESSION else first_window, wspec)
        emg, start, offset = sample["emg"], sample["start"], sample["offset"]
        meta.update(start=start, offset=offset, num_windows=1,
                    window_samples=len(emg) if kind == KIND_SESSION else spec.window.window_samples)
        arrays = {"labels.npy": _npy(sample["labels"]), "label_time_s.npy": _npy(sample["label_time_s"])}
    meta["key"] = f"{session.user}/{session.session_name}/{offset}"
    emg_bytes, fallback = encode_emg(emg, spec)
    members = {"__key__": sample_key(session.user, session.session_name, offset), "emg.npy": emg_bytes,
               **arrays, "json": json.dumps(meta, sort_keys=True).encode("utf-8")}
    return members, {"windows": int(meta["num_windows"]), "rows": len(emg), "float32_fallback": fallback}


# ----------------------------------------------------------------------------- reading
_REQUIRED = {KIND_TRAIN: ("emg", "time", "labels", "label_time"),
             KIND_WINDOW: ("emg", "labels", "label_time_s"), KIND_SESSION: ("emg", "labels", "label_time_s")}


def decode_record(raw: dict[str, Any]) -> dict[str, Any]:
    """Turn a WebDataset sample (bytes per member) into ``{"meta": {...}, "emg": array, ...}``.

    Raises:
        DataError: naming the shard and key, when a member is missing or does not parse.
    """
    url, key = raw.get("__url__", "?"), raw.get("__key__", "?")
    try:
        meta = json.loads(raw["json"])
        out: dict[str, Any] = {"meta": meta, "__url__": url}
        for name, value in raw.items():
            if name.endswith(".npy"):
                out[name[:-4]] = np.load(io.BytesIO(value), allow_pickle=False)
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise DataError(url, f"record {key!r} is incomplete or corrupt ({type(e).__name__}: {e})") from None
    missing = [m for m in _REQUIRED.get(meta.get("kind"), ("?",)) if m not in out]
    if missing:
        raise DataError(url, f"record {key!r} (kind {meta.get('kind')!r}) lacks members {missing}")
    problem = _bad_values(out)
    if problem:
        raise DataError(url, f"record {key!r} {problem}")
    return out


_META_INTS = ("num_rows", "start", "offset", "num_windows", "window_samples")
_TRAIN_INTS = ("stride_samples", "pad_left_samples", "pad_right_samples")


def _bad_values(rec: dict[str, Any]) -> str | None:
    """What is wrong with a decoded record's values (bytes that still parse can be garbage), or None.

    Checks what would poison training or crash it: EMG that is not finite or not ``(R, 2, 16)``, labels
    outside the charset's keys, times that are not finite or go backwards, metadata of the wrong type.
    """
    meta = rec["meta"]
    if not isinstance(meta, dict):
        return "has metadata that is not a JSON object"
    ints = _META_INTS + (_TRAIN_INTS if meta.get("kind") == KIND_TRAIN else ())
    bad = [k for k in ints if not isinstance(meta.get(k), int) or meta[k] < 0]
    if bad or not isinstance(meta.get("session"), str) or not isinstance(meta.get("sample_rate_hz"), (int, float)):
        return f"has corrupt metadata ({', '.join(bad) or 'session / sample_rate_hz'})"
    emg = rec["emg"]
    if emg.ndim != 3 or emg.shape[1:] != (2, 16) or emg.dtype.kind != "f":
        return f"holds EMG of shape {emg.shape} and dtype {emg.dtype}, expected (rows, 2, 16) floats"
    t = rec.get("time")
    problem = value_problem(emg, t if t is not None and t.dtype.kind == "f" else None)  # emgscale.data.values
    if problem:
        return f"holds bad values: {problem} of the record"
    if meta.get("kind") == KIND_TRAIN and len(rec["time"]) != len(emg):
        return f"holds {len(emg)} EMG rows but {len(rec['time'])} timestamps"
    labels = rec["labels"]
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= _NUM_KEYS)):
        return "holds labels outside the charset"
    for name in ("time", "label_time", "label_time_s"):
        t = rec.get(name)
        if t is not None and (t.dtype.kind != "f" or not np.isfinite(t).all()
                              or (name == "label_time" and value_problem(time=t) is not None)):
            return f"holds bad {name} values (not finite, or going backwards)"
    return None


def _float32(rows: np.ndarray) -> np.ndarray:
    """``rows`` as a new float32 array (exact for float16: torch's vectorised conversion, ~10x numpy's)."""
    if rows.dtype != np.float16:
        return rows.astype(np.float32)
    import torch

    out = np.empty(rows.shape, np.float32)
    torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(rows)))
    return out


def record_samples(record: dict[str, Any], *, jitter: bool = False, rng: np.random.Generator | None = None,
                   max_rows: int | None = None, float32: bool = True) -> Iterator[dict[str, Any]]:
    """The samples of a decoded record, in the :mod:`emgscale.data.windows` format.

    Args:
        record: from :func:`decode_record`.
        jitter: draw each training window's offset as the reference does (``train_chunk`` only).
        rng: the jitter's random generator.
        max_rows: treat the session as ending at this row (a per-session data budget): windows that
            do not fit are dropped, jitter and right context stop there.
        float32: copy each window's ``emg`` to float32; False leaves views of the stored rows (for a
            caller that needs only which rows a window covers: the feature cache).

    Yields:
        Sample dicts with float32 ``emg`` (or views in the stored dtype).
    """
    as_emg = _float32 if float32 else (lambda rows: rows)
    meta = record["meta"]
    n = int(meta["num_rows"]) if max_rows is None else min(int(meta["num_rows"]), int(max_rows))
    common = {"user": meta["user"], "session": meta["session"], "sample_rate_hz": meta["sample_rate_hz"]}
    if meta["kind"] != KIND_TRAIN:
        offset, start, w = int(meta["offset"]), int(meta["start"]), int(meta["window_samples"])
        if offset + w > n:
            return
        yield {"key": meta["key"], "emg": as_emg(record["emg"][: n - start]),
               "labels": record["labels"], "label_time_s": record["label_time_s"], "start": start,
               "offset": offset, **common}
        return
    win = WindowSpec(int(meta["window_samples"]), int(meta["stride_samples"]), int(meta["pad_left_samples"]),
                     int(meta["pad_right_samples"]), jitter=jitter)
    r0, t, lt, labels = int(meta["start"]), record["time"], record["label_time"], record["labels"]
    for k in range(int(meta["num_windows"])):
        offset = int(meta["offset"]) + k * win.stride
        if offset + win.window_samples > n:
            break
        offset = win.jittered(offset, n, rng)
        start, stop = win.padded_rows(offset, win.window_samples, n)
        if stop - r0 > len(t):
            raise DataError(record["__url__"], f"record {meta['key']!r} holds {len(t)} rows, window needs {stop - r0}")
        keep = labels_in(lt, t[offset - r0], t[offset - r0 + win.window_samples - 1])
        yield {"key": f"{meta['user']}/{meta['session']}/{offset}",
               "emg": as_emg(record["emg"][start - r0: stop - r0]),
               "labels": labels[keep], "label_time_s": lt[keep] - t[start - r0], "start": start, "offset": offset,
               **common}
