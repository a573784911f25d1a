"""The one rule for EMG and time values: what every reader and writer of EMG accepts.

``data info``, the shard writer, ``shard verify`` (and every shard reader), training and evaluation all
judge values with :func:`value_problem`, so a file one of them accepts is never refused (or silently
dropped) by another:

- EMG must be finite and no larger in magnitude than :data:`MAX_ABS_EMG`. The bound is not a unit
  assumption: it is where float32 spectral features overflow (a 64-sample power spectrum of values
  near 1e17 exceeds float32's 3.4e38), far above any recording in volts, microvolts or ADC counts.
- Timestamps must be finite and never go backwards (equal neighbours are allowed).

A NaN timestamp used to pass the old ``diff < 0`` test (a comparison with NaN is false).
"""

from __future__ import annotations

import numpy as np

#: The largest EMG magnitude accepted (float32 spectra of larger values overflow; see the module doc).
MAX_ABS_EMG = 1e15


def _first_row(mask: np.ndarray) -> int:
    """Index of the first row of ``mask`` (any trailing dimensions) that is True."""
    return int(np.argmax(mask.reshape(len(mask), -1).any(axis=1)))


def _within(x: np.ndarray) -> bool:
    """Fast path: every value finite and within :data:`MAX_ABS_EMG` (two reductions, no temporaries; a
    NaN makes both comparisons false). float16 (the shards' dtype) tops out at 65504, so only inf and NaN
    can break the rule: they are the values whose exponent bits are all set, found on the integer view
    (numpy's float16 min/max convert every element: ~35x slower)."""
    if x.dtype == np.float16:
        return not bool(np.any((np.ascontiguousarray(x).view(np.uint16) & 0x7C00) == 0x7C00))
    bound = min(MAX_ABS_EMG, float(np.finfo(x.dtype).max)) if x.dtype.kind == "f" else MAX_ABS_EMG
    return bool(x.min() >= -bound) and bool(x.max() <= bound)


def value_problem(emg: "np.ndarray | None" = None, time: "np.ndarray | None" = None, *, first_row: int = 0,
                  previous_time: float | None = None) -> str | None:
    """What is wrong with these EMG rows and timestamps under the one value rule, or None.

    Args:
        emg: EMG rows ``(T, ...)`` (None: not checked).
        time: timestamps ``(T,)`` of the same rows, seconds (None: not checked).
        first_row: the row number of ``emg[0]`` / ``time[0]`` in its file, for the message.
        previous_time: the timestamp of the row before ``first_row`` (a reader going through a file in
            chunks passes the last one it saw), so time going backwards across chunks is found too.

    Returns:
        A message naming the first bad row (``EMG has NaN or inf at row 42``, ``timestamps not
        monotonic at row 60``), or None when the values are good.
    """
    if emg is not None and emg.size and not _within(np.asarray(emg)):
        x = np.asarray(emg)
        finite = np.isfinite(x)
        if not finite.all():
            return f"EMG has NaN or inf at row {_first_row(~finite) + first_row}"
        big = None if x.dtype.kind == "f" and float(np.finfo(x.dtype).max) <= MAX_ABS_EMG else np.abs(x) > MAX_ABS_EMG
        if big is not None and big.any():
            row = _first_row(big)
            peak = float(np.abs(x[row]).max())
            return (f"EMG magnitude {peak:.3g} at row {row + first_row} exceeds {MAX_ABS_EMG:.0e} "
                    "(spectral features would overflow)")
    if time is not None and np.size(time):
        t = np.asarray(time, dtype=np.float64).reshape(-1)
        finite = np.isfinite(t)
        if not finite.all():  # (NaN also fails the ordering test below: name it as what it is)
            return f"timestamp is NaN or inf at row {int(np.argmax(~finite)) + first_row}"
        if previous_time is not None and np.isfinite(previous_time) and t[0] < previous_time:
            return f"timestamps not monotonic at row {first_row}"
        back = np.diff(t) < 0
        if back.any():
            return f"timestamps not monotonic at row {int(np.argmax(back)) + 1 + first_row}"
    return None
