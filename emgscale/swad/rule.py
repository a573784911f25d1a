"""The settings and the one loss-valley rule, as a pure function of the segments' validation losses.

The rule (SWAD, Cha et al., 2021) reads the sequence of closed segments' validation losses:

* **start** (``n_converge``): the first segment ``s`` such that ``loss[s]`` is the minimum of
  ``loss[s : s + n_converge]`` starts the valley; the threshold is ``loss[s] * (1 + tolerance_ratio)``.
  With ``start_step``, only segments that begin at or after that step may start it: a CTC model on the
  blank plateau has a flat validation loss that the rule cannot tell from convergence, and a valley
  started there sets a threshold every later loss meets, so the average would reach back to step 0.
* **continue / stop** (``n_tolerance``): each later segment ``j`` joins when
  ``min(loss[j : j + n_tolerance])`` is at most the threshold; the first ``j`` for which it is not ends
  the valley for good. Before the end of training a segment whose look-ahead is not complete waits
  (pending); at the end (``final=True``) the losses seen so far decide it.

Because it is a function of the losses alone, the averager, a resumed run and the post-hoc
``python -m emgscale.swad average`` all evaluate the same rule on the same index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MODES = ("off", "swad", "swa")
SEGMENT_DTYPES = ("float32", "bfloat16")


@dataclass
class SWADConfig:
    """Weight averaging settings (defaults: the SWAD paper's n_converge 3, n_tolerance 6, r 0.3)."""

    mode: str = "off"  # off | swad | swa
    n_converge: int = 3
    n_tolerance: int = 6
    tolerance_ratio: float = 0.3
    start_step: int = 0  # swad: segments starting before this step cannot start the valley (0 = any)
    swa_start_step: int = 0  # swa: first averaged step
    swa_end_step: int = 0  # swa: end of the window (exclusive); 0 = end of training
    bn_batches: int = 20  # batches to recompute BatchNorm statistics of the average
    segment_dtype: str = "float32"  # float32 | bfloat16: how a segment's mean weights are stored on disk
    keep_segments: bool = False  # keep every segment's file (also after the valley) for post-hoc study


def check_config(cfg: SWADConfig) -> None:
    """Raise ``ValueError`` naming the ``swad.*`` field that is out of range."""
    if cfg.mode not in MODES:
        raise ValueError(f"swad.mode must be off | swad | swa, got {cfg.mode!r}")
    if cfg.n_converge < 1 or cfg.n_tolerance < 1:
        raise ValueError("swad.n_converge and swad.n_tolerance must be >= 1")
    if cfg.start_step < 0:
        raise ValueError(f"swad.start_step must be >= 0, got {cfg.start_step}")
    if cfg.segment_dtype not in SEGMENT_DTYPES:
        raise ValueError(f"swad.segment_dtype must be float32 | bfloat16, got {cfg.segment_dtype!r}")


@dataclass(frozen=True)
class Valley:
    """Where the rule stands on a loss sequence of ``n`` segments.

    Attributes:
        n: segments seen.
        start: first averaged segment, or None before the loss converged.
        end: segments ``[start, end)`` are in the average (``end`` is ``start + 1`` at least once started).
        threshold: the loss a segment's look-ahead must reach to join (inf before convergence).
        dead: the valley has ended: no later segment can join.
        first_open: the first segment that may still join (``n`` when none can, e.g. when dead).
    """

    n: int
    start: int | None
    end: int
    threshold: float
    dead: bool
    first_open: int

    @property
    def converged(self) -> bool:
        return self.start is not None

    def status(self, k: int) -> str:
        """``in`` (averaged), ``pending`` (may still join) or ``out`` (never) for segment ``k``."""
        if self.start is not None and self.start <= k < self.end:
            return "in"
        return "pending" if k >= self.first_open else "out"


def loss_valley(losses: Sequence[float], n_converge: int, n_tolerance: int, tolerance_ratio: float,
                final: bool = False, first: int = 0) -> Valley:
    """Apply the loss-valley rule to the closed segments' validation losses.

    Args:
        losses: one validation loss per closed segment, in order.
        n_converge: segments whose oldest must be their minimum for averaging to start.
        n_tolerance: look-ahead (in segments) a segment needs under the threshold to join.
        tolerance_ratio: the threshold is the start loss times ``1 + tolerance_ratio``.
        final: training has ended: pending segments are decided on the losses seen so far.
        first: the first segment that may start the valley (earlier ones are out).

    Returns:
        The :class:`Valley`.
    """
    n = len(losses)
    start = next((s for s in range(first, n - n_converge + 1) if losses[s] == min(losses[s:s + n_converge])), None)
    if start is None:  # the last n_converge - 1 segments may still start the valley
        first_open = n if final else min(n, max(first, n - n_converge + 1))
        return Valley(n, None, 0, float("inf"), False, first_open)
    threshold = losses[start] * (1.0 + tolerance_ratio)
    j, dead = start + 1, False
    while j < n:
        ahead = losses[j:j + n_tolerance]
        if len(ahead) < n_tolerance and not final:
            break
        if min(ahead) > threshold:
            dead = True
            break
        j += 1
    return Valley(n, start, j, threshold, dead, n if dead or final else j)


def first_candidate(segments: Sequence[dict], start_step: int) -> int:
    """Index of the first segment (index entries with ``start_step``) that begins at or after ``start_step``."""
    return next((k for k, s in enumerate(segments) if s["start_step"] >= start_step), len(segments))
