"""Weight averaging for generalisation to unseen users: SWAD (Cha et al., 2021) and plain SWA.

SWAD averages the weights of *every iteration* (dense averaging) inside a window that validation loss
selects. Between two validations the iterations form a *segment*, kept as a running sum. After each
validation the segment is closed with that validation loss and the loss-valley rule decides:

* **start** (``n_converge``): once the oldest of the last ``n_converge`` segments has the lowest loss
  of them, the loss has stopped falling: averaging starts at that segment, and the threshold is set to
  ``min loss * (1 + tolerance_ratio)``.
* **continue / stop** (``n_tolerance``): a later segment joins the average when the minimum loss over
  it and the next ``n_tolerance - 1`` segments is below the threshold; the first time it is not, the
  valley has ended and averaging stops for good. At the end of training, segments still waiting for
  their look-ahead join when the losses seen so far keep them under the threshold.

``mode="swa"`` averages every iteration in a fixed step window ``[swa_start_step, swa_end_step)`` instead.

Normalisation: the averaged weights get fresh BatchNorm statistics, recomputed in train mode (cumulative
average) over ``bn_batches`` batches of training data; modules with no running statistics need nothing.

Under DDP every rank holds identical weights, so every rank keeps the same average (no communication).
The state (open segment, pending segments, the average so far, the valley state) is in the checkpoint,
so a resumed run continues the same average.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch


@dataclass
class SWADConfig:
    """Weight averaging settings (defaults: the SWAD paper's n_converge 3, n_tolerance 6, r 0.3)."""

    mode: str = "off"  # off | swad | swa
    n_converge: int = 3
    n_tolerance: int = 6
    tolerance_ratio: float = 0.3
    swa_start_step: int = 0  # swa: first averaged step
    swa_end_step: int = 0  # swa: end of the window (exclusive); 0 = end of training
    bn_batches: int = 20  # batches to recompute BatchNorm statistics of the average


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach() for k, p in model.named_parameters()}


class _Sum:
    """A running sum of parameter snapshots over steps ``[start, end]``."""

    def __init__(self) -> None:
        self.sum: dict[str, torch.Tensor] | None = None
        self.count = 0
        self.start = -1
        self.end = -1
        self.loss = float("nan")

    def add(self, params: dict[str, torch.Tensor], step: int) -> None:
        if self.sum is None:
            self.sum = {k: v.to(torch.float64).clone() for k, v in params.items()}
            self.start = step
        else:
            for k, v in params.items():
                self.sum[k].add_(v.to(torch.float64))
        self.count += 1
        self.end = step

    def merge(self, other: "_Sum") -> None:
        if other.sum is None:
            return
        if self.sum is None:
            self.sum = {k: v.clone() for k, v in other.sum.items()}
            self.start = other.start
        else:
            for k, v in other.sum.items():
                self.sum[k].add_(v)
        self.count += other.count
        self.end = max(self.end, other.end)

    def state(self) -> dict[str, Any]:
        return {"sum": self.sum, "count": self.count, "start": self.start, "end": self.end, "loss": self.loss}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> "_Sum":
        s = cls()
        s.sum, s.count, s.start, s.end, s.loss = st["sum"], st["count"], st["start"], st["end"], st["loss"]
        return s


class WeightAverager:
    """Dense SWAD / SWA weight averaging driven by the training loop's two hooks.

    The loop calls :meth:`after_step` after every optimiser step and :meth:`after_validation` after
    every validation; :meth:`finalize` builds the averaged weights (with recomputed BN statistics).
    """

    def __init__(self, cfg: SWADConfig) -> None:
        if cfg.mode not in ("off", "swad", "swa"):
            raise ValueError(f"swad.mode must be off | swad | swa, got {cfg.mode!r}")
        if cfg.n_converge < 1 or cfg.n_tolerance < 1:
            raise ValueError("swad.n_converge and swad.n_tolerance must be >= 1")
        self.cfg = cfg
        self.segment = _Sum()  # iterations since the last validation
        self.pending: list[_Sum] = []  # closed segments not yet decided
        self.average = _Sum()  # what the average holds so far
        self.converged = False
        self.dead = False
        self.threshold = float("inf")
        self.included_steps: list[int] = []  # every step whose weights are in the average
        self._final: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ hooks
    def after_step(self, model: torch.nn.Module, step: int) -> None:
        """Record the weights after optimiser step ``step``."""
        if self.cfg.mode == "swa":
            end = self.cfg.swa_end_step or float("inf")
            if self.cfg.swa_start_step <= step < end:
                self.average.add(_params(model), step)
                self.included_steps.append(step)
        elif self.cfg.mode == "swad" and not self.dead:
            self.segment.add(_params(model), step)

    def after_validation(self, model: torch.nn.Module, val_loss: float, step: int) -> None:
        """Close the current segment with ``val_loss`` and apply the loss-valley rule."""
        if self.cfg.mode != "swad" or self.dead or self.segment.count == 0:
            return
        self.segment.loss = float(val_loss)
        self.pending.append(self.segment)
        self.segment = _Sum()
        if not self.converged:
            if len(self.pending) < self.cfg.n_converge:
                return
            window = self.pending[-self.cfg.n_converge:]
            losses = [s.loss for s in window]
            if losses[0] != min(losses):
                self.pending = self.pending[-self.cfg.n_converge + 1:] if self.cfg.n_converge > 1 else []
                return
            self.converged = True
            self.threshold = losses[0] * (1.0 + self.cfg.tolerance_ratio)
            self.pending = window
            self._take(self.pending.pop(0))
        self._decide(final=False)

    def _take(self, seg: _Sum) -> None:
        self.average.merge(seg)
        self.included_steps.extend(range(seg.start, seg.end + 1))

    def _decide(self, final: bool) -> None:
        while self.pending and not self.dead:
            ahead = self.pending[: self.cfg.n_tolerance]
            if len(ahead) < self.cfg.n_tolerance and not final:
                return
            if min(s.loss for s in ahead) > self.threshold:
                self.dead = True
                self.pending = []
                return
            self._take(self.pending.pop(0))

    # ------------------------------------------------------------------ results
    def has_average(self) -> bool:
        """True when some weights have been averaged (or would be, at finalize)."""
        return self.average.count > 0 or (self.converged and bool(self.pending))

    def averaged_params(self) -> dict[str, torch.Tensor] | None:
        """Mean of the recorded weights (float32), or None when nothing was averaged."""
        if self.average.sum is None:
            return None
        return {k: (v / self.average.count).to(torch.float32) for k, v in self.average.sum.items()}

    @torch.no_grad()
    def finalize(self, model: torch.nn.Module, loader_fn: Callable[[], Iterable[Any]], device: torch.device) -> None:
        """Decide pending segments, then build the averaged model state with recomputed BN statistics.

        Args:
            model: the trained model (a template; it is not modified).
            loader_fn: returns training batches for BN statistics.
            device: where the forward passes run.
        """
        if self.cfg.mode == "swad":
            self._decide(final=True)
        params = self.averaged_params()
        if params is None:
            return
        avg = copy.deepcopy(model)
        for k, p in avg.named_parameters():
            p.copy_(params[k].to(p.device, p.dtype))
        # Any module with running_mean/running_var and a momentum: nn.BatchNorm* and the models' own
        # MaskedBatchNorm (which has no reset_running_stats and no momentum=None mode).
        norms = [m for m in avg.modules() if isinstance(getattr(m, "running_mean", None), torch.Tensor)
                 and isinstance(getattr(m, "running_var", None), torch.Tensor) and hasattr(m, "momentum")]
        if norms and self.cfg.bn_batches > 0:
            saved = {m: m.momentum for m in norms}
            for m in norms:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                if isinstance(getattr(m, "num_batches_tracked", None), torch.Tensor):
                    m.num_batches_tracked.zero_()
            avg.train()
            for i, batch in enumerate(loader_fn()):
                if i >= self.cfg.bn_batches:
                    break
                for m in norms:  # cumulative average: the k-th batch weighs 1/k (as momentum=None does)
                    m.momentum = 1.0 / (i + 1)
                batch = batch.to(device)
                avg(batch.emg, batch.emg_lengths)
            for m, mom in saved.items():
                m.momentum = mom
        avg.eval()
        self._final = {k: v.detach().cpu().clone() for k, v in avg.state_dict().items()}

    def averaged_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The averaged model's full state dict after :meth:`finalize`, else None."""
        return self._final

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment.state(), "pending": [s.state() for s in self.pending],
            "average": self.average.state(), "converged": self.converged, "dead": self.dead,
            "threshold": self.threshold, "included_steps": list(self.included_steps), "final": self._final,
        }

    def load_state_dict(self, st: dict[str, Any]) -> None:
        if not st:
            return
        self.segment = _Sum.from_state(st["segment"])
        self.pending = [_Sum.from_state(s) for s in st["pending"]]
        self.average = _Sum.from_state(st["average"])
        self.converged, self.dead, self.threshold = st["converged"], st["dead"], st["threshold"]
        self.included_steps = list(st["included_steps"])
        self._final = st.get("final")
