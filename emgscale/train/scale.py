"""Choosing ``model.features.input_gain`` for a new run from its own training data (the rule: :mod:`emgscale.data.scale`).

:func:`resolve_input_gain` is called once by :func:`emgscale.train.launch`, before any worker starts, so
every rank, every resumed segment and every checkpoint of a run use the one number it prints and records:

* a gain given in the config is kept;
* a run that resumes keeps its own (a run made before the option existed trained at 1);
* a new run (fine-tunes included: their data may come in other units than the model's first data)
  measures up to :data:`CALIBRATION_WINDOWS` windows of its training part, as the model will see them
  (after ``data.view``), and takes :func:`~emgscale.data.scale.gain_for_scale` of their scale.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from emgscale.common import print0
from emgscale.config import ConfigError
from emgscale.data.scale import channel_scale, gain_for_scale
from emgscale.train.config import TrainConfig

#: Training windows read to measure a run's signal scale.
CALIBRATION_WINDOWS = 32


def measure_scale(cfg: TrainConfig, windows: int = CALIBRATION_WINDOWS) -> tuple[float, int]:
    """The :func:`~emgscale.data.scale.channel_scale` of the first ``windows`` windows of the training part.

    Read with the run's own loader and data settings (HDF5, shards or CSV; the device view applied), in
    a deterministic pass that touches no RNG, so the run's batches are what they would be without it.

    Returns:
        (scale, windows read).
    """
    from emgscale.loader import build_loader

    data = replace(cfg.data, feature_cache=None)
    loader = build_loader(data, "train", train=False, seed=0, rank=0, world_size=1, limit_samples=windows,
                          batch_size=min(windows, 8))
    pieces, n = [], 0
    for batch in loader:
        for x, length in zip(batch.emg, batch.emg_lengths):
            pieces.append(x[: int(length)].reshape(int(length), -1).numpy())
            n += 1
        if n >= windows:
            break
    return (channel_scale(np.concatenate(pieces)) if pieces else 0.0), n


def resolve_input_gain(cfg: TrainConfig, resuming: bool) -> TrainConfig:
    """``cfg`` with ``model.features.input_gain`` set (see the module docstring); prints one line when it measured.

    Args:
        cfg: the run's validated config.
        resuming: the run continues from a checkpoint of its own.

    Raises:
        ConfigError: the training windows are constant or not finite (no gain can be chosen).
    """
    feats = cfg.model.features
    if feats.input_gain is not None:
        return cfg
    if resuming:
        gain = 1.0
    else:
        scale, n = measure_scale(cfg)
        try:
            gain = gain_for_scale(scale)
        except ValueError as e:
            raise ConfigError(f"model.features.input_gain: {e}; measured on {n} training windows") from None
        how = "the front end's own scale" if gain == 1.0 else "a unit conversion to a microvolt-like scale"
        print0(f"[launch] EMG scale {scale:.3g} (median per-channel std over {n} training windows): "
               f"model.features.input_gain={gain:g} ({how})")
    return replace(cfg, model=replace(cfg.model, features=replace(feats, input_gain=gain)))
