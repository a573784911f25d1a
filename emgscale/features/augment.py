"""Training augmentations of raw (B, T, 2, 16) EMG and of (B, T, 2, C, K) log features: their one home.

All randomness is drawn, vectorised over the batch, from torch's global RNG on the input's device.
The :class:`~emgscale.features.Featurizer` applies them in training mode only: band rotation with the
electrode selection (:func:`select_electrodes`: a roll of the electrode axis, one form for raw EMG and
per-electrode spectra alike), then :data:`AUGMENTATIONS` in order, each in one form where the feature
space allows it:

=========================  ==================  ===============================================
augmentation               raw EMG path        precomputed spectra (``data.feature_cache``)
=========================  ==================  ===============================================
inter-band temporal jitter raw form            none: it moves samples by less than a frame
amplitude scaling          raw form            log form (``+ log10(gain**2)``, same draws)
channel masking            log form (one form, after the spectra: a dead electrode's spectra
(and electrode masks)      are the floor value, what its zeroed EMG gives)
SpecAugment                on the log features (one form)
=========================  ==================  ===============================================

Amplitude scaling keeps two forms because the log form is exact only away from the 1e-6 power floor,
and the raw path stays what it was bit for bit. An augmentation without a spectra form has its
:class:`~emgscale.features.config.AugmentConfig` field marked ``metadata={"raw_emg": True}``, from
which ``data.feature_cache`` refuses it (:meth:`emgscale.loader.base.DataConfig.check`).

A new augmentation: a field of :class:`~emgscale.features.config.AugmentConfig` (0 = off) and, here,
its function and one :data:`AUGMENTATIONS` entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from emgscale.features.config import AugmentConfig
from emgscale.features.norm import zero_padding
from emgscale.features.spectral import floor_value


def select_electrodes(emg: Tensor, channels: Tensor | None, rotation: int) -> Tensor:
    """Rotate each band by a random offset (when ``rotation`` > 0), then keep ``channels``.

    A rotation by ``r`` is ``torch.roll(band, r, dim=electrode)`` (the reference's ``RandomBandRotation``),
    drawn from ``-rotation..rotation`` independently per window and band. It acts on dimension 3 only,
    so it applies alike to raw EMG and to per-electrode features (any trailing dimensions).

    Args:
        emg: (B, T, 2, E) raw EMG, or (B, T, 2, E, K) per-electrode features.
        channels: (C,) long electrode indices to keep, or None for all.
        rotation: largest offset in electrodes; 0 = no rotation.

    Returns:
        (B, T, 2, C) (or (B, T, 2, C, K)).
    """
    B, T, bands, E = emg.shape[:4]
    rest = emg.shape[4:]
    if rotation <= 0:
        return emg if channels is None else emg.index_select(3, channels)
    idx = channels if channels is not None else torch.arange(E, device=emg.device)
    offsets = torch.randint(-rotation, rotation + 1, (B, bands), device=emg.device)
    # roll(x, r)[e] = x[(e - r) % E]
    src = (idx.view(1, 1, -1) - offsets.unsqueeze(-1)) % E  # (B, 2, C)
    index = src.view(B, 1, bands, -1, *([1] * len(rest))).expand(B, T, bands, src.shape[-1], *rest)
    return emg.gather(3, index)


def temporal_jitter(emg: Tensor, lengths: Tensor, max_offset: int) -> tuple[Tensor, Tensor]:
    """Misalign the two bands by a random offset and trim the sequence by it (``TemporalAlignmentJitter``).

    For an offset ``d`` drawn from ``-max_offset..max_offset`` per window: ``d > 0`` drops the first ``d``
    samples of band 0 and the last ``d`` of band 1; ``d < 0`` the reverse. The length shrinks by ``|d|``
    (``|d|`` is capped at half the length).

    Args:
        emg: (B, T, 2, C).
        lengths: (B,) valid samples.
        max_offset: largest shift in samples.

    Returns:
        (B, T, 2, C) jittered EMG (zero beyond the new lengths) and the (B,) new lengths.
    """
    B, T, bands, C = emg.shape
    if bands != 2:
        raise ValueError(f"temporal jitter needs 2 bands, got {bands}")
    d = torch.randint(-max_offset, max_offset + 1, (B,), device=emg.device)
    d = torch.maximum(torch.minimum(d, lengths // 2), -(lengths // 2))
    shift = torch.stack([d.clamp(min=0), (-d).clamp(min=0)], -1)  # (B, 2): first sample kept per band
    t = torch.arange(T, device=emg.device).view(1, T, 1) + shift.view(B, 1, 2)
    out = emg.gather(1, t.clamp(max=T - 1).unsqueeze(-1).expand(B, T, bands, C))
    new_lengths = lengths - d.abs()
    return zero_padding(out, new_lengths), new_lengths


def _band_gains(batch: int, bands: int, scale: float, device: torch.device) -> Tensor:
    """(B, 1, bands, 1) gains drawn log-uniformly from ``[1/(1+scale), 1+scale]``, one per band and window."""
    log_max = math.log1p(scale)
    return torch.exp((torch.rand(batch, 1, bands, 1, device=device) * 2 - 1) * log_max)


def amplitude_scale(emg: Tensor, scale: float) -> Tensor:
    """Multiply each band of each window by a gain drawn log-uniformly from ``[1/(1+scale), 1+scale]``."""
    B, _, bands, _ = emg.shape
    gain = _band_gains(B, bands, scale, emg.device)
    return emg * gain.to(emg.dtype)


def amplitude_scale_log(feats: Tensor, scale: float) -> Tensor:
    """:func:`amplitude_scale` on (B, T, 2, C, K) log10 power features: add ``log10(gain**2)``.

    Same draws as the raw form. ``log10(P + 1e-6) + log10(g**2) = log10(g**2 P + g**2 1e-6)`` where the
    raw path gives ``log10(g**2 P + 1e-6)``: exact up to the 1e-6 floor (the two differ by at most
    ``|log10(g**2)|``, and only where the power is near the floor; at EMG power >> 1e-6, by nothing).
    """
    B, _, bands = feats.shape[:3]
    gain = _band_gains(B, bands, scale, feats.device)
    return feats + torch.log10(gain * gain).to(feats.dtype).unsqueeze(-1)


def channel_mask(feats: Tensor, prob: float, floor: float | None = None, masks: int = 0, max_width: int = 0) -> Tensor:
    """Dead electrodes on (B, T, 2, C, K) log features: their features become ``floor`` (default
    :func:`floor_value`, ``log10(0 + 1e-6)``), exactly what the spectrum of a zeroed EMG gives. One form for
    both paths.

    Each electrode of each band of each window is dropped with probability ``prob``; and, per band and
    window, ``randint(0, masks + 1)`` runs of contiguous electrodes (SpecAugment's draw along the electrode
    axis: width ``floor(U * max_width)``, start inside the band) are dropped too.

    Args:
        feats: (B, T, bands, C, K) log features.
        prob: drop probability per electrode (0 = none).
        floor: the value of a dead electrode.
        masks: most electrode runs per band and window (0 = none).
        max_width: each run is narrower than this many electrodes.

    Returns:
        (B, T, bands, C, K).
    """
    B, _, bands, C = feats.shape[:4]
    dead = torch.rand(B, 1, bands, C, device=feats.device) < prob
    if masks > 0 and max_width > 0:
        n = torch.randint(0, masks + 1, (B,), device=feats.device)
        runs = _axis_masks(n, masks, max_width, torch.full((B,), C, device=feats.device), (B, bands), C,
                           feats.device)  # (B, bands, C)
        dead = dead | runs.unsqueeze(1)
    return feats.masked_fill(dead.unsqueeze(-1), floor_value() if floor is None else floor)


def _axis_masks(count: Tensor, max_masks: int, max_width: int, size: Tensor, shape: tuple[int, ...],
                axis_len: int, device: torch.device) -> Tensor:
    """Union of up to ``max_masks`` intervals per window along an axis, torchaudio-style draws.

    Returns a bool tensor ``(B, *shape[1:], axis_len)``, True where masked. ``count`` (B,) says how many
    of the masks are active per window; ``size`` (B,) is the valid extent of the axis per window.
    """
    B = count.shape[0]
    pos = torch.arange(axis_len, device=device)
    size = size.view(B, *([1] * (len(shape) - 1))).to(torch.float32)
    masked = torch.zeros(*shape, axis_len, dtype=torch.bool, device=device)
    for m in range(max_masks):
        width = torch.rand(shape, device=device) * max_width
        start = (torch.rand(shape, device=device) * (size - width).clamp(min=0)).long()
        end = start + width.long()
        active = (count > m).view(B, *([1] * (len(shape) - 1)))
        masked |= active.unsqueeze(-1) & (pos >= start.unsqueeze(-1)) & (pos < end.unsqueeze(-1))
    return masked


def spec_augment(x: Tensor, lengths: Tensor, cfg: AugmentConfig) -> Tensor:
    """SpecAugment time and frequency masks on log features (the reference's ``SpecAugment``).

    Per window, ``randint(0, time_masks + 1)`` time masks of width ``floor(U * time_mask_frames)`` inside
    the valid frames, and ``randint(0, freq_masks + 1)`` frequency masks of width
    ``floor(U * freq_mask_bins)``, drawn per band and electrode when ``iid_masks``; masked values are
    set to ``mask_value``.

    Args:
        x: (B, T, 2, C, K) log features.
        lengths: (B,) valid frames.
        cfg: the augmentation config.

    Returns:
        (B, T, 2, C, K).
    """
    B, T, bands, C, K = x.shape
    shape = (B, bands, C) if cfg.iid_masks else (B, 1, 1)
    if cfg.time_masks > 0 and cfg.time_mask_frames > 0:
        n = torch.randint(0, cfg.time_masks + 1, (B,), device=x.device)
        mt = _axis_masks(n, cfg.time_masks, cfg.time_mask_frames, lengths, shape, T, x.device)  # (B, 2|1, C|1, T)
        x = x.masked_fill(mt.permute(0, 3, 1, 2).unsqueeze(-1), cfg.mask_value)
    if cfg.freq_masks > 0 and cfg.freq_mask_bins > 0:
        n = torch.randint(0, cfg.freq_masks + 1, (B,), device=x.device)
        size = torch.full((B,), K, device=x.device)
        mf = _axis_masks(n, cfg.freq_masks, cfg.freq_mask_bins, size, shape, K, x.device)  # (B, 2|1, C|1, K)
        x = x.masked_fill(mf.unsqueeze(1), cfg.mask_value)
    return x


#: ``form(x, lengths, cfg) -> (x, lengths)``: raw EMG (B, T, bands, C) with valid samples, or log spectra
#: (B, T', bands, C, K) with valid frames.
Form = Callable[[Tensor, Tensor, AugmentConfig], "tuple[Tensor, Tensor]"]


@dataclass(frozen=True)
class Augmentation:
    """A training augmentation (after band rotation), in the forms it has.

    Attributes:
        name: what it is called in messages: its :class:`~emgscale.features.config.AugmentConfig` field.
        on: whether ``cfg`` switches it on.
        raw: its form on raw EMG, before the spectra; None when it acts on the spectra in both paths.
        spectra: its form on log spectra, drawing the same random numbers as ``raw``; None when the
            feature space has none (its field is then marked ``metadata={"raw_emg": True}``).
    """

    name: str
    on: Callable[[AugmentConfig], bool]
    raw: Form | None = None
    spectra: Form | None = None


#: Every augmentation after band rotation, in the order they draw. On raw EMG the featurizer applies
#: the ``raw`` forms before the spectra and the others after them; on precomputed spectra every
#: ``spectra`` form, in order. (Entries with a ``raw`` form come first, so both orders are this one.)
AUGMENTATIONS: tuple[Augmentation, ...] = (
    Augmentation("temporal_jitter_samples", lambda c: c.temporal_jitter_samples > 0,
                 raw=lambda x, n, c: temporal_jitter(x, n, c.temporal_jitter_samples)),
    Augmentation("amplitude_scale", lambda c: c.amplitude_scale > 0,
                 raw=lambda x, n, c: (amplitude_scale(x, c.amplitude_scale), n),
                 spectra=lambda x, n, c: (amplitude_scale_log(x, c.amplitude_scale), n)),
    Augmentation("channel_mask_prob", lambda c: c.channel_mask_prob > 0 or c.electrode_masks > 0,
                 spectra=lambda x, n, c: (channel_mask(x, c.channel_mask_prob, masks=c.electrode_masks,
                                                       max_width=c.electrode_mask_width), n)),
    Augmentation("spec_augment", lambda c: True, spectra=lambda x, n, c: (spec_augment(x, n, c), n)),
)


def augment(x: Tensor, lengths: Tensor, cfg: AugmentConfig, stage: str) -> tuple[Tensor, Tensor]:
    """Every augmentation of ``stage`` that ``cfg`` switches on, in :data:`AUGMENTATIONS` order.

    Args:
        x: (B, T, bands, C) raw EMG for ``stage="raw"``, else (B, T', bands, C, K) log spectra.
        lengths: (B,) valid samples (valid frames for the spectra stages).
        cfg: the augmentation config.
        stage: ``"raw"`` (the raw path, before the spectra: the ``raw`` forms), ``"after_raw"`` (the
            raw path, after the spectra: the augmentations without a ``raw`` form) or ``"spectra"``
            (precomputed spectra: every ``spectra`` form).

    Returns:
        The augmented ``x`` and its (B,) lengths (temporal jitter trims samples).

    Raises:
        ValueError: for ``stage="spectra"``, an augmentation switched on that needs raw EMG.
    """
    for aug in AUGMENTATIONS:
        if not aug.on(cfg):
            continue
        if stage == "raw":
            form = aug.raw
        elif stage == "after_raw":
            form = aug.spectra if aug.raw is None else None
        elif aug.spectra is None:
            raise ValueError(f"augment.{aug.name} needs raw EMG: set it to 0 or unset data.feature_cache")
        else:
            form = aug.spectra
        if form is not None:
            x, lengths = form(x, lengths, cfg)
    return x, lengths


def check_augment(cfg: AugmentConfig) -> None:
    """Raise ValueError for a negative or out-of-range augmentation setting."""
    for name in ("band_rotation", "temporal_jitter_samples", "electrode_masks", "electrode_mask_width", "time_masks",
                 "time_mask_frames", "freq_masks", "freq_mask_bins"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"augment.{name} must be >= 0, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.channel_mask_prob < 1.0:
        raise ValueError(f"augment.channel_mask_prob must be in [0, 1), got {cfg.channel_mask_prob}")
    if cfg.amplitude_scale < 0:
        raise ValueError(f"augment.amplitude_scale must be >= 0, got {cfg.amplitude_scale}")
