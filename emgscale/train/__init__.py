"""Training: the config, the one loop, and the one way to launch it.

* :mod:`emgscale.train.config` — ``TrainConfig`` (``data``, ``model``, ``optim``, ``run``, ``swad``) and
  ``TrainResult``.
* :mod:`emgscale.train.loop` — :func:`train`, the one training loop (one device, or one rank of DDP).
* :mod:`emgscale.train.launch` — :func:`launch`, what every caller uses: in-process, or Ray Train.
* :mod:`emgscale.train.validation` — the CTC loss and the validation pass;
  :mod:`emgscale.train.metrics_log` — ``metrics.jsonl`` / ``metrics.csv`` / TensorBoard.
* ``python -m emgscale.train`` — the CLI (:mod:`emgscale.train.__main__`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: Names load lazily: the config (:mod:`emgscale.train.config`) comes without torch.
_EXPORTS = {"OptimConfig": "config", "RunConfig": "config", "TrainConfig": "config", "TrainResult": "config",
            "load_train_config": "config", "launch": "launch", "wants_ray": "launch", "TrainState": "loop",
            "lr_lambda": "loop", "train": "loop"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"emgscale.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'emgscale.train' has no attribute {name!r}")


class _Package(types.ModuleType):
    """``emgscale.train.launch`` stays the function (as it was when this package imported it eagerly):
    importing the submodule of the same name, which sets the package's attribute, keeps the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "launch" and isinstance(value, types.ModuleType):
            value = value.launch
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
