"""Unsupervised test-time adaptation: a model's normalisation re-estimated on a new user's unlabelled EMG.

A generic model's BatchNorm statistics describe its training users; a new user's electrodes sit
elsewhere, with other gains and skin contact. :func:`adapt_norm` runs up to ``seconds`` of that user's
EMG (no labels: only :meth:`~emgscale.data.session.EMGSession.emg` is read) through the model with the
normalisation layers alone in training mode, no gradient:

* every BatchNorm (any module with ``running_mean`` / ``running_var`` / ``momentum``: ``nn.BatchNorm*``
  and :class:`~emgscale.features.norm.MaskedBatchNorm`) gets fresh running statistics, the cumulative
  average over the adaptation batches (what ``momentum=None`` computes: batch ``k`` weighs ``1/k``);
* every :class:`~emgscale.features.norm.RollingNorm` gets a start state: the streaming state it has
  after the user's adaptation EMG (its history then holds that user's last ``window_frames`` frames),
  so every sequence starts from the user's statistics instead of an empty history. Only the last
  ``window_frames`` of the adaptation EMG reach it.

Nothing else changes: not a weight, not an affine norm parameter, not another buffer; featurizer
augmentations, dropout and every other module stay in eval mode. The EMG is cut into windows of
``window_seconds`` (the length the model was trained on, for the same batch statistics), in batches of
equal-length windows (never padded); a piece shorter than the model's minimum input is left out.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from emgscale.data.session import EMGSession
from emgscale.features.norm import RollingNorm, zero_padding


def batch_norms(model: nn.Module) -> list[nn.Module]:
    """The modules with running statistics (``running_mean``, ``running_var`` tensors and a ``momentum``):
    ``nn.BatchNorm*`` and the featurizer's ``MaskedBatchNorm`` (which has no ``reset_running_stats`` and no
    ``momentum=None`` mode)."""
    return [m for m in model.modules() if isinstance(getattr(m, "running_mean", None), Tensor)
            and isinstance(getattr(m, "running_var", None), Tensor) and hasattr(m, "momentum")]


@contextlib.contextmanager
def cumulative_statistics(norms: Sequence[nn.Module]) -> Iterator[Callable[[int], None]]:
    """Re-estimate ``norms``' running statistics as the cumulative average over the batches run within.

    Yields ``weigh(k)``, to call before the k-th batch's forward pass (k from 1): the first call replaces the
    old statistics (mean 0, variance 1, none tracked) and each call gives the k-th batch the weight 1/k (as
    ``momentum=None`` does). Without a call the statistics stay as they were. Each module's momentum is
    restored at the end (the one rule of :func:`adapt_norm` and SWAD's ``recompute_norm_stats``)."""
    saved = {m: m.momentum for m in norms}

    def weigh(k: int) -> None:
        for m in norms:
            if k == 1:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                if isinstance(getattr(m, "num_batches_tracked", None), Tensor):
                    m.num_batches_tracked.zero_()
            m.momentum = 1.0 / k

    try:
        yield weigh
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum


class StartStateRollingNorm(RollingNorm):
    """A :class:`RollingNorm` whose every sequence starts from a stored state (``start_state_*`` buffers,
    not saved) instead of an empty history: ``forward`` is the streaming step from that state, per sequence.
    Made by :func:`with_start_state`, never constructed directly."""

    def init_state(self) -> list[Tensor]:
        """The stored start state (copies)."""
        return [getattr(self, f"start_state_{i}").clone() for i in range(self.start_state_count)]

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Normalise (x (B, T, 2, C, K), lengths (B,) frames) -> (B, T, 2, C, K), zero on padding."""
        ys = [self.streaming_forward(x[b: b + 1], *self.init_state())[0] for b in range(x.shape[0])]
        return zero_padding(torch.cat(ys), lengths)


def with_start_state(norm: RollingNorm, state: Sequence[Tensor]) -> StartStateRollingNorm:
    """``norm`` itself, turned into a :class:`StartStateRollingNorm` starting from ``state`` (the layout of
    its :meth:`~RollingNorm.init_state`); its parameters are kept as they are."""
    norm.__class__ = StartStateRollingNorm
    for i, t in enumerate(state):
        norm.register_buffer(f"start_state_{i}", t.detach().clone(), persistent=False)
    norm.start_state_count = len(state)
    return norm  # type: ignore[return-value]


@torch.no_grad()
def rolling_start_state(norm: RollingNorm, feats: Iterable[Tensor]) -> list[Tensor]:
    """The state ``norm`` (eval mode) has after streaming the feature sequences ``feats`` (each
    (1, T, 2, C, K), valid frames only) one after the other, from its :meth:`~RollingNorm.init_state`."""
    state = [s.to(next(norm.parameters()).device) for s in RollingNorm.init_state(norm)]
    for x in feats:
        state = list(RollingNorm.streaming_forward(norm, x, *state)[1:])
    return state


def emg_pieces(sources: Iterable["np.ndarray | EMGSession"], max_samples: int, window_samples: int
               ) -> Iterator[np.ndarray]:
    """The first ``max_samples`` rows of EMG of ``sources`` (in order), in pieces of at most ``window_samples``.

    Args:
        sources: EMG arrays ``(T, bands, electrodes)`` or open sessions (only their EMG is read).
        max_samples: rows in all.
        window_samples: rows per piece (the last piece of a source may be shorter).
    """
    left = max_samples
    for src in sources:
        a, n = 0, len(src)
        while a < n and left > 0:
            b = min(n, a + window_samples, a + left)
            yield src.emg(a, b) if isinstance(src, EMGSession) else np.asarray(src[a:b], dtype=np.float32)
            left -= b - a
            a = b


def _batches(pieces: Iterable[np.ndarray], batch_windows: int) -> Iterator[np.ndarray]:
    """Consecutive pieces of equal length stacked, at most ``batch_windows`` per batch (no padding)."""
    group: list[np.ndarray] = []
    for p in pieces:
        if group and (len(p) != len(group[0]) or len(group) == batch_windows):
            yield np.stack(group)
            group = []
        group.append(p)
    if group:
        yield np.stack(group)


@torch.no_grad()
def adapt_norm(model: nn.Module, sources: Iterable["np.ndarray | EMGSession"], seconds: float, *,
               window_seconds: float = 4.0, batch_windows: int = 8) -> dict[str, Any]:
    """Re-estimate ``model``'s normalisation on up to ``seconds`` of one user's unlabelled EMG, in place.

    Args:
        model: a :class:`~emgscale.models.CTCModel` (``input_sample_rate_hz``, ``min_input_samples``);
            adapt a copy to keep the original. It is left in eval mode.
        sources: that user's EMG arrays ``(T, bands, electrodes)`` or open sessions, in the order to use
            them (only EMG is read, never labels).
        seconds: EMG to use at most (the first ``seconds`` of ``sources``); 0 changes nothing.
        window_seconds: length of the windows the EMG is cut into.
        batch_windows: windows per forward pass (their batch statistics are pooled).

    Returns:
        ``{"seconds": EMG used, "windows": windows used, "batch_norms": BatchNorms adapted,
        "rolling_norms": rolling norms given a start state}``.

    Raises:
        ValueError: ``seconds`` negative or not finite; ``window_seconds`` or ``batch_windows`` not positive.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"adaptation seconds must be a finite number >= 0, got {seconds}")
    if not window_seconds > 0 or batch_windows < 1:
        raise ValueError(f"window_seconds must be > 0 and batch_windows >= 1, got {window_seconds} / {batch_windows}")
    rate = float(model.input_sample_rate_hz)
    window = max(int(round(window_seconds * rate)), int(model.min_input_samples))
    pieces = (p for p in emg_pieces(sources, int(round(seconds * rate)), window) if len(p) >= model.min_input_samples)
    norms = batch_norms(model)
    rolling = [m for m in model.modules() if isinstance(m, RollingNorm)]
    device = next(model.parameters()).device
    captured: dict[nn.Module, list[Tensor]] = {m: [] for m in rolling}

    def capture(m: nn.Module, args: tuple[Any, ...]) -> None:
        x, lengths = args[0], args[1]
        captured[m] += [x[b: b + 1, : int(lengths[b])] for b in range(x.shape[0])]

    hooks = [m.register_forward_pre_hook(capture) for m in rolling]
    model.eval()
    used, windows = 0, 0
    try:
        with cumulative_statistics(norms) as weigh:
            for k, batch in enumerate(_batches(pieces, batch_windows), start=1):
                weigh(k)  # the first window replaces the old statistics
                for m in norms:
                    m.train()
                x = torch.from_numpy(batch).to(device)
                model(x, torch.full((len(batch),), batch.shape[1], dtype=torch.long, device=device))
                used += batch.shape[0] * batch.shape[1]
                windows += batch.shape[0]
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    for m in rolling:
        if captured[m]:
            with_start_state(m, rolling_start_state(m, captured[m]))
    return {"seconds": used / rate, "windows": windows, "batch_norms": len(norms) if windows else 0,
            "rolling_norms": sum(1 for m in rolling if captured[m])}


__all__ = ["StartStateRollingNorm", "adapt_norm", "batch_norms", "cumulative_statistics", "emg_pieces", "rolling_start_state",
           "with_start_state"]
