"""A benchmark's plan: every training run it will make, known before the first one starts, for an ETA over
the whole benchmark (not only over the batch of runs training now).

The runner makes the plan with a planning pass (:func:`planning`): each suite runs as usual, but
:func:`emgscale.bench.training.ensure_trained_many` records the runs that are not done (their expected steps
and rate key) instead of training them and returns their folders untrained, and evaluation steps return
nothing (:func:`is_planning`). Corpora, shards and the LM are made during the pass (they are cached: the
work is done once, earlier). The runs are identified by :func:`plan_id` — their config files and overrides
as given, which is the same in the planning pass and the real one (a fine-tune names its generic model's
checkpoint by path, which exists only after the generic model trains). :func:`set_plan` hands the plan to
the ETA; :func:`later_runs` is what of it lies after the batch training now.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from emgscale.bench.steps import config_hash

#: plan id -> (expected steps or None, rate key) of a run to train.
Plan = dict[str, tuple["int | None", str]]

_recording: Plan | None = None
_plan: Plan = {}
_settled: set[str] = set()


def plan_id(files: list[str], overrides: list[str]) -> str:
    """A run's identity in the plan: its config files and overrides as the suite gives them."""
    return config_hash([list(files), list(overrides)])


@contextlib.contextmanager
def planning() -> Iterator[Plan]:
    """Within it, training runs are recorded into the yielded plan, not trained (see the module docstring)."""
    global _recording
    _recording = {}
    try:
        yield _recording
    finally:
        _recording = None


def is_planning() -> bool:
    """True inside :func:`planning`: suites skip their evaluations."""
    return _recording is not None


def record(run: str, expected: "int | None", key: str) -> None:
    """Record one run of the planning pass (the first record of a run wins)."""
    if _recording is not None:
        _recording.setdefault(run, (expected, key))


def set_plan(plan: Plan) -> None:
    """The runs the benchmark will train from now on (a new plan forgets what was settled)."""
    global _plan
    _plan = dict(plan)
    _settled.clear()


def settle(runs: "list[str] | set[str]") -> None:
    """These runs are trained or were found done: the ETA no longer counts them."""
    _settled.update(runs)


def later_runs(batch: "set[str]") -> Plan:
    """The planned runs neither settled nor in ``batch`` (the runs training now): the rest of the benchmark."""
    return {r: v for r, v in _plan.items() if r not in _settled and r not in batch}
