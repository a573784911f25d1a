"""Shared pieces of the SWAD tests (test_swad.py, test_swad_store.py): a tiny model, random weight
sequences, a driver that plays steps as the training loop does, and a validation-loss curve with one valley."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emgscale.features.norm import MaskedBatchNorm
from emgscale.swad import SWADConfig, WeightAverager

STEPS_PER_SEGMENT = 2  # validation every 2 optimiser steps


class _Tiny(torch.nn.Module):
    """Linear + a batch norm over the channel axis; ``forward(x (B, T, C), lengths) -> (y, lengths)``.

    ``norm="torch"`` uses ``nn.BatchNorm1d``; ``norm="masked"`` the models' own :class:`MaskedBatchNorm`
    (the reference's spectrogram norm), which is what real models carry.
    """

    def __init__(self, channels: int = 3, norm: str = "torch") -> None:
        super().__init__()
        self.norm = norm
        self.lin = torch.nn.Linear(channels, channels)
        self.bn = torch.nn.BatchNorm1d(channels) if norm == "torch" else MaskedBatchNorm(channels)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.lin(x)  # (B, T, C)
        if self.norm == "torch":
            return self.bn(h.transpose(1, 2)).transpose(1, 2), lengths
        B, T, C = h.shape
        return self.bn(h.view(B, T, 1, C, 1), lengths).view(B, T, C), lengths  # (B, T, bands=1, C, K=1)


@dataclass
class _Batch:
    emg: torch.Tensor
    emg_lengths: torch.Tensor

    def to(self, device: torch.device) -> "_Batch":
        return _Batch(self.emg.to(device), self.emg_lengths.to(device))


def _weights(n_steps: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A random parameter set per step (what the optimiser would have produced)."""
    g = torch.Generator().manual_seed(seed)
    model = _Tiny()
    return [{k: torch.randn(p.shape, generator=g) for k, p in model.named_parameters()} for _ in range(n_steps)]


def _set(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])


def _drive(avg: WeightAverager, model: torch.nn.Module, weights: list[dict[str, torch.Tensor]],
           losses: list[float], start: int = 0, stop: int | None = None) -> None:
    """Play steps ``[start, stop)`` as the loop does: after_step each step, after_validation every segment."""
    stop = len(weights) if stop is None else stop
    for step in range(start, stop):
        _set(model, weights[step])
        avg.after_step(model, step)
        if (step + 1) % STEPS_PER_SEGMENT == 0:
            avg.after_validation(model, losses[(step + 1) // STEPS_PER_SEGMENT - 1], step + 1)


def _mean(weights: list[dict[str, torch.Tensor]], steps: list[int]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([weights[s][k] for s in steps]).mean(0) for k in weights[0]}


def _assert_params_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


# A validation-loss curve with one valley: falls, flattens around 2.0-2.15, then rises for good.
# With n_converge=3, n_tolerance=3, r=0.1 the rule starts at segment 3 (the oldest of [2.0, 2.1, 2.05]
# is their minimum; threshold 2.2) and keeps segments 3..7: each has a loss <= 2.2 among itself and
# the next two; segment 8 does not (min(3, 3.5, 4) > 2.2), so averaging stops there.
VALLEY = [5.0, 4.0, 3.0, 2.0, 2.1, 2.05, 2.15, 2.1, 3.0, 3.5, 4.0, 4.5, 5.0]
VALLEY_SEGMENTS = range(3, 8)
VALLEY_CFG = SWADConfig(mode="swad", n_converge=3, n_tolerance=3, tolerance_ratio=0.1)


def _segment_steps(segments: range) -> list[int]:
    return [s * STEPS_PER_SEGMENT + i for s in segments for i in range(STEPS_PER_SEGMENT)]
