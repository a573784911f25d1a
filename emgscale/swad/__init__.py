"""Weight averaging for generalisation to unseen users: SWAD (Cha et al., 2021) and plain SWA.

SWAD averages the weights of *every iteration* (dense averaging) inside a window that validation loss
selects. Between two validations the iterations form a *segment*; rank 0 keeps one float64 running sum
of the open segment, and writes the segment's mean once, at its validation, to ``<out_dir>/swad/``
with an index entry (step range, count, validation loss). The loss-valley rule
(:mod:`emgscale.swad.rule`: ``n_converge``, ``n_tolerance``, ``tolerance_ratio``) runs on the index;
the average is the count-weighted mean of the chosen segments' files, built at the end of training
(or on demand) and given fresh BatchNorm statistics over ``bn_batches`` training batches.
``mode="swa"`` averages every iteration in ``[swa_start_step, swa_end_step)`` instead.

Memory: one float64 copy of the model on rank 0, none on other ranks. Checkpoints: the index and the
open segment's step range and count. Disk: the segments that are (or may still be) in the valley;
the others are deleted once the rule excludes them (``swad.keep_segments=true`` keeps them).

Afterwards, any step range can be re-averaged (icefall style)::

    python -m emgscale.swad average RUN [--from STEP --to STEP] [--out FILE] [--bn-batches N]

Modules: :mod:`~emgscale.swad.rule` (settings, the rule), :mod:`~emgscale.swad.store` (files, index,
weighted mean), :mod:`~emgscale.swad.averager` (what the loop drives), :mod:`~emgscale.swad.posthoc`
(a run folder -> the averaged model, its validation metrics, the CLI's work).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Names load lazily: ``SWADConfig`` (:mod:`emgscale.swad.rule`) comes without torch.
_EXPORTS = {"SWADConfig": "rule", "Valley": "rule", "loss_valley": "rule", "WeightAverager": "averager",
            "recompute_norm_stats": "averager", "read_index": "store", "weighted_mean": "store"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"emgscale.swad.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'emgscale.swad' has no attribute {name!r}")
