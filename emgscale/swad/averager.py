"""The averager the training loop drives: one open float64 running sum in memory, segment means on disk.

Between two validations the iterations form a *segment*. Rank 0 sums the weights of every step of the
open segment in float64; at the validation it turns the sum into the segment's mean in place and writes
it once, one tensor at a time (float32, or bf16 with ``swad.segment_dtype``), and adds an entry to the
index. Memory: the float64 sum, plus one converted tensor while a segment is written; the average at the
end is built one tensor at a time (:func:`~emgscale.swad.store.weighted_mean`) into a copy of the model,
after the sum is freed, so SWAD's peak is one float64 copy of the model plus one tensor. The loss-valley rule
(:func:`~emgscale.swad.rule.loss_valley`) is re-evaluated on the index after each validation; a segment
it has excluded for good loses its file (unless ``swad.keep_segments``). The average is built only when
asked (:meth:`WeightAverager.averaged_params`, :meth:`WeightAverager.finalize`).

Ranks other than 0 keep no weights: under DDP every rank holds the same weights and the same reduced
validation loss, so they track only the index (step ranges, counts, losses) and agree on the rule.

Checkpoints carry the index and the open segment's step range and count, never a model copy. A
checkpoint taken mid-segment (``run.ckpt_every_steps``) writes the open float64 sum to the store
folder (``open-<start>-<end>.pt``; the two newest are kept, so the file of the checkpoint on disk is
there while the next one is written) and a resumed run reloads it: the resumed average is the
uninterrupted one, bit for bit. Why a file and not a float32 partial mean: exactness, at the price of
one float64 copy on rank 0's disk instead of in every checkpoint.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable, Iterable

import torch

from emgscale.common import is_main as _is_main_rank
from emgscale.swad.rule import SWADConfig, Valley, check_config, first_candidate, loss_valley
from emgscale.swad.store import INDEX_FORMAT, SegmentStore, is_open, is_segment, open_name, segment_name, weighted_mean

STATE_VERSION = 2
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach() for k, p in model.named_parameters()}


class WeightAverager:
    """Dense SWAD / SWA weight averaging driven by the training loop's two hooks.

    The loop calls :meth:`after_step` after every optimiser step and :meth:`after_validation` after
    every validation; :meth:`finalize` builds the averaged weights (with recomputed BN statistics).

    Args:
        cfg: the ``swad`` settings.
        store_dir: folder for the segment files and ``index.json`` (the loop passes ``<out_dir>/swad``).
            None keeps the segment means in memory and in the checkpoint (tests, small models).
        is_main: whether this process writes and averages (rank 0); None asks ``emgscale.common.is_main``.
    """

    def __init__(self, cfg: SWADConfig, store_dir: "str | os.PathLike[str] | None" = None,
                 is_main: bool | None = None) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.is_main = _is_main_rank() if is_main is None else is_main
        self.store = SegmentStore(store_dir)
        self.segments: list[dict[str, Any]] = []  # the index: one entry per closed segment
        self.finalized = False  # training ended: pending segments are decided on the losses seen
        self._sum: dict[str, torch.Tensor] | None = None  # open segment's float64 sum (rank 0 only)
        self._open = {"start_step": -1, "end_step": -1, "count": 0}
        self._open_refs: list[str | None] = []  # open-sum files of the last two state_dict calls
        self._final: dict[str, torch.Tensor] | None = None
        self._valley: tuple[tuple[int, bool], Valley] | None = None  # the rule's result, per (segments, finalized)

    # ------------------------------------------------------------------ the rule on the index
    @property
    def valley(self) -> Valley:
        """The loss-valley rule on the closed segments (SWA: every segment is in)."""
        n = len(self.segments)
        if self._valley is None or self._valley[0] != (n, self.finalized):
            if self.cfg.mode == "swa":
                v = Valley(n, 0 if n else None, n, float("inf"), False, n)
            else:
                v = loss_valley([s["val_loss"] for s in self.segments], self.cfg.n_converge, self.cfg.n_tolerance,
                                self.cfg.tolerance_ratio, final=self.finalized,
                                first=first_candidate(self.segments, self.cfg.start_step))
            self._valley = ((n, self.finalized), v)
        return self._valley[1]

    @property
    def converged(self) -> bool:
        return self.valley.converged

    @property
    def dead(self) -> bool:
        return self.valley.dead

    @property
    def threshold(self) -> float:
        return self.valley.threshold

    @property
    def included_steps(self) -> list[int]:
        """Every step whose weights are in the average now (SWA: also the open segment's)."""
        v = self.valley
        steps = [t for s in self.segments[v.start or 0:v.end] for t in range(s["start_step"], s["end_step"])]
        if self.cfg.mode == "swa" and self._open["count"]:
            steps += list(range(self._open["start_step"], self._open["end_step"]))
        return steps

    def _recording(self) -> bool:
        if self.cfg.mode == "swad":
            return self.cfg.keep_segments or not self.dead
        return self.cfg.mode == "swa"

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, step: int) -> None:
        """Record the weights after optimiser step ``step`` (0-based; the segment's steps end at ``step + 1``)."""
        if self.cfg.mode == "swa":
            end = self.cfg.swa_end_step or math.inf
            if not self.cfg.swa_start_step <= step < end:
                return
        elif not self._recording():
            return
        if self._open["count"] == 0:
            self._open["start_step"] = step
        self._open["end_step"] = step + 1
        self._open["count"] += 1
        if not self.is_main:
            return
        params = _params(model)  # the sum lives on the parameters' device (rank 0 only), as adding is per step
        if self._sum is not None and next(iter(self._sum.values())).device != next(iter(params.values())).device:
            self._sum = {k: s.to(params[k].device) for k, s in self._sum.items()}  # resumed onto another device
        if self._sum is None:
            self._sum = {k: v.to(torch.float64, copy=True) for k, v in params.items()}
        elif self._open["count"] == 1:  # reuse the buffers of the previous segment
            for k, v in params.items():
                self._sum[k].copy_(v)
        else:
            for k, v in params.items():
                self._sum[k].add_(v.to(torch.float64))

    def after_validation(self, model: torch.nn.Module, val_loss: float, step: int) -> None:
        """Close the open segment with ``val_loss``, write its mean and apply the loss-valley rule."""
        if self.cfg.mode == "off" or self._open["count"] == 0:
            return
        self._close(float(val_loss))
        self._prune()

    def _close(self, val_loss: float) -> None:
        k, meta = len(self.segments), dict(self._open)
        entry = {"index": k, **meta, "val_loss": val_loss, "file": None}
        if self.is_main and self._sum is not None:
            with torch.no_grad():
                for s in self._sum.values():  # the sum becomes the mean in place (the next segment's
                    s.div_(meta["count"])      # first step overwrites it): no second copy of the model
            self.store.save_segment(segment_name(k), {**meta, "val_loss": val_loss}, self._sum,
                                    _DTYPES[self.cfg.segment_dtype])  # one converted tensor at a time
            entry["file"] = segment_name(k)
        self.segments.append(entry)
        self._open = {"start_step": -1, "end_step": -1, "count": 0}
        if not self._recording():
            self._sum = None  # the valley has ended: free the running sum

    def _prune(self) -> None:
        """Delete the files of segments the rule has excluded for good; rewrite the index."""
        v = self.valley
        for s in self.segments:
            if s["file"] is not None and v.status(s["index"]) == "out" and not self.cfg.keep_segments:
                if self.is_main:
                    self.store.delete(s["file"])
                s["file"] = None
        if self.is_main:
            self.store.write_index(self.index())

    def index(self) -> dict[str, Any]:
        """The JSON index: settings, the rule's state and every segment with its status."""
        v = self.valley
        return {"format": INDEX_FORMAT, "mode": self.cfg.mode, "segment_dtype": self.cfg.segment_dtype,
                "config": dict(vars(self.cfg)), "finalized": self.finalized,
                "valley": {"start": v.start, "end": v.end, "threshold": v.threshold, "dead": v.dead},
                "segments": [{**s, "status": v.status(s["index"])} for s in self.segments]}

    # ------------------------------------------------------------------ results
    def has_average(self) -> bool:
        """True when some weights are averaged (or would be, at finalize)."""
        if self.cfg.mode == "swa":
            return bool(self.segments) or self._open["count"] > 0
        return self.cfg.mode == "swad" and self.converged

    def averaged_params(self, out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
        """Count-weighted mean of the chosen segments' files (float32), or None (nothing averaged, or not rank 0).

        Args:
            out: tensors to write the mean into (a model's parameters) instead of new ones.
        """
        if not self.is_main:
            return None
        v = self.valley
        chosen = self.segments[v.start or 0:v.end] if v.converged else []
        total = sum(s["count"] for s in chosen)
        sources = [(s["file"] or segment_name(s["index"]), s["count"]) for s in chosen]
        with_open = self.cfg.mode == "swa" and self._open["count"] > 0 and self._sum is not None
        if not sources and not with_open:
            return None

        def loaded() -> Iterable[tuple[dict[str, torch.Tensor], float]]:  # one file at a time
            for name, count in sources:
                yield self.store.load(name)["params"], count
            if with_open:
                yield self._sum, 1.0

        return weighted_mean(loaded(), total + (self._open["count"] if with_open else 0), out)

    @torch.no_grad()
    def build_average(self, model: torch.nn.Module, loader_fn: Callable[[], Iterable[Any]],
                      device: torch.device) -> torch.nn.Module | None:
        """A copy of ``model`` with the averaged weights and recomputed BN statistics, in eval mode.

        Args:
            model: the trained model (a template; it is not modified).
            loader_fn: returns training batches for BN statistics.
            device: where the forward passes run.

        Returns:
            The averaged model, or None when there is nothing to average (or not rank 0).
        """
        if not self.is_main or not self.has_average():
            return None
        avg = copy.deepcopy(model)
        params = dict(avg.named_parameters())
        if self.averaged_params(out={k: p.data for k, p in params.items()}) is None:
            return None
        recompute_norm_stats(avg, loader_fn, self.cfg.bn_batches, device)
        return avg

    def finalize(self, model: torch.nn.Module, loader_fn: Callable[[], Iterable[Any]], device: torch.device) -> None:
        """Decide pending segments, then build the averaged model state with recomputed BN statistics.

        Args:
            model: the trained model (a template; it is not modified).
            loader_fn: returns training batches for BN statistics.
            device: where the forward passes run.
        """
        if self.cfg.mode == "swa" and self._open["count"]:
            self._close(float("nan"))  # SWA: the steps since the last validation count too
        self.finalized = True
        self._prune()
        self._sum = None
        avg = self.build_average(model, loader_fn, device)
        if avg is not None:  # avg is this call's own copy: its CPU tensors are kept, not cloned again
            self._final = {k: v.detach().cpu() for k, v in avg.state_dict().items()}

    def averaged_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The averaged model's full state dict after :meth:`finalize`, else None."""
        return self._final

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Small state for the checkpoint: the index and the open segment's range and count.

        On rank 0, mid-segment, the open float64 sum is written to the store as ``open-<start>-<end>.pt``
        (see the module docstring); the memory store puts it, and the segment means, in the state.
        """
        ref = None
        if self.is_main and self._open["count"] and self._sum is not None:
            ref = open_name(self._open["start_step"], self._open["end_step"])
            if ref not in self._open_refs:
                self.store.save(ref, {**self._open, "sum": {k: v.cpu() for k, v in self._sum.items()}})
        self._open_refs = [*self._open_refs, ref][-2:]
        if self.is_main:
            for name in self.store.names():
                if is_open(name) and name not in self._open_refs:
                    self.store.delete(name)
        return {"version": STATE_VERSION, "segments": [dict(s) for s in self.segments], "open": dict(self._open),
                "open_file": ref, "finalized": self.finalized, "memory_store": self.store.state()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state; the store's files must be the run's (same ``store_dir``).

        Raises:
            ValueError: a state from the older in-memory averager, or an open-sum file that is missing.
        """
        if not st or self.cfg.mode == "off":  # averaging off: whatever was averaged before is dropped
            return
        if st.get("version") != STATE_VERSION:
            raise ValueError("checkpoint 'averager': state of the older in-memory SWAD averager, which this "
                             "emgscale cannot continue; resume with swad.mode=off or train again")
        self.segments = [dict(s) for s in st["segments"]]
        self._open, self.finalized = dict(st["open"]), st["finalized"]
        self.store.load_state(st.get("memory_store"))
        self._sum, self._open_refs = None, [st.get("open_file")]
        if not self.is_main:
            return
        if st.get("open_file"):
            self._sum = {k: v.clone() for k, v in self.store.load(st["open_file"])["sum"].items()}
        elif self._open["count"]:
            raise ValueError("checkpoint 'averager': an open segment without its running sum")
        keep = {s["file"] for s in self.segments} | {st.get("open_file")}
        for name in self.store.names():  # a killed run's segments and sums after this checkpoint
            if (is_segment(name) or is_open(name)) and name not in keep:
                self.store.delete(name)
        self.store.write_index(self.index())


@torch.no_grad()
def recompute_norm_stats(model: torch.nn.Module, loader_fn: Callable[[], Iterable[Any]], n_batches: int,
                         device: torch.device) -> None:
    """Give ``model`` fresh normalisation statistics: the cumulative mean over ``n_batches`` training batches.

    The norm modules are :func:`emgscale.models.adapt.batch_norms`, re-estimated by
    :func:`~emgscale.models.adapt.cumulative_statistics`. The model is left in eval mode.

    Args:
        model: modified in place.
        loader_fn: returns batches with ``.to(device)``, ``.emg`` (B, T, ...) and ``.emg_lengths`` (B,)
            (or precomputed ``.features``: :func:`emgscale.models.forward_batch`).
        n_batches: batches to use; 0 leaves the statistics as they are.
        device: where the forward passes run.
    """
    from emgscale.models import forward_batch
    from emgscale.models.adapt import batch_norms, cumulative_statistics

    norms = batch_norms(model)
    if norms and n_batches > 0:
        model.train()
        with cumulative_statistics(norms) as weigh:
            for i, batch in enumerate(loader_fn()):
                if i >= n_batches:
                    break
                weigh(i + 1)
                forward_batch(model, batch.to(device))
    model.eval()
