"""Ground-truth labels from keystrokes and prompts, with the reference semantics.

Every in-vocabulary key press between two times (both inclusive, press time only) becomes exactly one
character timestamped with its press time. Typos and their backspaces both stay in the label; shift is
its own ``⇧`` token; keys out of vocabulary (``Key.shift_r``, ``Key.tab``, ...) are dropped.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from emgscale.data.charset import ENTER, charset


@dataclass
class LabelData:
    """A label string and, when it comes from keystrokes, one press time per character.

    Attributes:
        text: canonical unicode text (``⌫``, ``⏎``, ``⇧`` glyphs for special keys).
        timestamps: float64 press times in unix seconds, one per character; None for prompts.
    """

    text: str
    timestamps: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if self.timestamps is not None:
            self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
            if len(self.timestamps) != len(self.text):
                raise ValueError(f"{len(self.text)} characters but {len(self.timestamps)} timestamps")
            if len(self.timestamps) > 1 and np.any(np.diff(self.timestamps) < 0):
                raise ValueError("label timestamps are not monotonic")

    @property
    def labels(self) -> np.ndarray:
        """Class labels (int64) of :attr:`text`."""
        return np.asarray(charset().str_to_labels(self.text), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.text)

    @classmethod
    def from_keystrokes(
        cls,
        keystrokes: Sequence[dict[str, Any]],
        start_t: float = -np.inf,
        end_t: float = np.inf,
        starts: Sequence[float] | None = None,
    ) -> "LabelData":
        """Labels of the key presses with ``start_t <= start <= end_t``.

        Args:
            keystrokes: ``{"key", "start", "end"}`` objects sorted by ``start``.
            start_t, end_t: inclusive time bounds in unix seconds.
            starts: the press times of ``keystrokes``, when the caller has them (saves a pass).
        """
        if starts is None:
            starts = [k["start"] for k in keystrokes]
        lo = bisect.bisect_left(starts, start_t)
        hi = bisect.bisect_right(starts, end_t)
        cs = charset()
        chars, times = [], []
        for k in keystrokes[lo:hi]:
            c = cs.key_to_char(k["key"])
            if c is not None:
                chars.append(c)
                times.append(k["start"])
        return cls("".join(chars), np.asarray(times, dtype=np.float64))

    @classmethod
    def from_prompts(
        cls, prompts: Sequence[dict[str, Any]], start_t: float = -np.inf, end_t: float = np.inf
    ) -> "LabelData":
        """Labels of the text prompts shown with ``start_t <= start <= end_t``; each ends in ``⏎``.

        Used only for sessions whose condition is not ``on_keyboard``; the result has no timestamps.
        """
        cs = charset()
        parts = []
        for p in prompts:
            if p.get("start", -np.inf) > end_t:
                break
            if p.get("start", -np.inf) < start_t or p.get("name", "text_prompt") != "text_prompt":
                continue
            payload = p.get("payload")
            if not payload:
                continue
            text = cs.clean_str(str(payload.get("text", "")))
            if not text.endswith(ENTER):
                text += ENTER
            parts.append(text)
        return cls("".join(parts), None)
