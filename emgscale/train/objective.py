"""What the loop optimises and how it validates: an :class:`Objective` chosen by ``loss.kind``.

The loop is the same for every task; the objective supplies the training loss of a batch and the
validation pass. ``ctc`` (the default, the paper's) is CTC over the model's log-probs and its own
output lengths, validated by loss and greedy CER. Other objectives register in :data:`OBJECTIVES`.

``loss.aux=keys`` adds to CTC what pure CTC ignores, the keystroke times: a frame-level cross-entropy
toward each key's class on the output frames of a short window before its press (EMG leads the press by
60-140 ms: ``aux_offset_ms`` / ``aux_width_ms``), weighted ``aux_weight`` and decayed linearly to 0 over
``aux_decay_steps``, so the model uses its input from the first steps and CTC's own alignment takes over.
It works for any encoder and frame rate (the model's ``samples_per_frame``) and for whole sessions.

``loss.distill_from=CKPT`` adds a teacher's tempered per-frame posteriors as soft targets beside CTC
(``distill_weight * T^2 * KL`` per valid frame; :mod:`emgscale.train.distill`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.nn.functional as F

from emgscale.data.windows import Batch
from emgscale.train.loss_config import LossConfig
from emgscale.train.distill import Teacher, distill_kl, record_teacher
from emgscale.train.frames import FrameCEObjective
from emgscale.train.validation import ctc_loss, validate




class Objective(Protocol):
    """The loss and validation of one task.

    Attributes:
        metric: the validation metric ``best.pt`` is chosen by (lower is better).
    """

    metric: str

    def loss(self, log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: Batch, step: int) -> torch.Tensor:
        """The scalar training loss of a batch (``batch`` already on the device) at optimiser step ``step``."""

    def validate(self, model: torch.nn.Module, loader: Iterable[Batch], device: torch.device, max_batches: int,
                 autocast: dict[str, Any]) -> dict[str, float]:
        """Validation metrics (reduced over ranks), including ``val_loss`` and :attr:`metric`."""


IGNORE = -100  #: frames without a key target (``F.cross_entropy``'s ``ignore_index``)


def key_frame_targets(labels: torch.Tensor, label_lengths: torch.Tensor, label_times: torch.Tensor,
                      out_lengths: torch.Tensor, num_frames: int, frame_s: float, offset_s: float,
                      width_s: float) -> torch.Tensor:
    """Per-frame class targets from key press times: each key's class on the frames of its window.

    Output frame ``j`` is taken to be centred at ``(j + 1/2) * frame_s`` seconds from ``emg[0]`` (the
    receptive-field centres of the shipped front ends differ from this by less than one 32 ms feature
    window; training's inter-band jitter moves the signal by at most 60 ms). A key pressed at ``t`` is
    the target of the frames centred in ``[t - offset_s - width_s / 2, t - offset_s + width_s / 2]``.
    Where two keys' windows overlap, a frame gets one of them.

    Args:
        labels: (B, S) long class labels (padding beyond ``label_lengths``).
        label_lengths: (B,) long.
        label_times: (B, S) press times in seconds from each sequence's first sample.
        out_lengths: (B,) valid output frames.
        num_frames: T', the padded number of output frames.
        frame_s: seconds per output frame (``samples_per_frame / sample_rate``).
        offset_s, width_s: the window, as above.

    Returns:
        (B, T') long targets, :data:`IGNORE` on frames without a key and on padding.
    """
    B, S = labels.shape
    device = labels.device
    centre = label_times.to(torch.float64) - offset_s
    lo = torch.ceil((centre - width_s / 2) / frame_s - 0.5).long()  # first j with (j + .5) frame_s >= start
    hi = torch.floor((centre + width_s / 2) / frame_s - 0.5).long()
    span = max(1, int(math.floor(width_s / frame_s)) + 1)  # most frames one window can hold
    j = lo.unsqueeze(-1) + torch.arange(span, device=device)  # (B, S, span)
    valid = ((j <= hi.unsqueeze(-1)) & (j >= 0) & (j < out_lengths.view(B, 1, 1))
             & (torch.arange(S, device=device) < label_lengths.view(B, 1)).unsqueeze(-1))
    targets = torch.full((B, num_frames + 1), IGNORE, dtype=torch.long, device=device)
    j = torch.where(valid, j, torch.full_like(j, num_frames))  # invalid entries land in the dropped column
    targets.scatter_(1, j.view(B, -1), labels.unsqueeze(-1).expand(B, S, span).reshape(B, -1))
    return targets[:, :num_frames]


def aux_weight_at(cfg: LossConfig, step: int) -> float:
    """The auxiliary loss weight at optimiser step ``step``: ``aux_weight``, falling linearly to 0 at
    ``aux_decay_steps`` (constant when it is 0); 0 when ``aux`` is ``"none"``."""
    if cfg.aux == "none":
        return 0.0
    if cfg.aux_decay_steps <= 0:
        return cfg.aux_weight
    return cfg.aux_weight * max(0.0, 1.0 - step / cfg.aux_decay_steps)


class CTCObjective:
    """CTC loss (plus the optional keystroke-time loss, ``loss.aux``); validation loss and greedy CER (``val_cer``)."""

    metric = "val_cer"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        loss = cfg.loss
        if loss.aux not in ("none", "keys"):
            raise ValueError(f"loss.aux: unknown auxiliary loss {loss.aux!r} (none | keys)")
        if loss.aux != "none" and (loss.aux_weight < 0 or loss.aux_width_ms <= 0):
            raise ValueError(f"loss.aux_weight must be >= 0 and loss.aux_width_ms > 0, got "
                             f"{loss.aux_weight} / {loss.aux_width_ms}")
        if loss.distill_from is not None and (loss.distill_weight < 0 or not loss.distill_temperature > 0):
            raise ValueError(f"loss.distill_weight must be >= 0 and loss.distill_temperature > 0, got "
                             f"{loss.distill_weight} / {loss.distill_temperature}")
        self.frame_s = 0.0
        self.teacher: Teacher | None = None
        if loss.aux != "none" or loss.distill_from is not None:
            from emgscale.models import build_model

            model = build_model(cfg.model)  # for its frame geometry only
            self.frame_s = model.samples_per_frame / model.input_sample_rate_hz
            if loss.distill_from is not None:
                self.teacher = Teacher(loss.distill_from, model, loss.distill_temperature, loss.distill_delay_ms,
                                       cached_spectra=bool(getattr(cfg.data, "feature_cache", None)),
                                       bf16=bool(getattr(cfg.run, "bf16", False)))
                record_teacher(cfg.run.out_dir, self.teacher)

    def aux_loss(self, log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy of the key frames (:func:`key_frame_targets`); 0 when a batch has none."""
        if batch.label_times is None:
            raise ValueError("loss.aux=keys needs key press times, but the batch has no label_times "
                             "(samples without label_time_s)")
        c = self.cfg.loss
        targets = key_frame_targets(batch.labels, batch.label_lengths, batch.label_times, out_lengths,
                                    log_probs.shape[1], self.frame_s, c.aux_offset_ms / 1e3, c.aux_width_ms / 1e3)
        total = F.nll_loss(log_probs.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
        return total / (targets != IGNORE).sum().clamp(min=1)  # no host sync

    def distill_loss(self, log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``T^2 * KL(teacher || student)`` at temperature T, mean over the student's valid frames."""
        assert self.teacher is not None
        T = self.cfg.loss.distill_temperature
        return T * T * distill_kl(log_probs, out_lengths, self.teacher.targets(batch, log_probs.shape[1]), T)

    def loss(self, log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: Batch, step: int) -> torch.Tensor:
        total = ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths)
        if self.teacher is not None and self.cfg.loss.distill_weight > 0:
            total = total + self.cfg.loss.distill_weight * self.distill_loss(log_probs, out_lengths, batch)
        weight = aux_weight_at(self.cfg.loss, step)
        if weight <= 0:
            return total
        return total + weight * self.aux_loss(log_probs, out_lengths, batch)

    def validate(self, model: torch.nn.Module, loader: Iterable[Batch], device: torch.device, max_batches: int,
                 autocast: dict[str, Any]) -> dict[str, float]:
        return validate(model, loader, device, max_batches=max_batches, autocast=autocast)


#: ``loss.kind`` -> ``factory(train_config) -> Objective``.
OBJECTIVES: dict[str, Callable[[Any], Objective]] = {"ctc": CTCObjective}
OBJECTIVES["frame_ce"] = FrameCEObjective


def build_objective(cfg: Any) -> Objective:
    """The objective ``cfg.loss.kind`` names, for the training config ``cfg``.

    Raises:
        ValueError: an unknown ``loss.kind``; ``loss.distill_from`` with another objective than ``ctc``, or a
            teacher that cannot teach this model (:class:`~emgscale.train.distill.Teacher`).
    """
    kind = cfg.loss.kind
    if cfg.loss.distill_from is not None and kind != "ctc":
        raise ValueError(f"loss.distill_from: distillation is part of the ctc objective, not loss.kind={kind}")
    if kind not in OBJECTIVES:
        raise ValueError(f"loss.kind: unknown objective {kind!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[kind](cfg)
