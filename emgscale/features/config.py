"""Configs of the feature pipeline (:class:`FeatureConfig`) and of the training augmentations (:class:`AugmentConfig`).

Both are part of the model config (``model.features`` / ``model.augment``): features, normalisation
and augmentation run inside the model, so a checkpoint carries everything needed to turn raw EMG
into log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

#: Sampling rate at which :attr:`FeatureConfig.n_fft` and :attr:`FeatureConfig.hop_samples` are counted.
REFERENCE_RATE_HZ = 2000.0


@dataclass
class FeatureConfig:
    """Spectral features and their normalisation.

    Attributes:
        kind: ``"log_spectrogram"`` (the paper: ``log10(power + 1e-6)`` of a Hann-windowed STFT,
            normalised as torchaudio's ``normalized=True``, ``n_fft // 2 + 1`` bins per electrode) or
            ``"log_bands"`` (``num_log_bands`` log-spaced bands per electrode: mean power of the STFT
            bins in each band, then ``log10(. + 1e-6)``).
        n_fft: STFT window, in samples at 2 kHz (64 = 32 ms). With ``scale_with_rate`` it is scaled to
            ``sample_rate_hz`` (16 at 500 Hz), so the window keeps its duration.
        hop_samples: STFT hop, in samples at 2 kHz (16 -> 125 Hz frames); scaled like ``n_fft``, so the
            frame rate stays 125 Hz at every ``sample_rate_hz``.
        scale_with_rate: scale ``n_fft`` / ``hop_samples`` by ``sample_rate_hz / 2000``; when False they
            are taken as samples at ``sample_rate_hz``.
        num_log_bands: bands per electrode for ``kind="log_bands"``.
        sample_rate_hz: rate the model works at. Below ``input_sample_rate_hz`` the input is low-pass
            filtered and decimated inside the model (the ratio must be an integer).
        input_sample_rate_hz: rate of the EMG handed to the model (2000 for emg2qwerty).
        num_bands: bands (armbands) in the input: 2 for emg2qwerty, 1 for a single 8-channel armband.
        num_electrodes: electrodes per band in the input (16 for emg2qwerty, 8 for a Myo-like band).
        channels: electrodes (0-15) kept in each band, e.g. ``[0, 4, 8, 12]``; None keeps all 16.
        norm: ``"batch"`` (the reference's per-channel BatchNorm over the 2 x 16 electrode channels,
            statistics masked to valid frames), ``"rolling"`` (causal running mean/std per channel over
            the last ``rolling_window_s``; streaming-friendly) or ``"none"``.
        norm_momentum: running-statistics momentum of ``"batch"`` (as ``nn.BatchNorm2d``).
        norm_eps: variance floor of both norms.
        rolling_window_s: window of ``"rolling"`` statistics, in seconds; 0 = cumulative (every frame since
            the start of the sequence, SplashNet's Rolling Time Normalization).
        rolling_warmup_s: ``"rolling"`` only: the first this many seconds of a sequence are normalised by the
            statistics of all of them (SplashNet: 1 s), a look-ahead at the start that does not stream;
            0 = the frames seen so far (causal, streams).
        rolling_per_bin: ``"rolling"`` statistics per (channel, frequency bin), as SplashNet, instead of
            pooled over the bins of a channel.
        input_gain: the EMG is multiplied by this before the features, so that its scale is the
            microvolt-like one the ``log10(power + 1e-6)`` front end is built for
            (:mod:`emgscale.data.scale`). None (the default) means "not chosen": the model uses 1 (the
            reference's front end, exactly), and a new training run sets it at launch from its training
            data — 1 for microvolt-like values or ADC counts, 1e6 for volts, 1e3 for millivolts — and
            records the number in its config and checkpoints.
    """

    kind: str = "log_spectrogram"
    n_fft: int = 64
    hop_samples: int = 16
    scale_with_rate: bool = True
    num_log_bands: int = 6
    sample_rate_hz: float = 2000.0
    input_sample_rate_hz: float = 2000.0
    num_bands: int = 2
    num_electrodes: int = 16
    channels: list[int] | None = None
    norm: str = "batch"
    norm_momentum: float = 0.1
    norm_eps: float = 1e-5
    rolling_window_s: float = 10.0
    rolling_warmup_s: float = 0.0
    rolling_per_bin: bool = False
    input_gain: float | None = None


@dataclass
class AugmentConfig:
    """Training-time augmentations, applied inside the model's forward only in ``model.train()``.

    Randomness comes from torch's global RNG of the input's device, so restoring the RNG state from a
    checkpoint makes a resumed run draw the same augmentations.

    Raw-signal augmentations (before the features):

    Attributes:
        band_rotation: rotate each band by up to +/- this many electrodes, independently per band and
            window (reference ``RandomBandRotation``: 1). 0 disables.
        temporal_jitter_samples: shift the bands against each other by up to this many samples,
            trimming the sequence by the shift (reference ``TemporalAlignmentJitter``: 120). 0 disables.
        amplitude_scale: multiply each band of each window by a gain drawn log-uniformly from
            ``[1 / (1 + a), 1 + a]`` (0.25 -> gains 0.8..1.25). 0 disables.
        channel_mask_prob: zero each electrode of each band of each window with this probability
            (a dead electrode). 0 disables.
        electrode_masks: per band and window, up to this many runs of contiguous electrodes are dead
            (the count drawn from 0..electrode_masks, as SpecAugment's). 0 disables.
        electrode_mask_width: each run is narrower than this many electrodes (0 disables).

    Spectral augmentations (SpecAugment on the log features, before normalisation, as the reference):

    Attributes:
        time_masks: up to this many time masks per window (the count is drawn from 0..time_masks).
        time_mask_frames: each time mask is shorter than this many frames.
        freq_masks: up to this many frequency masks per window.
        freq_mask_bins: each frequency mask is narrower than this many bins.
        iid_masks: draw masks independently per band and electrode (torchaudio ``iid_masks=True``, as
            the reference); False masks all electrodes alike.
        mask_value: value written into masked features (0, as the reference).
    """

    band_rotation: int = 1
    #: ``raw_emg``: no form on precomputed spectra (``data.feature_cache`` refuses it when on).
    temporal_jitter_samples: int = field(default=120, metadata={"raw_emg": True})
    amplitude_scale: float = 0.0
    channel_mask_prob: float = 0.0
    electrode_masks: int = 0
    electrode_mask_width: int = 0
    time_masks: int = 3
    time_mask_frames: int = 25
    freq_masks: int = 2
    freq_mask_bins: int = 4
    iid_masks: bool = True
    mask_value: float = 0.0

    def needs_raw_emg(self) -> list[str]:
        """The augmentations switched on here that have no form on precomputed spectra (their fields are
        marked ``metadata={"raw_emg": True}``; :data:`emgscale.features.augment.SIGNAL_AUGMENTATIONS`
        has them without a ``spectra`` form)."""
        return [f.name for f in fields(self) if f.metadata.get("raw_emg") and getattr(self, f.name)]
