"""Training: the config, the one loop, and the one way to launch it.

* :mod:`emgscale.train.config` — ``TrainConfig`` (``data``, ``model``, ``optim``, ``run``, ``swad``) and
  ``TrainResult``.
* :mod:`emgscale.train.loop` — :func:`train`, the one training loop (one device, or one rank of DDP).
* :mod:`emgscale.train.launch` — :func:`launch`, what every caller uses: in-process, or Ray Train.
* :mod:`emgscale.train.validation` — the CTC loss and the validation pass;
  :mod:`emgscale.train.metrics_log` — ``metrics.jsonl`` / ``metrics.csv`` / TensorBoard.
* ``python -m emgscale.train`` — the CLI (:mod:`emgscale.train.__main__`).
"""

from emgscale.train.config import OptimConfig, RunConfig, TrainConfig, TrainResult, load_train_config
from emgscale.train.launch import launch, wants_ray
from emgscale.train.loop import TrainState, lr_lambda, train

__all__ = ["OptimConfig", "RunConfig", "TrainConfig", "TrainResult", "TrainState", "launch", "load_train_config",
           "lr_lambda", "train", "wants_ray"]
