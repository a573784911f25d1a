"""Distillation into a student (``loss.distill_from``): a teacher's per-frame posteriors as soft targets beside CTC.

A small causal student (streamable, a tenth of the teacher's FLOPs) learns from CTC alone what a large
offline teacher learns too, and it can learn more from the teacher's whole per-frame distribution
(which keys are confusable, where blanks are sure). With ``loss.distill_from=CKPT`` the CTC objective
adds, per valid student frame,

    distill_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)),   T = distill_temperature

averaged over the batch's valid frames (the ``T^2`` keeps the gradient's scale independent of ``T``,
as in Hinton et al. 2015). The teacher:

* is rebuilt from the checkpoint (weights-only :func:`~emgscale.models.checkpoint.load_checkpoint`; the
  SWAD/SWA average when the file has one, as evaluation's ``auto``), with its own featurizer from its own
  config, in eval mode, frozen, on the student's device (bf16 autocast on a GPU with ``run.bf16``); it is
  no part of the student's optimiser, checkpoint or state dict.
* sees the batch's **clean** input (the raw EMG, or the cached spectra), not the student's augmented
  one: the augmentations are drawn inside the student's featurizer, and a teacher's targets are best on
  clean input (the student learns to give them from corrupted input: "noisy student", Xie et al. 2020).
  The teacher's posteriors thus lag or lead the student's frames by at most the temporal jitter
  (``augment.temporal_jitter_samples``, 60 ms in the reference).
* may have another frame rate (another stride): its posteriors are resampled to the student's frames by
  **area averaging** over time (:func:`resample_frames`): student frame ``j`` covers input samples
  ``[j s, (j + 1) s)`` (``s`` = its ``samples_per_frame``), teacher frame ``i`` covers ``[i t, (i + 1) t)``,
  and the student's target is the teacher's distributions averaged with weights = overlap. A faster
  teacher's frames are pooled (no CTC spike falls between two student frames), a slower one's are held
  (and blended at their boundaries); equal rates give the teacher's frames exactly. Frames beyond the
  teacher's valid ones take its first / last valid frame.
* can be read ``distill_delay_ms`` later than it emitted (``loss.distill_delay_ms``): a causal student
  cannot emit a key before its EMG ends, where a bidirectional teacher may; the delay moves the targets
  later in time by that much.

The teacher checkpoint's sha256 is written to ``<run.out_dir>/distill_teacher.json``; a run that already
has checkpoints there refuses to continue with another teacher (the file at the path changed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgscale.common import atomic_write_json, is_main
from emgscale.models import build_model, forward_batch
from emgscale.models.checkpoint import load_checkpoint, load_weights
from emgscale.run_folder import RunFolder, checkpoint_file
from emgscale.shard.writer import file_sha256

TEACHER_RECORD = "distill_teacher.json"  #: in ``run.out_dir``: the teacher's path and sha256


def resample_frames(probs: Tensor, lengths: Tensor, num_out: int, in_frame_samples: float,
                    out_frame_samples: float, delay_samples: float = 0.0) -> Tensor:
    """Per-frame distributions at one frame rate, area-averaged onto the frames of another.

    Args:
        probs: (B, T_in, C) distributions (rows sum to 1 on valid frames).
        lengths: (B,) valid input frames (at least 1).
        num_out: T_out, the output frames wanted.
        in_frame_samples, out_frame_samples: input samples per input / output frame.
        delay_samples: output frame ``j`` takes the input as it was ``delay_samples`` earlier.

    Returns:
        (B, T_out, C): output frame ``j`` is the overlap-weighted mean of the input frames that cover
        samples ``[j * out - delay, (j + 1) * out - delay)``; input frames outside ``[0, lengths[b])``
        count as the nearest valid one. Exactly ``probs`` (trimmed or edge-extended to ``T_out``) when the
        rates are equal and the delay is a whole number of frames.
    """
    B, _, C = probs.shape
    ratio = float(out_frame_samples) / float(in_frame_samples)
    j = torch.arange(num_out, device=probs.device, dtype=torch.float64)
    start = (j * float(out_frame_samples) - float(delay_samples)) / float(in_frame_samples)  # (T_out,) in input frames
    span = math.ceil(ratio) + 1  # input frames one output frame can touch
    i = torch.floor(start).long().unsqueeze(1) + torch.arange(span, device=probs.device)  # (T_out, span)
    overlap = (torch.minimum(start.unsqueeze(1) + ratio, i + 1.0) - torch.maximum(start.unsqueeze(1), i.double())
               ).clamp(min=0.0) / ratio
    last = (lengths.to(probs.device).long() - 1).clamp(min=0).view(B, 1, 1)
    idx = torch.minimum(i.clamp(min=0).unsqueeze(0).expand(B, -1, -1), last)  # (B, T_out, span)
    picked = probs.gather(1, idx.reshape(B, -1, 1).expand(-1, -1, C)).view(B, num_out, span, C)
    return (picked * overlap.to(probs.dtype).view(1, num_out, span, 1)).sum(2)


def distill_kl(student_log_probs: Tensor, lengths: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """Mean over valid frames of ``KL(teacher || softmax(student / T))``.

    Args:
        student_log_probs: (B, T, C) the student's log-probabilities (or logits).
        lengths: (B,) the student's valid frames.
        teacher_probs: (B, T, C) the teacher's tempered distributions on the student's frames.
        temperature: T (> 0).

    Returns:
        A scalar >= 0 (up to rounding); 0 when the tempered student equals the teacher.
    """
    log_q = (student_log_probs.float() / temperature).log_softmax(-1)
    p = teacher_probs.float()
    kl = (torch.xlogy(p, p) - p * log_q).sum(-1)  # (B, T)
    mask = torch.arange(kl.shape[1], device=kl.device)[None, :] < lengths.to(kl.device)[:, None]
    return (kl * mask).sum() / mask.sum().clamp(min=1)


class Teacher:
    """A frozen model whose tempered per-frame posteriors are a student's soft targets (see the module docstring).

    Args:
        path: the teacher's checkpoint (file or run's checkpoint folder).
        student: the student model (for its frame geometry, classes and spectra settings).
        temperature: ``loss.distill_temperature``.
        delay_ms: ``loss.distill_delay_ms``.
        cached_spectra: the training batches carry cached spectra (``data.feature_cache``).
        bf16: run the teacher under bf16 autocast on a GPU (``run.bf16``); fp32 otherwise.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the teacher cannot teach this student (other classes, input rate, or spectra settings
            where the batches carry cached spectra).
    """

    def __init__(self, path: "str | Path", student: nn.Module, temperature: float, delay_ms: float = 0.0,
                 cached_spectra: bool = False, bf16: bool = False) -> None:
        self.path = checkpoint_file(path)
        ck = load_checkpoint(self.path)
        self.model = build_model(ck.model_config())
        load_weights(self.model, ck.weights("averaged" if ck.averaged_model is not None else "model"), self.path)
        self.model.eval().requires_grad_(False)
        self.sha256 = file_sha256(self.path)
        self.temperature = float(temperature)
        self.bf16 = bool(bf16)
        where = f"loss.distill_from={str(path)!r}"
        if self.model.num_classes != student.num_classes:
            raise ValueError(f"{where}: the teacher has {self.model.num_classes} classes, the student "
                             f"{student.num_classes}")
        if self.model.input_sample_rate_hz != student.input_sample_rate_hz:
            raise ValueError(f"{where}: the teacher reads EMG at {self.model.input_sample_rate_hz:g} Hz, the "
                             f"student at {student.input_sample_rate_hz:g} Hz")
        if cached_spectra and self.model.featurizer.spectra_settings() != student.featurizer.spectra_settings():
            raise ValueError(f"{where}: the teacher's spectra settings differ from the student's, so it cannot read "
                             "the cached spectra (data.feature_cache): train without the cache")
        self.teacher_frame_samples = float(self.model.samples_per_frame)
        self.student_frame_samples = float(student.samples_per_frame)
        self.delay_samples = delay_ms / 1e3 * student.input_sample_rate_hz

    @torch.no_grad()
    def targets(self, batch: Any, num_frames: int) -> Tensor:
        """The teacher's tempered distributions on the student's ``num_frames`` frames: (B, num_frames, C) float32.

        Args:
            batch: a :class:`~emgscale.data.windows.Batch` on the student's device (clean input).
            num_frames: the student's padded output frames.
        """
        device = batch.emg_lengths.device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16 and device.type == "cuda"):
            log_probs, lengths = forward_batch(self.model, batch)
        probs = (log_probs.float() / self.temperature).softmax(-1)
        if self.teacher_frame_samples == self.student_frame_samples and self.delay_samples == 0:
            if probs.shape[1] >= num_frames:
                return probs[:, :num_frames]
        return resample_frames(probs, lengths, num_frames, self.teacher_frame_samples, self.student_frame_samples,
                               self.delay_samples)


def record_teacher(out_dir: "str | Path", teacher: Teacher) -> None:
    """Write the teacher's path and sha256 to ``<out_dir>/distill_teacher.json`` (rank 0).

    Raises:
        ValueError: the folder already holds a run's checkpoints distilled from a teacher with another sha256.
    """
    folder = RunFolder(out_dir)
    record = folder.root / TEACHER_RECORD
    if record.is_file() and folder.last.is_file():
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("sha256") not in (None, teacher.sha256):
            raise ValueError(f"loss.distill_from={str(teacher.path)!r}: the run in {folder.root} was distilled from "
                             f"another teacher ({old.get('path')}, sha256 {str(old['sha256'])[:12]}...); continue it "
                             "with that teacher, or start a new run.out_dir")
    if is_main():
        folder.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record, {"path": str(teacher.path), "sha256": teacher.sha256})


__all__ = ["TEACHER_RECORD", "Teacher", "distill_kl", "record_teacher", "resample_frames"]
