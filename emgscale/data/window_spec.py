"""How a session is cut into samples (:class:`WindowSpec`), without torch.

The data config (``data.window``), the shard plan and the shard records nest this spec, and both
readers cut windows with its methods (:func:`emgscale.data.windows.read_window`,
:func:`emgscale.shard.records.record_samples`). It imports numpy only, so a config that nests it is
parsed and checked before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class WindowSpec:
    """How a session is cut into samples: the one implementation of the window / jitter / label rule.

    The data config (``data.window``), the shard plan (``ShardConfig.window``) and the shard records
    (``RecordSpec.window``) all nest this spec, and both the HDF5 reader (:func:`read_window`) and
    the shard reader (:func:`emgscale.shard.records.record_samples`) cut windows with its methods.

    Attributes:
        window_samples: un-padded window length (8000 = 4 s at 2 kHz); None = the whole session.
        stride_samples: step between windows; None = ``window_samples`` (no overlap).
        pad_left_samples: past context read before the window (1800 = 900 ms).
        pad_right_samples: future context read after it (200 = 100 ms).
        jitter: move each training window's start by a random amount within the stride (the
            reference's training behaviour, on in the data and shard configs; evaluation never
            jitters). Off by default here, so a spec used directly reads fixed windows.
    """

    window_samples: int | None = 8000
    stride_samples: int | None = None
    pad_left_samples: int = 1800
    pad_right_samples: int = 200
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.window_samples is not None and self.window_samples <= 0:
            raise ValueError(f"window_samples must be positive, got {self.window_samples}")
        if self.stride_samples is not None and self.stride_samples <= 0:
            raise ValueError(f"stride_samples must be positive, got {self.stride_samples}")
        if self.pad_left_samples < 0 or self.pad_right_samples < 0:
            raise ValueError(f"pad_left_samples/pad_right_samples must be >= 0, got "
                             f"{self.pad_left_samples}/{self.pad_right_samples}")

    @property
    def stride(self) -> int | None:
        return self.stride_samples or self.window_samples

    def num_windows(self, num_rows: int) -> int:
        """``max(L - W, 0) // stride + 1`` as the reference (0 for a session shorter than a window)."""
        if self.window_samples is None:
            return 1 if num_rows > 0 else 0
        if num_rows < self.window_samples:
            return 0
        return (num_rows - self.window_samples) // self.stride + 1

    def max_jitter(self, num_rows: int, offset: int) -> int:
        """Number of possible jitters of the window at ``offset``: ``min(stride, leftover)``, or 1."""
        leftover = num_rows - (offset + self.window_samples)
        return min(self.stride, leftover) if leftover > 0 else 1

    def jittered(self, offset: int, num_rows: int, rng: np.random.Generator | None) -> int:
        """The window start actually used: ``offset + randint(0, min(stride, leftover))`` when jittering
        (the reference's rule), else ``offset``."""
        if not self.jitter or self.window_samples is None or num_rows - (offset + self.window_samples) <= 0:
            return offset
        rng = rng if rng is not None else np.random.default_rng()
        return offset + int(rng.integers(0, self.max_jitter(num_rows, offset)))

    def padded_rows(self, offset: int, window: int, num_rows: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` read for the window ``[offset, offset + window)``: its context, clipped."""
        return max(offset - self.pad_left_samples, 0), min(offset + window + self.pad_right_samples, num_rows)

    def for_training(self, train: bool) -> "WindowSpec":
        """This spec as used for training (jitter as configured) or evaluation (never jittered)."""
        return self if train or not self.jitter else replace(self, jitter=False)

    def whole_session(self) -> "WindowSpec":
        return WindowSpec(None, None, 0, 0, False)


def training_windows() -> WindowSpec:
    """The reference's training windowing: 4 s windows, 900 ms / 100 ms context, jittered."""
    return WindowSpec(jitter=True)


def labels_in(times: np.ndarray, first_s: float, last_s: float) -> np.ndarray:
    """Mask of the key-press ``times`` inside the un-padded window ``[first_s, last_s]`` (inclusive, as
    the reference's ``LabelData.from_keystrokes`` range)."""
    return (times >= first_s) & (times <= last_s)
