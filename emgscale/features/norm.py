"""Normalisation of (B, T, 2, C, K) log features, per electrode channel, ignoring padding frames.

Each normalisation also streams (eval mode): ``init_state() -> list[Tensor]`` and
``streaming_forward(x (1, T, 2, C, K), *state) -> (y, *new_state)`` give, fed a sequence in pieces,
what ``forward`` gives for the whole (the contract of :mod:`emgscale.models.streaming`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def time_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B, max_len) bool, True on the valid frames of each sequence."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def zero_padding(x: Tensor, lengths: Tensor) -> Tensor:
    """``x`` (B, T, ...) with every position at or beyond ``lengths[b]`` set to 0."""
    if x.shape[1] == 0 or bool((lengths >= x.shape[1]).all()):
        return x
    m = time_mask(lengths, x.shape[1]).view(*x.shape[:2], *([1] * (x.dim() - 2)))
    return x * m.to(x.dtype)


class MaskedBatchNorm(nn.Module):
    """The reference's ``SpectrogramNorm``: BatchNorm over the 2 x C electrode channels of log features.

    Statistics pool batch, time and frequency per (band, electrode) channel, as ``nn.BatchNorm2d`` over
    ``2 * C`` channels, but only over valid frames, so padding never shifts them. Parameters and
    buffers (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) are those
    of ``nn.BatchNorm2d(2 * C)``; without padding the result equals it.

    Args:
        num_channels: 2 * C.
        momentum: running-statistics momentum.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"features.norm_momentum must be in [0, 1], got {momentum}")
        self.num_channels, self.momentum, self.eps = num_channels, momentum, eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Normalise.

        Args:
            x: (B, T, 2, C, K) float32.
            lengths: (B,) valid frames.

        Returns:
            (B, T, 2, C, K), zero on padding frames.
        """
        B, T, bands, C, K = x.shape
        shape = (bands, C, 1)
        if self.training:
            full = bool((lengths >= T).all())
            if full:
                var, mean = torch.var_mean(x, dim=(0, 1, 4), unbiased=False)
                count = B * T * K
            else:
                m = time_mask(lengths, T).to(x.dtype).view(B, T, 1, 1, 1)
                count = int(lengths.clamp(max=T).sum()) * K
                mean = (x * m).sum(dim=(0, 1, 4)) / max(count, 1)
                var = ((x - mean.view(shape)).pow(2) * m).sum(dim=(0, 1, 4)) / max(count, 1)
            if count > 1:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    unbiased = var.detach().flatten() * (count / (count - 1))
                    self.running_mean.lerp_(mean.detach().flatten(), self.momentum)
                    self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var, full = self.running_mean, self.running_var, False
        y = self._affine(x, mean, var)
        return y if full else zero_padding(y, lengths)

    def _affine(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` per (band, electrode) channel, in one pass over x."""
        shape = (x.shape[2], x.shape[3], 1)
        scale = self.weight.view(shape) * torch.rsqrt(var.view(shape) + self.eps)
        shift = self.bias.view(shape) - mean.view(shape) * scale
        return torch.addcmul(shift, x, scale)

    def init_state(self) -> list[Tensor]:
        """No state: in eval mode the norm is a fixed affine map."""
        return []

    def streaming_forward(self, x: Tensor) -> tuple[Tensor]:
        """(1, T, 2, C, K) -> (1, T, 2, C, K) by the running statistics (eval mode)."""
        return (self._affine(x, self.running_mean, self.running_var),)


class RollingNorm(nn.Module):
    """Causal normalisation by running statistics over the last ``window_frames`` frames.

    Frame ``t`` of each (band, electrode) channel is normalised by the mean and variance of that channel
    over frames ``max(0, t - window_frames + 1) .. t`` and all K bins, then scaled by a learnable
    per-channel gain and bias. It needs no batch and no future, so it streams; padding (always after the
    valid frames) cannot reach the valid frames.

    Args:
        num_channels: 2 * C.
        window_frames: frames of history in the statistics.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, window_frames: int, eps: float = 1e-5) -> None:
        super().__init__()
        if window_frames < 1:
            raise ValueError(f"rolling norm window must be at least one frame, got {window_frames}")
        self.window_frames, self.eps = int(window_frames), eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Normalise (x (B, T, 2, C, K) float32, lengths (B,) frames) -> (B, T, 2, C, K), zero on padding."""
        history = x.new_zeros(x.shape[0], self.window_frames - 1, x.shape[2] * x.shape[3], dtype=torch.float64)
        y, _, _ = self._normalise(x, history, history, x.new_zeros((), dtype=torch.float64))
        return zero_padding(y, lengths)

    def init_state(self) -> list[Tensor]:
        """Per-frame sums and sums of squares of the last ``window_frames - 1`` frames (float64,
        (1, W - 1, 2 * C), zero) and the frames seen (float64 ())."""
        zeros = torch.zeros(1, self.window_frames - 1, self.weight.numel(), dtype=torch.float64)
        return [zeros, zeros.clone(), torch.zeros((), dtype=torch.float64)]

    def streaming_forward(self, x: Tensor, s1: Tensor, s2: Tensor, count: Tensor) -> tuple[Tensor, ...]:
        """(1, T, 2, C, K) new frames, state as :meth:`init_state` -> (y, *new_state)."""
        y, h1, h2 = self._normalise(x, s1, s2, count)
        T = x.shape[1]
        return y, h1[:, T:], h2[:, T:], count + T

    def _normalise(self, x: Tensor, s1: Tensor, s2: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` (B, T, 2, C, K) after ``count`` frames whose last ``W - 1`` per-frame sums (of values and
        of squares, (B, W - 1, 2 * C) float64) are ``s1``, ``s2`` -> (y, those sums followed by x's)."""
        B, T, bands, C, K = x.shape
        W = self.window_frames
        # Running sums in float64: whole sessions are tens of thousands of frames.
        h1 = torch.cat([s1, x.sum(-1, dtype=torch.float64).flatten(2)], 1)  # (B, W - 1 + T, 2 * C)
        h2 = torch.cat([s2, x.double().pow(2).sum(-1).flatten(2)], 1)
        c1, c2 = F.pad(h1.cumsum(1), (0, 0, 1, 0)), F.pad(h2.cumsum(1), (0, 0, 1, 0))
        w1, w2 = c1[:, W:] - c1[:, :T], c2[:, W:] - c2[:, :T]  # sums over each frame's window
        n = (count + torch.arange(1, T + 1, device=x.device, dtype=torch.float64)).clamp(max=W).view(1, T, 1) * K
        mean = w1 / n
        var = (w2 / n - mean.pow(2)).clamp(min=0.0)
        inv = torch.rsqrt(var + self.eps).to(x.dtype).view(B, T, bands, C, 1)
        y = (x - mean.to(x.dtype).view(B, T, bands, C, 1)) * inv
        y = y * self.weight.view(bands, C, 1) + self.bias.view(bands, C, 1)
        return y, h1, h2


class NoNorm(nn.Module):
    """Identity (padding frames zeroed)."""

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return zero_padding(x, lengths)

    def init_state(self) -> list[Tensor]:
        return []

    def streaming_forward(self, x: Tensor) -> tuple[Tensor]:
        return (x,)


def build_norm(kind: str, num_channels: int, frame_rate_hz: float, momentum: float, eps: float,
               rolling_window_s: float) -> nn.Module:
    """The normalisation named by ``features.norm`` (``batch``, ``rolling`` or ``none``)."""
    if kind == "batch":
        return MaskedBatchNorm(num_channels, momentum=momentum, eps=eps)
    if kind == "rolling":
        return RollingNorm(num_channels, max(1, round(rolling_window_s * frame_rate_hz)), eps=eps)
    if kind == "none":
        return NoNorm()
    raise ValueError(f"features.norm must be 'batch', 'rolling' or 'none', got {kind!r}")
