"""What the loop optimises and how it validates: an :class:`Objective` chosen by ``loss.kind``.

The loop is the same for every task; the objective supplies the training loss of a batch and the
validation pass. ``ctc`` (the default, the paper's) is CTC over the model's log-probs and its own
output lengths, validated by loss and greedy CER. Other objectives register in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch

from emgscale.data.windows import Batch
from emgscale.train.frames import FrameCEObjective
from emgscale.train.validation import ctc_loss, validate


@dataclass
class LossConfig:
    """The training objective (the ``loss`` section of the training config).

    Attributes:
        kind: a key of :data:`OBJECTIVES` (``ctc``; ``frame_ce``: a label per output frame,
            :mod:`emgscale.train.frames`).
    """

    kind: str = "ctc"


class Objective(Protocol):
    """The loss and validation of one task.

    Attributes:
        metric: the validation metric ``best.pt`` is chosen by (lower is better).
    """

    metric: str

    def loss(self, log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: Batch, step: int) -> torch.Tensor:
        """The scalar training loss of a batch (``batch`` already on the device) at optimiser step ``step``."""

    def validate(self, model: torch.nn.Module, loader: Iterable[Batch], device: torch.device, max_batches: int,
                 autocast: dict[str, Any]) -> dict[str, float]:
        """Validation metrics (reduced over ranks), including ``val_loss`` and :attr:`metric`."""


class CTCObjective:
    """CTC loss; validation loss and greedy CER (``val_cer``)."""

    metric = "val_cer"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def loss(self, log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: Batch, step: int) -> torch.Tensor:
        return ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths)

    def validate(self, model: torch.nn.Module, loader: Iterable[Batch], device: torch.device, max_batches: int,
                 autocast: dict[str, Any]) -> dict[str, float]:
        return validate(model, loader, device, max_batches=max_batches, autocast=autocast)


#: ``loss.kind`` -> ``factory(train_config) -> Objective``.
OBJECTIVES: dict[str, Callable[[Any], Objective]] = {"ctc": CTCObjective}
OBJECTIVES["frame_ce"] = FrameCEObjective


def build_objective(cfg: Any) -> Objective:
    """The objective ``cfg.loss.kind`` names, for the training config ``cfg``.

    Raises:
        ValueError: an unknown ``loss.kind``.
    """
    kind = cfg.loss.kind
    if kind not in OBJECTIVES:
        raise ValueError(f"loss.kind: unknown objective {kind!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[kind](cfg)
