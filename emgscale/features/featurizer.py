"""Features, normalisation and augmentation of raw EMG, as a module inside every model.

:class:`Featurizer` turns raw float32 EMG ``(B, T, 2, 16)`` at ``input_sample_rate_hz`` (zero-padded,
with ``lengths`` in samples) into normalised log features ``(B, T', 2, C, K)`` with frame lengths:

1. zero everything beyond each length (so a caller's padding value never matters), and multiply by
   ``input_gain`` (the signal-scale conversion, :mod:`emgscale.data.scale`; 1 = nothing);
2. training only: band rotation (+ electrode subset), inter-band temporal jitter, amplitude scaling;
3. anti-aliased decimation to ``sample_rate_hz`` (FIR low-pass + keep every n-th sample);
4. log spectrogram / log bands (float32, autocast off);
5. training only: channel masking (a dead electrode's features are the floor value, what its zeroed
   EMG gives), SpecAugment time/frequency masks (before normalisation, as the reference);
6. normalisation (masked BatchNorm, causal rolling, or none); padding frames are zero on output.

Rate scaling: ``n_fft`` and ``hop_samples`` are given at 2 kHz and scaled by ``sample_rate_hz / 2000``
(64/16 -> 32/8 at 1 kHz, 16/4 at 500 Hz, 8/2 at 250 Hz), so every rate gives 32 ms windows at 125 Hz
frames and the encoders see the same frame rate; only the number of bins changes (33, 17, 9, 5).
Where the scaled sizes are not whole samples they are rounded to the nearest (n_fft at least 2, hop at
least 1): 200 Hz gives 6/2 (30 ms windows, 100 Hz frames), so any device rate works.

The input is ``(B, T, num_bands, num_electrodes)`` (``features.num_bands`` / ``num_electrodes``: 2 x 16
for emg2qwerty, 1 x 8 for an 8-channel armband).

Two halves, for features computed once (:mod:`emgscale.loader.feature_cache`, ``data.feature_cache``):
:meth:`Featurizer.spectra` is steps 1, 3 and 4 for every electrode with no augmentation (what can be
cached), and :meth:`Featurizer.from_spectra` the rest in feature space: electrode selection and band
rotation (a roll of the electrode axis: exact), amplitude scaling (adding ``log10(gain**2)``: exact up
to the 1e-6 floor), channel masking (the floor value), SpecAugment and normalisation. Composed in eval
mode they equal :meth:`Featurizer.forward` bit for bit; in training mode they draw the same
augmentations from the same RNG state. Temporal jitter has no feature-space form. ``forward`` (the raw
path) computes what it always has, bit for bit. The augmentations and which form each has:
:mod:`emgscale.features.augment`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from emgscale.features.augment import augment, check_augment, select_electrodes
from emgscale.features.config import REFERENCE_RATE_HZ, AugmentConfig, FeatureConfig
from emgscale.features.norm import MaskedBatchNorm, RollingNorm, build_norm, zero_padding
from emgscale.features.spectral import Decimator, SpectralFeatures

NUM_BANDS = 2
NUM_ELECTRODES = 16


def _exact_int(value: float, what: str) -> int:
    if value < 1 or abs(value - round(value)) > 1e-9:
        raise ValueError(f"{what} must be a positive integer, got {value:g}")
    return int(round(value))


def _rounded_int(value: float, minimum: int) -> int:
    """``value`` rounded to the nearest whole number of samples, at least ``minimum``."""
    return max(minimum, int(round(value)))


class Featurizer(nn.Module):
    """Raw EMG -> normalised log features, with training augmentations (see the module docstring).

    Args:
        cfg: feature settings.
        augment: augmentation settings (used only in ``train()`` mode); None = no augmentation.

    Attributes:
        num_channels: electrodes per band kept (C).
        num_bins: features per electrode (K).
        decimation: input samples per model-rate sample.
        n_fft, hop_samples: STFT window and hop at the model rate.
        samples_per_frame: input samples per feature frame.
        frame_rate_hz: feature frames per second.
        span_samples: ``(left, right)``: feature frame ``t`` depends on input samples
            ``t * samples_per_frame - left .. t * samples_per_frame + right`` (left is None = unbounded).
    """

    def __init__(self, cfg: FeatureConfig, augment: AugmentConfig | None = None) -> None:
        super().__init__()
        self.cfg, self.aug = cfg, augment
        if augment is not None:
            check_augment(augment)
        self.decimation = _exact_int(cfg.input_sample_rate_hz / cfg.sample_rate_hz,
                                     f"features.input_sample_rate_hz / features.sample_rate_hz "
                                     f"({cfg.input_sample_rate_hz:g} / {cfg.sample_rate_hz:g})")
        scale = cfg.sample_rate_hz / REFERENCE_RATE_HZ if cfg.scale_with_rate else 1.0
        self.n_fft = _rounded_int(cfg.n_fft * scale, 2)
        self.hop_samples = _rounded_int(cfg.hop_samples * scale, 1)
        self.num_bands, self.num_electrodes = cfg.num_bands, cfg.num_electrodes
        if self.num_bands < 1 or self.num_electrodes < 1:
            raise ValueError(f"features.num_bands and features.num_electrodes must be >= 1, got "
                             f"{self.num_bands} and {self.num_electrodes}")
        if augment is not None and augment.temporal_jitter_samples > 0 and self.num_bands != 2:
            raise ValueError(f"augment.temporal_jitter_samples shifts two bands against each other; with "
                             f"features.num_bands={self.num_bands} set it to 0")
        if cfg.channels is not None:
            if not cfg.channels or len(set(cfg.channels)) != len(cfg.channels) or not all(
                    0 <= c < self.num_electrodes for c in cfg.channels):
                raise ValueError(f"features.channels must be distinct electrodes in 0..{self.num_electrodes - 1}, "
                                 f"got {cfg.channels}")
            self.register_buffer("channel_index", torch.tensor(cfg.channels, dtype=torch.long), persistent=False)
        else:
            self.channel_index = None
        self.num_channels = len(cfg.channels) if cfg.channels is not None else self.num_electrodes
        self.decimator = Decimator(self.decimation)
        self.spectral = SpectralFeatures(cfg.kind, self.n_fft, self.hop_samples, cfg.num_log_bands)
        self.num_bins = self.spectral.num_bins
        self.samples_per_frame = self.hop_samples * self.decimation
        self.frame_rate_hz = cfg.input_sample_rate_hz / self.samples_per_frame
        self.norm = build_norm(cfg.norm, self.num_bands * self.num_channels, self.frame_rate_hz, cfg.norm_momentum,
                               cfg.norm_eps, cfg.rolling_window_s, cfg.rolling_warmup_s, cfg.rolling_per_bin,
                               self.num_bins)
        h = self.decimator.half_taps
        left: int | None = h
        if isinstance(self.norm, RollingNorm):
            w = self.norm.window_frames
            left = None if w is None else h + (w - 1) * self.samples_per_frame
        self.span_samples = (left, (self.n_fft - 1) * self.decimation + h)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Feature frames for ``lengths`` input samples (without training jitter)."""
        return self.spectral.output_lengths(self.decimator.output_lengths(lengths))

    @property
    def min_input_samples(self) -> int:
        """Fewest input samples that give one feature frame."""
        return (self.n_fft - 1) * self.decimation + 1

    def spectra_settings(self) -> dict[str, Any]:
        """The resolved settings that decide :meth:`spectra` (what a feature cache is keyed by): not
        ``channels``, the norm or the augmentations, which act after it."""
        out: dict[str, Any] = {"kind": self.cfg.kind, "n_fft": self.n_fft, "hop_samples": self.hop_samples,
                               "decimation": self.decimation,
                               "input_sample_rate_hz": float(self.cfg.input_sample_rate_hz),
                               "num_bands": self.num_bands, "num_electrodes": self.num_electrodes}
        if self.cfg.kind == "log_bands":
            out["num_log_bands"] = int(self.cfg.num_log_bands)
        if self.input_gain != 1.0:
            out["input_gain"] = self.input_gain
        return out

    def _check_emg(self, emg: Tensor, lengths: Tensor) -> Tensor:
        """``lengths`` as long on ``emg``'s device, clamped to its length; ValueError for a bad shape."""
        if emg.dim() != 4 or emg.shape[2] != self.num_bands or emg.shape[3] != self.num_electrodes:
            raise ValueError(f"expected EMG of shape (B, T, {self.num_bands}, {self.num_electrodes}), "
                             f"got {tuple(emg.shape)}")
        if lengths.shape != emg.shape[:1]:
            raise ValueError(f"lengths must have shape ({emg.shape[0]},), got {tuple(lengths.shape)}")
        if emg.shape[1] < self.min_input_samples:
            raise ValueError(f"input of {emg.shape[1]} samples is shorter than one feature frame "
                             f"({self.min_input_samples} samples)")
        return lengths.to(device=emg.device, dtype=torch.long).clamp(max=emg.shape[1])

    @property
    def input_gain(self) -> float:
        """The factor the EMG is multiplied by before the features (``features.input_gain``; 1 when unset)."""
        return 1.0 if self.cfg.input_gain is None else float(self.cfg.input_gain)

    def scale_input(self, x: Tensor) -> Tensor:
        """``x`` times :attr:`input_gain` (``x`` itself when the gain is 1, so the reference's features are exact)."""
        return x if self.input_gain == 1.0 else x * self.input_gain

    def _spectrum(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Input gain, decimation and log spectral features: (B, T, 2, C) float32, zero-padded -> (B, T', 2, C, K)."""
        x, lengths = self.decimator(self.scale_input(x), lengths)
        return self.spectral(x, lengths)

    def forward(self, emg: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Features of a batch (the raw path).

        Args:
            emg: (B, T, 2, 16) raw EMG (any float dtype; computed in float32).
            lengths: (B,) valid samples per sequence.

        Returns:
            feats (B, T', 2, C, K) float32 (zero on padding frames) and frame_lengths (B,) long.
        """
        feats, frames = self._before_norm(emg, lengths)
        with torch.autocast(feats.device.type, enabled=False):
            return self.norm(feats, frames), frames

    @property
    def defers_norm(self) -> bool:
        """True when the norm is one affine map per channel (``features.norm: batch``), which
        :meth:`forward_deferred` hands to the next layer instead of applying it."""
        return isinstance(self.norm, MaskedBatchNorm)

    def forward_deferred(self, emg: Tensor, lengths: Tensor, spectra: bool = False
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`forward` (or :meth:`from_spectra`, with ``spectra``) up to the norm, which is returned as
        its affine map instead of being applied (:meth:`MaskedBatchNorm.scale_shift`; running statistics
        updated in training as by :meth:`forward`).

        ``forward(emg)`` equals ``feats * scale + shift`` on the valid frames. A first linear layer that takes
        ``scale`` and ``shift`` into its weights computes the same outputs without the gradient of its
        input (the features need none): one matmul of the three in its backward, ~10 % of a CNN+BiGRU-small
        step.

        Returns:
            feats (B, T', bands, C, K) float32, zero on padding frames; frame_lengths (B,); scale and shift
            (bands, C, 1).

        Raises:
            ValueError: the norm is not ``batch`` (:attr:`defers_norm`).
        """
        if not self.defers_norm:
            raise ValueError(f"features.norm={self.cfg.norm!r} is not one affine map per channel: nothing to defer")
        feats, frames = self._before_norm_spectra(emg, lengths) if spectra else self._before_norm(emg, lengths)
        with torch.autocast(feats.device.type, enabled=False):
            scale, shift, feats, _ = self.norm.scale_shift(feats, frames)
            return feats, frames, scale, shift

    def _before_norm(self, emg: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The raw path up to the norm: padding, electrode selection, the raw augmentations, decimation,
        log spectra and the augmentations of the log features (training: channel masks, SpecAugment)."""
        lengths = self._check_emg(emg, lengths)
        with torch.autocast(emg.device.type, enabled=False):
            x = zero_padding(emg.float(), lengths)
            aug = self.aug if self.training else None
            x = select_electrodes(x, self.channel_index, aug.band_rotation if aug else 0)
            if aug is not None:
                x, lengths = augment(x, lengths, aug, "raw")
            feats, frames = self._spectrum(x, lengths)
            if aug is not None:
                feats, frames = augment(feats, frames, aug, "after_raw")
        return feats, frames

    def spectra(self, emg: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The cacheable half: zero padding, decimation and log spectral features of every electrode,
        no augmentation (the same in train and eval mode).

        Args:
            emg: (B, T, bands, electrodes) raw EMG.
            lengths: (B,) valid samples.

        Returns:
            spectra (B, T', bands, electrodes, K) float32 and frame_lengths (B,) long.
        """
        lengths = self._check_emg(emg, lengths)
        with torch.autocast(emg.device.type, enabled=False):
            return self._spectrum(zero_padding(emg.float(), lengths), lengths)

    def from_spectra(self, spectra: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """The feature-space half: :meth:`spectra`'s output -> normalised features, as :meth:`forward`.

        Electrode selection and band rotation (a roll of the electrode axis: exact), then in training
        amplitude scaling (``+ log10(gain**2)``: exact up to the 1e-6 floor, see
        :func:`~emgscale.features.augment.amplitude_scale_log`) and channel masking (the floor value
        ``log10(1e-6)``: exact), SpecAugment, and normalisation. The random draws are those of
        :meth:`forward` without temporal jitter, in the same order.

        Args:
            spectra: (B, T', bands, electrodes, K) float32 log spectra, any values beyond ``frames``.
            frames: (B,) valid frames.

        Returns:
            feats (B, T', bands, C, K) float32 (zero on padding frames) and frame_lengths (B,) long.

        Raises:
            ValueError: a bad shape, or in training mode an augmentation that needs raw EMG
                (:meth:`~emgscale.features.config.AugmentConfig.needs_raw_emg`).
        """
        feats, frames = self._before_norm_spectra(spectra, frames)
        with torch.autocast(feats.device.type, enabled=False):
            return self.norm(feats, frames), frames

    def _before_norm_spectra(self, spectra: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`from_spectra` up to the norm."""
        want = (self.num_bands, self.num_electrodes, self.num_bins)
        if spectra.dim() != 5 or tuple(spectra.shape[2:]) != want:
            raise ValueError(f"expected spectra of shape (B, T', {', '.join(map(str, want))}), "
                             f"got {tuple(spectra.shape)}")
        if frames.shape != spectra.shape[:1]:
            raise ValueError(f"frame lengths must have shape ({spectra.shape[0]},), got {tuple(frames.shape)}")
        aug = self.aug if self.training else None
        frames = frames.to(device=spectra.device, dtype=torch.long).clamp(max=spectra.shape[1])
        with torch.autocast(spectra.device.type, enabled=False):
            x = select_electrodes(spectra.float(), self.channel_index, aug.band_rotation if aug else 0)
            if aug is not None:
                x, frames = augment(x, frames, aug, "spectra")
        return x, frames


def frames_for_samples(num_samples: int, cfg: FeatureConfig) -> int:
    """Feature frames of an input of ``num_samples`` samples under ``cfg`` (no training jitter)."""
    f = Featurizer(cfg)
    return int(f.output_lengths(torch.tensor([num_samples]))[0])
