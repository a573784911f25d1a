"""Normalisation of (B, T, 2, C, K) log features, per electrode channel, ignoring padding frames.

Each normalisation also streams (eval mode): ``init_state() -> list[Tensor]`` and
``streaming_forward(x (1, T, 2, C, K), *state) -> (y, *new_state)`` give, fed a sequence in pieces,
what ``forward`` gives for the whole (the contract of :mod:`emgscale.models.streaming`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NotStreamable(ValueError):
    """A model stage that needs future input or unbounded state (the message says which and why); the
    streaming contract's error, re-exported by :mod:`emgscale.models.streaming`."""


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
        scale, shift, x, full = self.scale_shift(x, lengths)
        y = torch.addcmul(shift, x, scale)
        return y if full else zero_padding(y, lengths)

    def scale_shift(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
        """This batch's normalisation as one affine map per channel, ``y = x * scale + shift`` on the valid
        frames, (bands, C, 1) each; ``x`` with its padding frames zeroed; and whether every frame is valid.
        In training the batch statistics (over valid frames) are used and the running ones updated, as
        :meth:`forward` does.

        ``scale`` and ``shift`` carry the gradient of ``weight`` and ``bias``: a linear layer that reads the
        normalised features can take them into its weights (:class:`~emgscale.models.frontend.RotationInvariantMLP`)
        and never needs the gradient of its input. With padding, the statistics are sums over the zeroed ``x``
        (``var = E[x^2] - E[x]^2``: two passes over it, not five)."""
        B, T, bands, C, K = x.shape
        shape = (bands, C, 1)
        full = bool((lengths >= T).all())
        if not full:
            x = zero_padding(x, lengths)
        if self.training:
            if full:
                var, mean = torch.var_mean(x, dim=(0, 1, 4), unbiased=False)
                count = B * T * K
            else:
                count = int(lengths.clamp(max=T).sum()) * K
                mean = x.sum(dim=(0, 1, 4)) / max(count, 1)
                var = ((x * x).sum(dim=(0, 1, 4)) / max(count, 1) - mean * mean).clamp(min=0.0)
            if count > 1:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    unbiased = var.detach().flatten() * (count / (count - 1))
                    self.running_mean.lerp_(mean.detach().flatten(), self.momentum)
                    self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (*self._affine_of(mean, var, shape), x, full)

    def _affine_of(self, mean: Tensor, var: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``(scale, shift)`` of ``(x - mean) / sqrt(var + eps) * weight + bias``, per channel, in ``shape``."""
        scale = self.weight.view(shape) * torch.rsqrt(var.view(shape) + self.eps)
        return scale, self.bias.view(shape) - mean.view(shape) * scale

    def init_state(self) -> list[Tensor]:
        """No state: in eval mode the norm is a fixed affine map."""
        return []

    def streaming_forward(self, x: Tensor) -> tuple[Tensor]:
        """(1, T, 2, C, K) -> (1, T, 2, C, K) by the running statistics (eval mode)."""
        scale, shift = self._affine_of(self.running_mean, self.running_var, (x.shape[2], x.shape[3], 1))
        return (torch.addcmul(shift, x, scale),)


class RollingNorm(nn.Module):
    """Causal normalisation by running statistics over the last ``window_frames`` frames (or all of them).

    Frame ``t`` of each (band, electrode) channel is normalised by the mean and variance of that channel
    over frames ``max(0, t - window_frames + 1) .. t`` (``window_frames=None``: ``0 .. t``, SplashNet's
    cumulative statistics) and all K bins (``per_bin``: each bin by its own statistics, as SplashNet), then
    scaled by a learnable per-channel gain and bias. It needs no batch and no future, so it streams;
    padding (always after the valid frames) cannot reach the valid frames.

    Warm-up (``warmup_frames`` > 0, SplashNet's Rolling Time Normalization): the first ``warmup_frames``
    frames of a sequence are all normalised by the statistics of those frames (of all its frames when it
    is shorter), not by the few frames seen so far. That reads up to ``warmup_frames - 1`` frames ahead at
    the start of a sequence, so it does not stream (``init_state`` raises NotStreamable); with
    ``warmup_frames=0`` the first frames use the frames seen so far, the causal form.

    Args:
        num_channels: 2 * C.
        window_frames: frames of history in the statistics; None = every frame since the start.
        eps: added to the variance.
        warmup_frames: frames at the start normalised by the statistics of all of them (0 = none).
        per_bin: statistics per (channel, bin) instead of pooled over the K bins of a channel.
        num_bins: K (the streaming state's width with ``per_bin``).
    """

    def __init__(self, num_channels: int, window_frames: int | None, eps: float = 1e-5, warmup_frames: int = 0,
                 per_bin: bool = False, num_bins: int = 1) -> None:
        super().__init__()
        if window_frames is not None and window_frames < 1:
            raise ValueError(f"rolling norm window must be at least one frame, got {window_frames}")
        if warmup_frames < 0:
            raise ValueError(f"features.rolling_warmup_s must be >= 0, got {warmup_frames} frames")
        self.window_frames, self.eps = (None if window_frames is None else int(window_frames)), eps
        self.warmup_frames, self.per_bin, self.num_bins = int(warmup_frames), bool(per_bin), int(num_bins)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    @property
    def history_frames(self) -> int:
        """Frames of per-frame sums the statistics carry (1 running total for the cumulative form)."""
        return 1 if self.window_frames is None else self.window_frames - 1

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Normalise (x (B, T, 2, C, K) float32, lengths (B,) frames) -> (B, T, 2, C, K), zero on padding."""
        B, T, bands, C, K = x.shape
        width = bands * C * (K if self.per_bin else 1)
        history = x.new_zeros(B, self.history_frames, width, dtype=torch.float64)
        mean, var, _, _ = self._stats(x, history, history, x.new_zeros((), dtype=torch.float64))
        if self.warmup_frames > 0 and T > 0:
            # SplashNet's warm-up: frames before the end of the warm-up take its statistics
            end = (lengths.to(x.device).clamp(min=1, max=T).clamp(max=self.warmup_frames) - 1).view(B, 1, 1)
            early = (torch.arange(T, device=x.device) < self.warmup_frames).view(1, T, 1)
            mean = torch.where(early, mean.gather(1, end.expand(B, 1, width)), mean)
            var = torch.where(early, var.gather(1, end.expand(B, 1, width)), var)
        return zero_padding(self._scale(x, mean, var), lengths)

    def init_state(self) -> list[Tensor]:
        """Per-frame sums and sums of squares of the last ``window_frames - 1`` frames (or, cumulative, the
        running totals: one frame) (float64, (1, frames, 2 * C[* K]), zero) and the frames seen (float64 ()).

        Raises:
            NotStreamable: a warm-up (it reads the first ``warmup_frames`` frames ahead).
        """
        if self.warmup_frames:
            raise NotStreamable(f"features.rolling_warmup_s: the warm-up normalises the first {self.warmup_frames} "
                                f"frames by their joint statistics (a look-ahead at the start); set it to 0 to "
                                f"stream (only the first frames change)")
        width = self.weight.numel() * (self.num_bins if self.per_bin else 1)
        zeros = torch.zeros(1, self.history_frames, width, dtype=torch.float64)
        return [zeros, zeros.clone(), torch.zeros((), dtype=torch.float64)]

    def streaming_forward(self, x: Tensor, s1: Tensor, s2: Tensor, count: Tensor) -> tuple[Tensor, ...]:
        """(1, T, 2, C, K) new frames, state as :meth:`init_state` -> (y, *new_state)."""
        mean, var, h1, h2 = self._stats(x, s1, s2, count)
        T = x.shape[1]
        if self.window_frames is None:
            return self._scale(x, mean, var), h1[:, -1:], h2[:, -1:], count + T
        return self._scale(x, mean, var), h1[:, T:], h2[:, T:], count + T

    def _stats(self, x: Tensor, s1: Tensor, s2: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-frame statistics of ``x`` (B, T, 2, C, K) after ``count`` frames.

        Windowed: ``s1``, ``s2`` (B, W - 1, width) float64 are the per-frame sums (of values and of squares)
        of the last ``W - 1`` frames; cumulative: (B, 1, width), the running totals. Returns the mean and
        variance of each frame's statistics (B, T, width) float64 and ``s1``/``s2`` followed by x's per-frame
        sums (windowed) or running totals (cumulative).
        """
        B, T, bands, C, K = x.shape
        # Running sums in float64: whole sessions are tens of thousands of frames.
        if self.per_bin:
            f1, f2, k = x.double().flatten(2), x.double().pow(2).flatten(2), 1
        else:
            f1, f2, k = x.sum(-1, dtype=torch.float64).flatten(2), x.double().pow(2).sum(-1).flatten(2), K
        seen = count + torch.arange(1, T + 1, device=x.device, dtype=torch.float64)
        if self.window_frames is None:
            h1, h2 = s1 + f1.cumsum(1), s2 + f2.cumsum(1)  # running totals after each frame
            w1, w2, n = h1, h2, seen.view(1, T, 1) * k
        else:
            W = self.window_frames
            h1, h2 = torch.cat([s1, f1], 1), torch.cat([s2, f2], 1)  # (B, W - 1 + T, width)
            c1, c2 = F.pad(h1.cumsum(1), (0, 0, 1, 0)), F.pad(h2.cumsum(1), (0, 0, 1, 0))
            w1, w2 = c1[:, W:] - c1[:, :T], c2[:, W:] - c2[:, :T]  # sums over each frame's window
            n = seen.clamp(max=W).view(1, T, 1) * k
        mean = w1 / n
        return mean, (w2 / n - mean.pow(2)).clamp(min=0.0), h1, h2

    def _scale(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """``(x - mean) / sqrt(var + eps) * weight + bias``, statistics (B, T, width) float64."""
        B, T, bands, C, K = x.shape
        shape = (B, T, bands, C, K if self.per_bin else 1)
        inv = torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        y = (x - mean.to(x.dtype).view(shape)) * inv
        return y * self.weight.view(bands, C, 1) + self.bias.view(bands, C, 1)


class NoNorm(nn.Module):
    """Identity (padding frames zeroed)."""

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return zero_padding(x, lengths)

    def init_state(self) -> list[Tensor]:
        return []

    def streaming_forward(self, x: Tensor) -> tuple[Tensor]:
        return (x,)


def build_norm(kind: str, num_channels: int, frame_rate_hz: float, momentum: float, eps: float,
               rolling_window_s: float, rolling_warmup_s: float = 0.0, rolling_per_bin: bool = False,
               num_bins: int = 1) -> nn.Module:
    """The normalisation named by ``features.norm`` (``batch``, ``rolling`` or ``none``).

    ``rolling_window_s`` 0 makes the rolling statistics cumulative (every frame since the start);
    ``rolling_warmup_s``, ``rolling_per_bin``: see :class:`RollingNorm`; ``num_bins``: K (for ``per_bin``).
    """
    if kind == "batch":
        return MaskedBatchNorm(num_channels, momentum=momentum, eps=eps)
    if kind == "rolling":
        if rolling_window_s < 0 or rolling_warmup_s < 0:
            raise ValueError(f"features.rolling_window_s and features.rolling_warmup_s must be >= 0, got "
                             f"{rolling_window_s} and {rolling_warmup_s}")
        window = None if rolling_window_s == 0 else max(1, round(rolling_window_s * frame_rate_hz))
        return RollingNorm(num_channels, window, eps=eps, warmup_frames=round(rolling_warmup_s * frame_rate_hz),
                           per_bin=rolling_per_bin, num_bins=num_bins)
    if kind == "none":
        return NoNorm()
    raise ValueError(f"features.norm must be 'batch', 'rolling' or 'none', got {kind!r}")
