"""emg2qwerty data seen through a smaller device: one band, fewer electrodes, a lower rate.

Pre-training for an 8-channel 200 Hz armband on emg2qwerty-format data (2 bands x 16 electrodes at
2 kHz) takes the right band (band 1), every other electrode (8 of 16, evenly around the forearm like
the armband's), and resamples to 200 Hz with the anti-aliased resampler (:func:`resample`,
``scipy.signal.resample_poly``: for integer factors the same filter and output as the model's
:class:`~emgscale.features.Decimator`). During training the 16-electrode ring can be rotated by a
random offset before the electrodes are picked (``rotation``), so the model sees both the even and
the odd electrodes and shifted placements, as a band put on again would give.

:class:`DeviceView` is the ``data.view`` section of the training config; :func:`apply_view` applies it
to a :class:`~emgscale.data.windows.Batch` (the loaders do, after collation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # DeviceView is part of the data config, which loads without torch
    from emgscale.data.windows import Batch


def resample(x: np.ndarray, from_hz: float, to_hz: float, axis: int = 0) -> np.ndarray:
    """Anti-aliased resampling of ``x`` along ``axis`` from ``from_hz`` to ``to_hz`` (any rational ratio).

    ``scipy.signal.resample_poly`` with the ratio reduced to ``up / down`` (denominator at most 1000):
    output sample ``i`` is centred on input time ``i / to_hz`` and there are ``ceil(n * up / down)`` of
    them. Returns float32.
    """
    from scipy.signal import resample_poly

    if not (from_hz > 0 and to_hz > 0):
        raise ValueError(f"sampling rates must be positive, got {from_hz} and {to_hz}")
    ratio = Fraction(to_hz / from_hz).limit_denominator(1000)
    if ratio == 1:
        return np.asarray(x, dtype=np.float32)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=axis).astype(np.float32)


def resampled_length(n: int | np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """Samples :func:`resample` makes of ``n``: ``ceil(n * up / down)``."""
    ratio = Fraction(to_hz / from_hz).limit_denominator(1000)
    return -(-np.asarray(n) * ratio.numerator // ratio.denominator)


@dataclass
class DeviceView:
    """What a smaller device would have recorded (the ``data.view`` section; all unset = the data as is).

    Attributes:
        band: keep only this band (1 = the right wrist of emg2qwerty); None keeps all.
        electrodes: electrodes kept of each kept band (``[0, 2, ..., 14]``: every other); None keeps all.
        sample_rate_hz: resample to this rate (anti-aliased); None keeps the input rate.
        input_sample_rate_hz: the rate of the data read (2000 for emg2qwerty).
        rotation: training only: rotate each band's electrode ring by a random offset in
            ``-rotation..rotation`` (per sample) before picking ``electrodes``; 0 = off.
    """

    band: int | None = None
    electrodes: list[int] | None = None
    sample_rate_hz: float | None = None
    input_sample_rate_hz: float = 2000.0
    rotation: int = 0

    @property
    def active(self) -> bool:
        return self.band is not None or self.electrodes is not None or self.sample_rate_hz is not None

    def for_training(self, train: bool) -> "DeviceView":
        return self if train else replace(self, rotation=0)


def every_other(num_electrodes: int = 16, start: int = 0) -> list[int]:
    """``[start, start + 2, ...]``: half of a ring of ``num_electrodes``, evenly spaced."""
    return list(range(start, num_electrodes, 2))


def apply_view(batch: Batch, view: DeviceView, rng: np.random.Generator | None = None) -> Batch:
    """``batch`` (``emg`` (B, T, bands, E)) as the device of ``view`` would record it.

    Args:
        batch: a collated batch (zero beyond each length).
        view: the device (``rotation`` > 0 draws one ring offset per sample and band from ``rng``).
        rng: random source of the rotations (required when ``view.rotation`` > 0).

    Returns:
        A batch with ``emg`` (B, T', bands', E') float32, zero beyond the new ``emg_lengths``
        (``ceil(L * rate / input_rate)``), the same labels; ``sample_labels``, if any, picked at the
        new sample times.
    """
    import torch

    from emgscale.data.windows import Batch

    if not view.active:
        return batch
    if batch.emg is None:
        raise ValueError("apply_view needs raw EMG; this batch carries precomputed spectra only")
    x = batch.emg
    if x.dim() != 4:
        raise ValueError(f"expected EMG (B, T, bands, electrodes), got shape {tuple(x.shape)}")
    B, T, bands, E = x.shape
    if view.band is not None:
        if not 0 <= view.band < bands:
            raise ValueError(f"data.view.band {view.band} is not one of the {bands} bands")
        x = x[:, :, view.band:view.band + 1]
    idx = torch.arange(E) if view.electrodes is None else torch.tensor(view.electrodes, dtype=torch.long)
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= E:
        raise ValueError(f"data.view.electrodes must be electrodes in 0..{E - 1}, got {view.electrodes}")
    if view.rotation > 0:
        if rng is None:
            raise ValueError("apply_view: rotation needs a random generator")
        offsets = torch.from_numpy(rng.integers(-view.rotation, view.rotation + 1, size=(B, x.shape[2])))
        src = (idx.view(1, 1, -1) - offsets.unsqueeze(-1)) % E  # roll(ring, r)[e] = ring[(e - r) % E]
        x = x.gather(3, src.unsqueeze(1).expand(B, T, x.shape[2], len(idx)))
    elif view.electrodes is not None:
        x = x.index_select(3, idx)
    lengths, sample_labels = batch.emg_lengths, batch.sample_labels
    if view.sample_rate_hz is not None and view.sample_rate_hz != view.input_sample_rate_hz:
        y = resample(x.numpy(), view.input_sample_rate_hz, view.sample_rate_hz, axis=1)
        lengths = torch.from_numpy(resampled_length(batch.emg_lengths.numpy(), view.input_sample_rate_hz,
                                                    view.sample_rate_hz)).long()
        keep = torch.arange(y.shape[1]).view(1, -1) < lengths.view(-1, 1)
        x = torch.from_numpy(y) * keep.view(B, -1, 1, 1)
        if sample_labels is not None:
            at = (torch.arange(y.shape[1]) * view.input_sample_rate_hz / view.sample_rate_hz).round().long()
            sample_labels = sample_labels[:, at.clamp(max=T - 1)].masked_fill(~keep, -1)
    return Batch(x.contiguous().float(), lengths, batch.labels, batch.label_lengths, batch.keys, batch.users,
                 sample_labels, batch.label_times)  # press times are in seconds: unchanged by resampling
