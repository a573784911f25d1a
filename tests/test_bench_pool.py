"""The job pool that suites running side by side share (emgscale.bench.pool)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from emgscale.bench import pool as jobpool


def test_pool_runs_queued_tasks_best_priority_first():
    """With its one worker busy, queued tasks run by priority (lower first), then in the order given."""
    with jobpool.open_pool(1) as p:
        busy = p.submit(time.sleep, 1.0)
        order = []
        for prio in (5, 1, 3, 1):
            jobpool.set_priority(prio)
            order.append((prio, p.submit(time.monotonic)))
        jobpool.set_priority(0)
        busy.result()
        ran = sorted(order, key=lambda pf: pf[1].result())
    assert [prio for prio, _ in ran] == [1, 1, 3, 5] and ran[0][1] is order[1][1]


def test_pool_shares_a_task_given_twice_and_raises_its_error():
    """A task given again under the same key is not run again (both callers get one future); a task's
    exception reaches its caller and the pool goes on."""
    with jobpool.open_pool(2) as p:
        assert jobpool.current() is p
        a, b = p.submit(time.monotonic, key=("run", "x")), p.submit(time.monotonic, key=("run", "x"))
        assert a is b and p.submit(time.monotonic) is not a
        with pytest.raises(ValueError):
            p.run(int, "not a number")
        assert p.run(abs, -3) == 3
    assert jobpool.current() is None


def test_pool_keeps_tasks_to_jobs_at_a_time():
    """Tasks from many threads never run more than ``jobs`` at once, and do run side by side (two workers: four
    1 s sleeps take at least 2 s, and less than the 4 s of one at a time)."""
    with jobpool.open_pool(2) as p:
        t0 = time.monotonic()
        threads = [threading.Thread(target=p.run, args=(time.sleep, 1.0)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t0
    assert 1.9 < took < 3.9


def test_pool_notes_belong_to_their_pool():
    """A note about a task stays with its pool (the first note of a key stays); the next pool starts without
    any, and its ETA line is None until a run is given."""
    from emgscale.bench.training import pool_progress_line

    with jobpool.open_pool(1) as p:
        p.note(("run", "a"), 1)
        p.note(("run", "a"), 2)
        assert p.notes() == {("run", "a"): 1}
    with jobpool.open_pool(1) as p:
        assert p.notes() == {}
        assert pool_progress_line(p, Path("unused-cache")) is None


def test_suite_order_puts_the_generic_model_first():
    """zero_shot (whose generic model the fine-tunes wait for) takes the pool's places before the suites of
    independent runs; a suite not listed goes last."""
    from emgscale.bench.together import SUITE_ORDER, priority

    assert priority("zero_shot") < priority("personalized") < priority("fingers") < priority("new_suite")
    assert set(SUITE_ORDER) == set(__import__("emgscale.bench.suites", fromlist=["SUITES"]).SUITES)


def test_train_runs_meanwhile_gives_runs_to_the_pool_at_once(monkeypatch):
    """With a pool open, runs that need nothing else are handed over at once, from a helper thread carrying the
    suite's priority and name; without one they train only when their result is asked for."""
    from emgscale.bench import parts

    calls = []
    started = threading.Event()

    def fake_train_runs(ctx, specs):
        calls.append((list(specs), jobpool.priority(), jobpool.suite(), threading.current_thread().name))
        started.set()
        return ["folder"]

    monkeypatch.setattr(parts, "train_runs", fake_train_runs)
    later = parts.train_runs_meanwhile(None, ["spec"])
    assert calls == []
    assert later() == ["folder"] and len(calls) == 1

    calls.clear()
    started.clear()
    jobpool.set_priority(3)
    jobpool.set_suite("personalized")
    try:
        with jobpool.open_pool(1):
            later = parts.train_runs_meanwhile(None, ["spec"])
            assert started.wait(10)
            assert later() == ["folder"]
    finally:
        jobpool.set_priority(0)
        jobpool.set_suite(None)
    (specs, priority, suite, thread), = calls
    assert (specs, priority, suite) == (["spec"], 3, "personalized")
    assert thread != threading.current_thread().name
