"""Suites side by side: ``python -m emgscale.bench all --jobs J`` (and ``demo``) runs its suites at once.

Run one after another, suites leave cores idle: a suite with one long run (the generic model, a single-user
model) uses one of the ``J`` places while the other waits for it, and evaluation and rendering run beside no
training. Here every suite runs in its own thread of this process and gives its training runs and
evaluations to one shared pool of ``J`` worker processes (:mod:`emgscale.bench.pool`), so the machine runs
``J`` of them at a time from the first minute to the last. Suites whose later runs wait for a long one go
first (:data:`SUITE_ORDER`: zero_shot's generic model, which personalized and few_shot fine-tune); a run two
suites ask for trains once. One line every :data:`~emgscale.bench.training.ETA_EVERY_S` seconds says where
all the training stands and its ETA. Each suite writes its tables as it finishes; a suite that fails does not
stop the others, and the first failure is raised when all have ended.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from emgscale.bench import pool as jobpool
from emgscale.bench.runner import run_benchmark
from emgscale.bench.steps import default_cache
from emgscale.bench.training import tick_pool
from emgscale.common import print0

#: The order the suites' tasks take the pool's places in (lower first): the suites whose later runs wait for
#: a long one (the generic model and the fine-tunes from it) first, the suites of independent runs after.
SUITE_ORDER = ("zero_shot", "personalized", "few_shot", "single_user", "sweep", "fingers")


def run_side_by_side(names: list[str], jobs: int, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """Run the suites ``names`` at once on one pool of ``jobs`` worker processes.

    Args:
        names: suites of :data:`emgscale.bench.suites.SUITES`.
        jobs: training runs and evaluations at a time (worker processes).
        kwargs: the other keywords of :func:`emgscale.bench.runner.run_benchmark`, the same for every suite.

    Returns:
        Each suite's result (:func:`~emgscale.bench.runner.run_benchmark`), by name.

    Raises:
        The first failure, in the order of ``names``, once every suite has ended.
    """
    kwargs = {**kwargs, "cache": Path(kwargs.get("cache") or default_cache())}
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, BaseException] = {}
    print0(f"[bench] {', '.join(names)} side by side: {jobs} training runs or evaluations at a time, "
           f"in the order {', '.join(n for n in SUITE_ORDER if n in names)}")
    with jobpool.open_pool(jobs) as pool:
        stop = threading.Event()
        threading.Thread(target=tick_pool, args=(stop, pool, kwargs["cache"]), daemon=True).start()
        threads = [threading.Thread(target=_one, args=(name, kwargs, jobs, results, errors), daemon=True,
                                    name=f"suite-{name}") for name in names]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            stop.set()
    for name in names:
        if name in errors:
            raise errors[name]
    return results


def priority(name: str) -> int:
    """A suite's place in :data:`SUITE_ORDER` (suites not named there go last)."""
    return SUITE_ORDER.index(name) if name in SUITE_ORDER else len(SUITE_ORDER)


def _one(name: str, kwargs: dict[str, Any], jobs: int, results: dict[str, Any],
         errors: dict[str, BaseException]) -> None:
    """One suite's thread: its tasks at its priority, its failure kept for the caller."""
    jobpool.set_priority(priority(name))
    jobpool.set_suite(name)
    try:
        results[name] = run_benchmark(name, jobs=jobs, **kwargs)
    except BaseException as e:  # the other suites go on; the caller raises it at the end
        errors[name] = e
        print0(f"[bench] {name} stopped: {type(e).__name__}: {e}")
