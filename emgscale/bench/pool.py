"""One pool of ``jobs`` worker processes shared by every suite of a benchmark that runs its suites side by side.

``python -m emgscale.bench all --jobs 2`` (and ``demo``) runs its suites in threads of one process
(:mod:`emgscale.bench.together`); their CPU-heavy tasks — training runs and evaluations — all go to the one
:class:`JobPool` open then (:func:`current`), so that the machine runs ``jobs`` of them at a time, never more,
and a core left free by one suite (waiting for its generic model, evaluating, rendering) is taken by another.

Tasks wait in a priority queue: lower ``priority`` first, then first come first served. The runner gives
each suite thread a priority (:func:`set_priority`): the suites whose later runs depend on a long one (the
generic model, which the fine-tunes start from) go first, the suites of independent runs fill the cores
after. A task given with a ``key`` already queued, running or done in this pool is not run again: the
callers share its result (two suites asking for the same generic model wait for one training run).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterator

_current: "JobPool | None" = None
_local = threading.local()


def threads_each(jobs: int, cpus: "int | None" = None) -> int:
    """Torch threads of each of ``jobs`` tasks side by side on a CPU machine of ``cpus`` cores (default: this
    one's): ``cpus // jobs``, at least 1."""
    return max(1, (cpus if cpus is not None else os.cpu_count() or 1) // max(1, jobs))


def current() -> "JobPool | None":
    """The pool open in this process (:func:`open_pool`), or None: tasks run as each caller decides."""
    return _current


def set_priority(priority: int) -> None:
    """The priority of the tasks this thread submits from now on (lower runs first; default 0)."""
    _local.priority = priority


def priority() -> int:
    """The priority of the tasks this thread submits (:func:`set_priority`; default 0)."""
    return getattr(_local, "priority", 0)


def set_suite(name: "str | None") -> None:
    """The suite this thread runs (tasks carry it into the cache steps they make, for ``bench_suite.py``)."""
    _local.suite = name


def suite() -> "str | None":
    """The suite this thread runs (:func:`set_suite`), or None."""
    return getattr(_local, "suite", None)


class JobPool:
    """``jobs`` spawned worker processes fed from one priority queue, with tasks shared by key.

    Args:
        jobs: worker processes (tasks at a time).
    """

    def __init__(self, jobs: int) -> None:
        import multiprocessing

        from emgscale.common import exit_with_parent

        self.jobs = max(1, int(jobs))
        self._executor = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=exit_with_parent, initargs=(os.getpid(),))
        # The workers start now, from this thread (a worker dies with the thread that started it: exit_with_parent).
        for f in [self._executor.submit(os.getpid) for _ in range(self.jobs)]:
            f.result()
        self._queue: "queue.PriorityQueue[tuple[int, int, Any]]" = queue.PriorityQueue()
        self._order = itertools.count()
        self._tasks: dict[Any, Future] = {}
        self._notes: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._dispatchers = [threading.Thread(target=self._dispatch, daemon=True, name=f"jobpool-{i}")
                             for i in range(self.jobs)]
        for t in self._dispatchers:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any, key: Any = None, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)`` for a worker (``fn`` and its arguments must pickle) at this thread's
        priority; with a ``key`` already submitted, the earlier task's future."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the job pool is closed")
            if key is not None and key in self._tasks:
                return self._tasks[key]
            fut: Future = Future()
            if key is not None:
                self._tasks[key] = fut
            self._queue.put((priority(), next(self._order), (fut, fn, args, kwargs)))
            return fut

    def note(self, key: Any, value: Any) -> None:
        """Keep ``value`` about a task given to this pool (the first note of a ``key`` stays): what its callers
        know of it that the pool does not (a training run's expected steps, for the ETA of all of them)."""
        with self._lock:
            self._notes.setdefault(key, value)

    def notes(self) -> dict[Any, Any]:
        """A copy of every :meth:`note` kept so far, in the order they were given."""
        with self._lock:
            return dict(self._notes)

    def run(self, fn: Callable[..., Any], *args: Any, key: Any = None, **kwargs: Any) -> Any:
        """:meth:`submit` and wait for the result (a task's exception is raised here)."""
        return self.submit(fn, *args, key=key, **kwargs).result()

    def _dispatch(self) -> None:
        """One dispatcher per worker: take the best queued task, run it on a worker, hand over its result."""
        while True:
            _, _, item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._executor.submit(fn, *args, **kwargs).result())
            except BaseException as e:  # the caller sees it; the dispatcher goes on
                fut.set_exception(e)

    def close(self, wait: bool = True) -> None:
        """Run no more tasks: queued ones are cancelled; with ``wait``, running ones finish first (without,
        the workers end with this process)."""
        with self._lock:
            self._closed = True
        pending = []
        with contextlib.suppress(queue.Empty):
            while True:
                pending.append(self._queue.get_nowait())
        for _, _, item in pending:
            item[0].cancel()
        for _ in self._dispatchers:
            self._queue.put((-1, next(self._order), None))
        if wait:
            for t in self._dispatchers:
                t.join()
        self._executor.shutdown(wait=wait, cancel_futures=True)


@contextlib.contextmanager
def open_pool(jobs: int) -> Iterator[JobPool]:
    """A :class:`JobPool` of ``jobs`` workers that :func:`current` returns until the block ends."""
    global _current
    if _current is not None:
        raise RuntimeError("a job pool is already open in this process")
    pool = JobPool(jobs)
    _current = pool
    ok = False
    try:
        yield pool
        ok = True
    finally:
        _current = None
        pool.close(wait=ok)  # after an error or Ctrl-C, don't wait for the running tasks
