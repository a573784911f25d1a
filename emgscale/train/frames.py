"""Frame-level classification: cross-entropy of every output frame (``loss.kind: frame_ce``).

The model (``model.num_classes`` outputs) emits log-probabilities per output frame; the batch carries
a label per EMG row (``Batch.sample_labels``, -1 = none). Alignment (:func:`frame_targets`): output
frame ``j`` owns the rows ``[j * s, (j + 1) * s)`` with ``s = model.samples_per_frame`` and takes the
label of the row in their middle, ``j * s + s // 2``; the inverse (:func:`frames_to_samples`) gives
every row the prediction of the frame that owns it (rows past the last frame take the last frame's),
which is how per-time-point accuracy is scored. Validation reports ``val_loss`` (mean cross-entropy
per labelled frame) and ``val_error`` (1 - frame accuracy), which ``best.pt`` is chosen by.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from emgscale.config import ConfigError
from emgscale.data.windows import Batch
from emgscale.models import forward_batch

IGNORE = -1


def frame_targets(sample_labels: torch.Tensor, out_lengths: torch.Tensor, samples_per_frame: int,
                  num_frames: int) -> torch.Tensor:
    """The label of each output frame: the label of row ``j * s + s // 2`` (-1 beyond ``out_lengths``).

    Args:
        sample_labels: int64 (B, T) label per row, -1 on padding.
        out_lengths: (B,) valid output frames.
        samples_per_frame: ``s``, input rows per output frame.
        num_frames: T' (frames the model emitted, padding included).

    Returns:
        int64 (B, T').
    """
    B, T = sample_labels.shape
    idx = (torch.arange(num_frames, device=sample_labels.device) * samples_per_frame + samples_per_frame // 2)
    targets = sample_labels.gather(1, idx.clamp(max=T - 1).view(1, -1).expand(B, -1))
    invalid = (torch.arange(num_frames, device=targets.device).view(1, -1) >= out_lengths.view(-1, 1)) | (idx >= T)
    return targets.masked_fill(invalid, IGNORE)


def frames_to_samples(frame_values: np.ndarray, num_samples: int, samples_per_frame: int) -> np.ndarray:
    """Per-row values from per-frame ones: row ``i`` takes frame ``min(i // s, T' - 1)``."""
    frame_values = np.asarray(frame_values)
    if len(frame_values) == 0:
        raise ValueError("no output frames to spread over the rows")
    return frame_values[np.minimum(np.arange(num_samples) // samples_per_frame, len(frame_values) - 1)]


def _frame_nll(log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: Batch,
               samples_per_frame: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy, number of labelled frames and number correct."""
    if batch.sample_labels is None:
        raise ValueError("loss.kind=frame_ce needs batches with a label per row (data.format: csv)")
    targets = frame_targets(batch.sample_labels, out_lengths, samples_per_frame, log_probs.shape[1])
    nll = F.nll_loss(log_probs.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum")
    valid = targets != IGNORE
    correct = ((log_probs.argmax(-1) == targets) & valid).sum()
    return nll, valid.sum(), correct


class FrameCEObjective:
    """Cross-entropy per output frame; validation loss and frame error (``val_error``)."""

    metric = "val_error"

    def __init__(self, cfg: Any) -> None:
        from emgscale.models import build_model

        model = build_model(cfg.model)
        if model.blank is not None:
            raise ConfigError("loss.kind=frame_ce needs model.num_classes set to the number of labels")
        self.samples_per_frame = int(model.samples_per_frame)
        self.num_classes = int(model.num_classes)
        if cfg.data.format == "csv":  # a label >= num_classes would crash the loss: name its file first
            from emgscale.loader.csv import check_labels

            check_labels(cfg.data, self.num_classes)

    def loss(self, log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: Batch, step: int) -> torch.Tensor:
        nll, count, _ = _frame_nll(log_probs, out_lengths, batch, self.samples_per_frame)
        return nll / count.clamp(min=1)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, loader: Iterable[Batch], device: torch.device, max_batches: int,
                 autocast: dict[str, Any]) -> dict[str, float]:
        was_training = model.training
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # nll, frames, correct
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            gpu = batch.to(device)
            with torch.autocast(**autocast):
                log_probs, out_lengths = forward_batch(model, gpu)
            nll, count, correct = _frame_nll(log_probs, out_lengths, gpu, self.samples_per_frame)
            totals += torch.stack([nll.double(), count.double(), correct.double()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            on = totals if torch.distributed.get_backend() == "nccl" else totals.cpu()
            torch.distributed.all_reduce(on)
            totals = on
        nll, frames, correct = totals.cpu().tolist()
        model.train(was_training)
        accuracy = correct / max(frames, 1)
        return {"val_loss": nll / max(frames, 1), "val_error": 1.0 - accuracy, "val_accuracy": accuracy,
                "val_frames": int(frames)}
