"""The input pipeline: batches for training and evaluation, from shards or straight from HDF5 sessions.

``build_loader(cfg, part, train=..., seed=..., epoch=..., rank=..., world_size=...)`` returns a
:class:`Loader` (an iterable of :class:`~emgscale.data.windows.Batch`, with ``len`` when known),
whichever the source:

* ``cfg.shards`` set: WebDataset shards written by ``python -m emgscale.shard`` (a local folder with
  ``manifest.json``, a URL prefix such as ``pipe:aws s3 cp s3://bucket/shards/{name} -`` or
  ``https://host/shards``, or a brace pattern of ``.tar`` URLs without a manifest). Training is an
  endless resampled stream cut into epochs; evaluation reads every sample exactly once over all
  ranks and workers (:mod:`emgscale.loader.shards`, :mod:`emgscale.loader.shard_pipeline`).
* otherwise ``cfg.data_root`` + ``cfg.split``: windows read at random from the HDF5 files
  (:mod:`emgscale.loader.hdf5`), as the reference does.
* ``cfg.format: csv``: windows of CSV/TSV recordings with a label per row (:mod:`emgscale.loader.csv`),
  batches with ``sample_labels``.

``cfg.view`` (when set) turns every batch into what a smaller device would record: one band, some
electrodes, a lower rate, random ring rotations in training (:mod:`emgscale.data.device`).

``cfg.feature_cache`` (when set, with the model's ``features`` given) makes windowed batches carry
precomputed spectra (``Batch.features``, and ``Batch.emg`` None) from :mod:`emgscale.loader.feature_cache`
instead of raw EMG. Which settings work together is one rule, :meth:`DataConfig.check`.

Both give the same samples (one :class:`~emgscale.data.windows.WindowSpec` rule for windows, jitter
and labels) and honour the same subsets: ``users``, ``sessions`` and ``max_minutes_per_user`` (the
first N minutes of each user's sessions in recording order, as if the recordings stopped there — for
few-shot curves).

Layout: :mod:`~emgscale.loader.base` (the torch-free config and what every source shares),
:mod:`~emgscale.loader.build` (the dispatcher), one module per source, the shard pipelines
(:mod:`~emgscale.loader.shard_pipeline`) and the feature cache (:mod:`~emgscale.loader.feature_cache`).
This package is the only reader of sessions and shards for training and evaluation; :mod:`emgscale.shard`
writes shards. Names are imported lazily, so ``from emgscale.loader import DataConfig`` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from emgscale.data.errors import DataError

_EXPORTS = {
    "DataConfig": "base", "Loader": "base", "Selection": "base", "minutes_budget": "base", "window_spec": "base",
    "build_loader": "build",
}
__all__ = sorted([*_EXPORTS, "DataError"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"emgscale.loader.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'emgscale.loader' has no attribute {name!r}")
