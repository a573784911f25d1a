"""Where a run's wall time goes: :class:`Timings`, the per-run breakdown that ends up in ``TrainResult.timings``.

The keys (:data:`TIMING_KEYS`) are seconds of wall time on this process (rank 0's view under DDP):

* ``ray_start_s``: connecting to / starting Ray (0 for an in-process run; :func:`emgscale.train.launch`).
* ``pipeline_build_s``: building training loaders until their first batch arrives (shard pipelines,
  DataLoader workers, counting windows).
* ``data_wait_s``: waiting for the later batches of a loader.
* ``step_s``: forward, backward and optimiser step (the step's one host sync included).
* ``validation_s``: the validation passes (their checkpoint writes are in ``checkpoint_s``).
* ``checkpoint_s``: writing checkpoints.
* ``total_s``: the whole call; what the others leave is set-up (model build, resume), logging and SWAD's
  final pass.

Measured with the host clock: on a GPU a step's kernels finish by its finiteness check, so they count in
``step_s``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Iterator

TIMING_KEYS = ("ray_start_s", "pipeline_build_s", "data_wait_s", "step_s", "validation_s", "checkpoint_s", "total_s")


class Timings:
    """Seconds per key (:data:`TIMING_KEYS`), accumulated as the run goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {k: 0.0 for k in TIMING_KEYS}

    def add(self, key: str, seconds: float) -> None:
        """Add ``seconds`` to ``key`` (one of :data:`TIMING_KEYS`)."""
        if key not in self.seconds:
            raise KeyError(f"unknown timing key {key!r} (one of {TIMING_KEYS})")
        self.seconds[key] += max(0.0, seconds)

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Add the block's wall time to ``key``."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.add(key, time.monotonic() - t0)

    def batches(self, make: Callable[[], Iterable[Any]]) -> Iterator[Any]:
        """The batches of ``make()``: building it and waiting for its first batch count as
        ``pipeline_build_s``, waiting for each later one as ``data_wait_s``."""
        t0 = time.monotonic()
        it = iter(make())
        key = "pipeline_build_s"
        while True:
            try:
                batch = next(it)
            except StopIteration:
                self.add(key, time.monotonic() - t0)
                return
            self.add(key, time.monotonic() - t0)
            key = "data_wait_s"
            yield batch
            t0 = time.monotonic()

    def as_dict(self) -> dict[str, float]:
        """A copy of the seconds per key."""
        return dict(self.seconds)
