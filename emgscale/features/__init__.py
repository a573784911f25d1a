"""Features, normalisation and augmentation of raw EMG, as a module inside every model.

:class:`~emgscale.features.featurizer.Featurizer` turns raw EMG ``(B, T, 2, 16)`` into normalised log
features ``(B, T', 2, C, K)`` (see :mod:`emgscale.features.featurizer`); :mod:`~emgscale.features.config`
holds its settings, :mod:`~emgscale.features.spectral`, :mod:`~emgscale.features.norm` and
:mod:`~emgscale.features.augment` its steps.

Names load lazily: the settings (:class:`FeatureConfig`, :class:`AugmentConfig`) come without torch, so a
model config is checked before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AugmentConfig": "config", "FeatureConfig": "config", "REFERENCE_RATE_HZ": "config",
    "Featurizer": "featurizer", "frames_for_samples": "featurizer", "NUM_BANDS": "featurizer",
    "NUM_ELECTRODES": "featurizer", "AUGMENTATIONS": "augment", "spec_augment": "augment",
    "Decimator": "spectral", "SpectralFeatures": "spectral", "log_band_matrix": "spectral",
    "MaskedBatchNorm": "norm", "RollingNorm": "norm", "time_mask": "norm", "zero_padding": "norm",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"emgscale.features.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'emgscale.features' has no attribute {name!r}")
