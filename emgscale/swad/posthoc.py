"""After training: a run folder -> the averaged model (any step range) and a checkpoint file of it.

The run folder (:class:`~emgscale.run_folder.RunFolder`) is the training ``run.out_dir``: ``checkpoints/last.pt`` holds the config and the
trained model (the template whose parameters are replaced), ``swad/`` the segments (see
:mod:`emgscale.swad.store`). Without a range the loss-valley rule is evaluated on the index as at the
end of training (so a killed run's valley is decided on the losses it saw); with ``from_step`` /
``to_step`` every segment whose steps lie in ``[from_step, to_step)`` is averaged (icefall's
re-averaging at decode time). BatchNorm statistics are recomputed over training batches as the loop does
(one process: the run's full ``data.batch_size``). The averaged model's validation metrics (what a
Tune trial is ranked by) are :func:`emgscale.tune.averaged_val_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emgscale.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from emgscale.run_folder import RunFolder
from emgscale.swad.averager import recompute_norm_stats
from emgscale.swad.rule import SWADConfig, first_candidate, loss_valley
from emgscale.swad.store import INDEX, SegmentStore, read_index, weighted_mean


@dataclass
class Averaged:
    """An averaged model built from a run folder.

    Attributes:
        model: the model, in eval mode, with the averaged weights and fresh norm statistics.
        config: the run's resolved training config (a plain dict, as stored in the checkpoint).
        segments: the index entries averaged.
        steps: the number of steps averaged.
    """

    model: torch.nn.Module
    config: dict[str, Any]
    segments: list[dict[str, Any]]
    steps: int


def select_segments(index: dict[str, Any], from_step: int | None = None,
                    to_step: int | None = None) -> list[dict[str, Any]]:
    """The index entries to average: the valley (no range) or those whose steps lie in ``[from_step, to_step)``.

    Raises:
        ValueError: nothing to average, or a chosen segment's file was deleted (named).
    """
    segments = index["segments"]
    if from_step is None and to_step is None:
        chosen, what = _valley_segments(index), "the loss valley"
    else:
        lo, hi = from_step if from_step is not None else 0, to_step if to_step is not None else float("inf")
        if hi <= lo:
            raise ValueError(f"--to {to_step} must be after --from {from_step}")
        chosen = [s for s in segments if s["start_step"] >= lo and s["end_step"] <= hi]
        what = f"steps [{lo}, {hi})"
    if not chosen:
        raise ValueError(f"no SWAD segment in {what} (segments: {len(segments)})")
    missing = [s["index"] for s in chosen if not s.get("file")]
    if missing:
        raise ValueError(f"segments {missing} in {what} were deleted as outside the valley "
                         "(train with swad.keep_segments=true to re-average any range)")
    return chosen


def _valley_segments(index: dict[str, Any]) -> list[dict[str, Any]]:
    """The segments the rule averages at the end of training (SWA: all)."""
    segments = index["segments"]
    if index["mode"] == "swa":
        return list(segments)
    cfg = index["config"]
    v = loss_valley([s["val_loss"] for s in segments], cfg["n_converge"], cfg["n_tolerance"],
                    cfg["tolerance_ratio"], final=True, first=first_candidate(segments, cfg.get("start_step", 0)))
    return segments[v.start:v.end] if v.converged else []


def _index_and_store(run: RunFolder, ckpt: Checkpoint, swad: SWADConfig) -> tuple[dict[str, Any], SegmentStore]:
    """The run's index and segment store: ``<run>/swad/``, or the checkpoint's memory store when the
    loop kept the segments in memory (no store folder)."""
    state = ckpt.averager or {}
    if not (run.swad / INDEX).is_file() and state.get("memory_store") is not None:
        store = SegmentStore(None)
        store.load_state(state["memory_store"])
        return {"mode": swad.mode, "config": vars(swad), "segments": state["segments"]}, store
    return read_index(run.swad), SegmentStore(run.swad)


def _train_batches(ckpt: Checkpoint) -> Any:
    """The run's training batches, unshuffled, as the loop's norm-statistics pass reads them."""
    from emgscale.config import from_dict
    from emgscale.loader import DataConfig, build_loader

    data = from_dict(DataConfig, ckpt.config.get("data") or {}, "data")
    seed = int((ckpt.config.get("run") or {}).get("seed", 0))
    features = ckpt.model_config().features
    return lambda: build_loader(data, "train", train=False, seed=seed, rank=0, world_size=1, features=features)


def build_averaged_model(run: "str | Path", from_step: int | None = None, to_step: int | None = None,
                         bn_batches: int | None = None, device: "str | torch.device" = "cpu",
                         reuse: bool = True) -> Averaged:
    """The SWAD/SWA-averaged model of a run folder, ready for evaluation.

    Args:
        run: the training ``run.out_dir``.
        from_step, to_step: average the segments in ``[from_step, to_step)`` instead of the valley.
        bn_batches: batches for the norm statistics (default: the run's ``swad.bn_batches``).
        device: where the norm-statistics passes run (the model is returned there).
        reuse: without a range or ``bn_batches``, use the finished run's stored ``averaged_model``.

    Raises:
        FileNotFoundError: no checkpoint or no SWAD index in ``run``.
        ValueError: nothing to average (see :func:`select_segments`).
    """
    from emgscale.config import from_dict
    from emgscale.models import build_model

    device, folder = torch.device(device), RunFolder(run)
    ckpt = load_checkpoint(folder.last)
    config = ckpt.config
    swad = from_dict(SWADConfig, config.get("swad") or {}, "swad")
    model = build_model(ckpt.model_config())
    index, store = _index_and_store(folder, ckpt, swad)
    if reuse and from_step is None and to_step is None and bn_batches is None and ckpt.averaged_model:
        model.load_state_dict(ckpt.averaged_model)
        chosen = _valley_segments(index)
        return Averaged(model.to(device).eval(), config, chosen, sum(s["count"] for s in chosen))
    model.load_state_dict(ckpt.model)
    batches = _train_batches(ckpt)
    del ckpt
    chosen = select_segments(index, from_step, to_step)
    params = dict(model.named_parameters())
    total = sum(s["count"] for s in chosen)
    with torch.no_grad():
        weighted_mean(((store.load(s["file"])["params"], s["count"]) for s in chosen), total,
                      out={k: p.data for k, p in params.items()})
    model.to(device)
    recompute_norm_stats(model, batches, swad.bn_batches if bn_batches is None else bn_batches,
                         device)
    return Averaged(model.eval(), config, chosen, total)


def write_average(run: "str | Path", out: "str | Path | None" = None, from_step: int | None = None,
                  to_step: int | None = None, bn_batches: int | None = None,
                  device: "str | torch.device" = "cpu") -> tuple[Path, Averaged]:
    """Re-average a run and write a checkpoint that ``evaluate`` / ``load_model`` read (either ``which``).

    Args:
        run: the training ``run.out_dir``.
        out: the file (default ``<run>/swad/average-<from>-<to>.pt``).
        from_step, to_step, bn_batches, device: as :func:`build_averaged_model` (never reusing).

    Returns:
        ``(path, averaged)``.
    """
    avg = build_averaged_model(run, from_step, to_step, bn_batches, device, reuse=False)
    lo, hi = avg.segments[0]["start_step"], avg.segments[-1]["end_step"]
    path = Path(out) if out is not None else RunFolder(run).swad / f"average-{lo}-{hi}.pt"
    state = {k: v.detach().cpu() for k, v in avg.model.state_dict().items()}
    # model and averaged_model are the same tensors: torch.save stores them once.
    save_checkpoint(path, Checkpoint(model=state, config=avg.config, averaged_model=state,
                                     source=f"swad average of steps [{lo}, {hi}) of {run} ({avg.steps} steps)"))
    return path, avg
