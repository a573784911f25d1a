"""How long a benchmark's training runs still take: expected steps of every queued and running run x the
seconds per step measured so far, scheduled onto the ``jobs`` slots.

The old estimate (time spent / runs finished x runs left) shrank to near zero when a short fine-tune
finished first while a long generic model was still queued; this one counts steps, not runs:

* a run's **expected steps** come from its config (``run.steps_per_epoch x run.max_epochs``, capped by
  ``run.max_steps``; unknown when ``steps_per_epoch`` is 0, the loader's length);
* **seconds per step** are measured per model config (:func:`rate_key`: the model section, the batch
  size and the threads / device / workers it runs on) from runs finished (their ``DONE.json``) and running (their ``RUNNING.json`` and the last step in
  ``metrics.jsonl``), all-in (start-up, validation and checkpoints included); a config not measured yet
  takes the measured seconds per forward MFLOP times its own step's MFLOPs (:func:`step_cost`: a finger
  model's step is not a generic model's), else the pooled rate of all the others;
* runs go onto ``jobs`` slots as the process pool starts them: running runs first, then the queued ones
  in order, each to the slot that frees first; the ETA is when the last slot frees.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A run's marker while it trains: when it started and at which step (a resumed run starts past 0).
RUNNING = "RUNNING.json"


@dataclass(frozen=True)
class RunEstimate:
    """One run as the ETA sees it.

    Attributes:
        expected_steps: optimiser steps the run makes in all (None: unknown).
        steps_done: steps it has made so far.
        rate_key: its model config (:func:`rate_key`): runs with the same key cost the same per step.
        running: it trains now (else queued).
    """

    expected_steps: int | None
    steps_done: int = 0
    rate_key: str = ""
    running: bool = False


def eta_seconds(runs: list[RunEstimate], measured: dict[str, tuple[float, int]],
                jobs: int = 1, costs: dict[str, "float | None"] | None = None) -> tuple[float, int] | None:
    """Wall seconds until every run in ``runs`` is done.

    Args:
        runs: the runs not done yet (running and queued, in the order they start).
        measured: per rate key, (seconds, steps) measured so far; a key not in it takes, where ``costs``
            has its step's MFLOPs and those of measured keys, the measured seconds per MFLOP times them, else
            the pooled rate (all seconds / all steps).
        jobs: runs trained at a time.
        costs: per rate key, the forward MFLOPs of one training step (:func:`step_cost`; None: not counted).

    Returns:
        (seconds, runs of unknown length, counted as 0 s), or None when nothing has been measured yet.
    """
    seconds = sum(s for s, n in measured.values() if n > 0)
    steps = sum(n for s, n in measured.values() if n > 0)
    if steps <= 0:
        return None
    pooled = seconds / steps
    costs = costs or {}
    counted = [(s, n * costs[k]) for k, (s, n) in measured.items() if n > 0 and costs.get(k)]
    per_mflop = sum(s for s, _ in counted) / sum(f for _, f in counted) if counted else None
    unknown = 0
    slots = [0.0] * max(1, jobs)
    for run in sorted(runs, key=lambda r: not r.running):  # stable: running first, then queued in order
        if run.expected_steps is None:
            unknown += 1
            continue
        s, n = measured.get(run.rate_key, (0.0, 0))
        cost = costs.get(run.rate_key)
        rate = s / n if n > 0 else per_mflop * cost if per_mflop and cost else pooled
        left = max(0, run.expected_steps - run.steps_done) * rate
        heapq.heapreplace(slots, slots[0] + left)  # onto the slot that frees first
    return max(slots), unknown


def expected_steps(cfg: Any) -> int | None:
    """Optimiser steps a training config makes: ``steps_per_epoch x max_epochs``, capped by ``max_steps``
    (None when ``steps_per_epoch`` is 0: the train loader's length, not known before it is built)."""
    run = cfg.run
    total = run.steps_per_epoch * run.max_epochs if run.steps_per_epoch > 0 else None
    if run.max_steps > 0:
        total = min(total, run.max_steps) if total is not None else run.max_steps
    return total


def rate_key(cfg: Any) -> str:
    """What a step's cost depends on: the model config, the batch size and what the run trains on
    (threads, device, workers), hashed."""
    from emgscale.bench.steps import config_hash
    from emgscale.config import to_dict

    return config_hash({"model": to_dict(cfg.model), "batch_size": cfg.data.batch_size,
                        "batch_size_per_device": cfg.data.batch_size_per_device, "threads": cfg.run.threads,
                        "device": cfg.run.device, "workers": cfg.run.workers})


#: :func:`step_cost` per rate key, counted once per process.
_step_costs: dict[str, "float | None"] = {}


def step_cost(cfg: Any) -> float | None:
    """Forward MFLOPs of one training step of ``cfg`` (its batch of windows with their context, counted by
    :func:`emgscale.models.cost.forward_flops`), cached per :func:`rate_key`; None where it cannot be counted
    (the ETA then uses the pooled rate). Steps cost about a fixed multiple of this (backward ~2x forward,
    plus the featurizer and data work it does not count), so measured seconds per MFLOP carry from one model
    config to another."""
    key = rate_key(cfg)
    if key not in _step_costs:
        try:
            from emgscale.models.cost import forward_flops
            from emgscale.models.ctc import build_model

            w = cfg.data.window
            samples = int(w.window_samples or 8000) + int(w.pad_left_samples) + int(w.pad_right_samples)
            model = build_model(cfg.model)
            # Counted on at most one second (the counter sees an RNN step by step: seconds per config) and
            # scaled to the window: these models' FLOPs grow linearly with the input.
            counted = min(samples, max(int(model.min_input_samples), int(model.input_sample_rate_hz)))
            flops = forward_flops(model, counted) * samples / counted
            _step_costs[key] = flops * int(cfg.data.batch_size) / 1e6
        except Exception:  # an estimate only: a model the counter cannot run falls back to the pooled rate
            _step_costs[key] = None
    return _step_costs[key]


def known_step_costs() -> dict[str, "float | None"]:
    """The step costs counted so far in this process (:func:`step_cost`), by rate key."""
    return dict(_step_costs)


def steps_done(folder: Path) -> int:
    """The last step a run logged in its ``metrics.jsonl`` (0 when none); reads only the file's tail."""
    path = Path(folder) / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a partial first line of the tail, or a row without a step
    return 0


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing or unreadable (a marker being replaced)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}
