"""Anti-aliased decimation and spectral features of (B, T, 2, C) EMG.

Everything here runs in float32 (autocast is switched off by the caller): the STFT and the log of
small powers are not safe in bfloat16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_FLOOR = 1e-6  # log10(power + 1e-6), as the reference


def floor_value() -> float:
    """The feature of zero power, ``log10(0 + 1e-6)`` (about -6), computed as :class:`SpectralFeatures` does
    (float32, the vectorised kernel), so a value set to it equals what a zeroed electrode gives."""
    return float(torch.log10(torch.zeros(64).add_(LOG_FLOOR))[0])


class Decimator(nn.Module):
    """Low-pass FIR filter and keep every ``factor``-th sample, along time of a (B, T, ...) tensor.

    The filter is the one ``scipy.signal.resample_poly(x, 1, factor)`` designs (``firwin`` with
    ``2 * 10 * factor + 1`` taps, cutoff at the new Nyquist, Kaiser window beta 5), applied with zero
    padding, so the output equals ``resample_poly``'s: sample ``i`` is centred on input sample
    ``i * factor`` and the length is ``ceil(T / factor)``.

    Args:
        factor: integer decimation factor (1 = identity).
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"decimation factor must be a positive integer, got {factor}")
        self.factor = int(factor)
        self.half_taps = 10 * self.factor if self.factor > 1 else 0
        if self.factor > 1:
            from scipy.signal import firwin

            taps = firwin(2 * self.half_taps + 1, 1.0 / self.factor, window=("kaiser", 5.0))
            self.register_buffer("taps", torch.tensor(taps, dtype=torch.float32).view(1, 1, -1), persistent=False)
        else:
            self.register_buffer("taps", torch.ones(1, 1, 1), persistent=False)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """``ceil(lengths / factor)``."""
        return torch.div(lengths + self.factor - 1, self.factor, rounding_mode="floor")

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Decimate.

        Args:
            x: (B, T, ...) float32, zero beyond each length.
            lengths: (B,) valid samples.

        Returns:
            (B, ceil(T / factor), ...) and the (B,) new lengths.
        """
        if self.factor == 1:
            return x, lengths
        return self.filter(x, self.half_taps), self.output_lengths(lengths)

    def filter(self, x: Tensor, pad: int) -> Tensor:
        """The filter and the decimation of (B, T, ...) ``x`` with ``pad`` zero samples on each side
        (``half_taps`` offline; 0 when streaming, where the samples before and after are in ``x``)."""
        B, T = x.shape[:2]
        rest = x.shape[2:]
        # (B, T, ...) -> (B * prod(rest), 1, T): every channel filtered alike.
        h = x.reshape(B, T, -1).transpose(1, 2).reshape(-1, 1, T)
        h = F.conv1d(F.pad(h, (pad, pad)), self.taps, stride=self.factor)
        t_out = h.shape[-1]
        return h.reshape(B, -1, t_out).transpose(1, 2).reshape(B, t_out, *rest).contiguous()


def log_band_matrix(num_bins: int, num_bands: int) -> Tensor:
    """(num_bins, num_bands) averaging matrix of log-spaced frequency bands over STFT bins.

    Band edges are log-spaced in bin index between bin 1 and the Nyquist bin; the DC bin joins the
    first band. Every band holds at least one bin.
    """
    if not 1 <= num_bands <= num_bins - 1:
        raise ValueError(f"num_log_bands must be between 1 and {num_bins - 1} for {num_bins} bins, got {num_bands}")
    edges = [0]
    geo = torch.logspace(0.0, math.log10(num_bins), num_bands + 1, dtype=torch.float64)
    for i in range(1, num_bands):
        edges.append(max(int(round(float(geo[i]))), edges[-1] + 1))
    edges.append(num_bins)
    if edges[-2] >= num_bins:
        raise ValueError(f"cannot split {num_bins} bins into {num_bands} log-spaced bands")
    m = torch.zeros(num_bins, num_bands)
    for b in range(num_bands):
        m[edges[b]:edges[b + 1], b] = 1.0 / (edges[b + 1] - edges[b])
    return m


class SpectralFeatures(nn.Module):
    """Log-power spectrogram (or log bands) of every electrode.

    Equal to ``torch.stft(n_fft, hop, Hann window, center=False)`` power divided by the window's energy
    (torchaudio's ``normalized=True``), then ``log10(power + 1e-6)``. It is computed as the real FFT of the
    framed signal times the scaled window, which reads the (B, T, 2, C) input in place and writes
    (B, T', 2, C, K) directly, without ``torch.stft``'s two transposes (one CPU thread, batch 16 x 5 s x 32
    electrodes, log included: 1.25x a matmul with the windowed DFT basis, ``benchmarks/bench_kernels.py``). Frame ``t`` covers samples
    ``[t * hop, t * hop + n_fft)``, so a sequence of ``n`` samples has ``(n - n_fft) // hop + 1`` frames.

    Args:
        kind: ``"log_spectrogram"`` or ``"log_bands"``.
        n_fft: STFT window in samples.
        hop_samples: STFT hop in samples.
        num_log_bands: bands per electrode for ``"log_bands"``.
    """

    def __init__(self, kind: str, n_fft: int, hop_samples: int, num_log_bands: int = 6) -> None:
        super().__init__()
        if kind not in ("log_spectrogram", "log_bands"):
            raise ValueError(f"features.kind must be 'log_spectrogram' or 'log_bands', got {kind!r}")
        if n_fft < 2 or hop_samples < 1:
            raise ValueError(f"need n_fft >= 2 and hop_samples >= 1, got n_fft={n_fft}, hop_samples={hop_samples}")
        self.kind, self.n_fft, self.hop_samples = kind, int(n_fft), int(hop_samples)
        n_bins = self.n_fft // 2 + 1
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)
        # Scaled so that |rfft|^2 is the normalised power.
        self.register_buffer("window", (window / window.pow(2).sum().sqrt()).float(), persistent=False)
        if kind == "log_bands":
            self.register_buffer("bands", log_band_matrix(n_bins, num_log_bands), persistent=False)
            self.num_bins = num_log_bands
        else:
            self.bands = None
            self.num_bins = n_bins

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """``(n - n_fft) // hop + 1`` frames (0 when ``n < n_fft``)."""
        frames = torch.div(lengths - self.n_fft, self.hop_samples, rounding_mode="floor") + 1
        return frames.clamp(min=0)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Features of each electrode.

        Args:
            x: (B, T, 2, C) float32 EMG, zero beyond each length.
            lengths: (B,) valid samples.

        Returns:
            feats (B, T', 2, C, K) float32 with ``T' = (T - n_fft) // hop + 1`` and ``K`` bins (or bands),
            and frame_lengths (B,).
        """
        if x.shape[1] < self.n_fft:
            raise ValueError(f"input of {x.shape[1]} samples is shorter than one STFT window ({self.n_fft} samples)")
        frames = x.unfold(1, self.n_fft, self.hop_samples) * self.window  # (B, T', 2, C, n_fft)
        z = torch.view_as_real(torch.fft.rfft(frames, dim=-1))  # (B, T', 2, C, K, 2)
        re, im = z[..., 0], z[..., 1]
        power = torch.addcmul(re * re, im, im)
        if self.bands is not None:
            power = power @ self.bands
        return torch.log10(power.add_(LOG_FLOOR)), self.output_lengths(lengths)
