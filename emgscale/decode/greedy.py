"""Greedy CTC decoding: best class per frame, repeats collapsed, blanks dropped (vectorised)."""

from __future__ import annotations

from typing import Any

import numpy as np

from emgscale.data.charset import charset
from emgscale.decode.base import DecoderBase, as_batch, as_emissions


def _collapse(best: np.ndarray, blank: int) -> np.ndarray:
    """(T,) best classes -> labels: keep a frame whose class differs from the previous frame's, drop blanks."""
    if best.size == 0:
        return best
    keep = np.empty(best.shape, dtype=bool)
    keep[0] = True
    np.not_equal(best[1:], best[:-1], out=keep[1:])
    keep &= best != blank
    return best[keep]


def greedy_decode(log_probs: Any, length: int | None = None, blank: int | None = None) -> list[int]:
    """Greedy CTC decoding of one utterance.

    Args:
        log_probs: (T, C) log-probabilities or logits (numpy or torch); only the argmax matters.
        length: frames to decode (default all T).
        blank: the blank class (default the charset's, 98).

    Returns:
        The label sequence, blanks removed and repeats collapsed.
    """
    blank = charset().blank if blank is None else blank
    lp = as_emissions(log_probs, length, np.shape(log_probs)[-1])
    return _collapse(lp.argmax(-1), blank).tolist()


def greedy_decode_batch(log_probs: Any, lengths: Any = None, blank: int | None = None) -> list[list[int]]:
    """Greedy CTC decoding of a batch in one vectorised pass.

    Args:
        log_probs: (B, T, C) log-probabilities or logits (numpy or torch).
        lengths: (B,) valid frames per item (default all T).
        blank: the blank class (default the charset's, 98).

    Returns:
        B label lists.
    """
    blank = charset().blank if blank is None else blank
    lp, ln = as_batch(log_probs, lengths, np.shape(log_probs)[-1])
    return collapse_batch(lp.argmax(-1), ln, blank)


def collapse_batch(best: np.ndarray, lengths: np.ndarray, blank: int | None = None) -> list[list[int]]:
    """Greedy CTC labels from a batch of best classes per frame.

    Args:
        best: (B, T) int best class per frame (e.g. an argmax taken on the device).
        lengths: (B,) valid frames per item.
        blank: the blank class (default the charset's, 98).

    Returns:
        B label lists: repeats collapsed, blanks and padding dropped.
    """
    blank = charset().blank if blank is None else blank
    best, lengths = np.asarray(best), np.asarray(lengths)
    B, T = best.shape[:2]
    if B == 0:
        return []
    keep = np.ones((B, T), dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= (best != blank) & (np.arange(T)[None, :] < lengths[:, None])
    rows, cols = np.nonzero(keep)
    labels = best[rows, cols]
    bounds = np.searchsorted(rows, np.arange(B + 1))
    return [labels[bounds[b]: bounds[b + 1]].tolist() for b in range(B)]


class GreedyDecoder(DecoderBase):
    """:class:`~emgscale.decode.Decoder` doing greedy CTC decoding (no LM)."""

    def __init__(self, blank: int | None = None, num_classes: int | None = None) -> None:
        cs = charset()
        self.blank = cs.blank if blank is None else blank
        self.num_classes = cs.num_classes if num_classes is None else num_classes

    def decode(self, log_probs: Any, length: int | None = None) -> list[int]:
        """Labels of one (T, C) utterance; see :func:`greedy_decode`."""
        return _collapse(as_emissions(log_probs, length, self.num_classes).argmax(-1), self.blank).tolist()

    def decode_batch(self, log_probs: Any, lengths: Any = None) -> list[list[int]]:
        """Labels of a (B, T, C) batch; see :func:`greedy_decode_batch`."""
        if np.shape(log_probs)[-1] != self.num_classes:
            raise ValueError(f"log_probs must have {self.num_classes} classes, got shape {np.shape(log_probs)}")
        return greedy_decode_batch(log_probs, lengths, self.blank)
