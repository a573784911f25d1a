"""The loop's cadence: the batches of an epoch, and the steps a run validates at (:mod:`emgscale.train.loop`)."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

from emgscale.config import ConfigError


def validation_steps(times: int, total_steps: int) -> frozenset[int]:
    """The steps a run of ``total_steps`` validates at when it validates ``times`` times: evenly spaced, the
    last at the end (fewer when the run has fewer steps); empty for ``times`` 0 (validate per epoch)."""
    if times <= 0 or total_steps <= 0:
        return frozenset()
    return frozenset(max(1, round(k * total_steps / times)) for k in range(1, times + 1))


def epoch_batches(make_loader: Callable[[int], Any], epoch: int, steps: int) -> Iterator[Any]:
    """Exactly ``steps`` batches for ``epoch``: the loader of ``(epoch, 0)`` (an epoch long when the loop asks
    for that), then, should it run dry first (``data.limit_samples``), more loaders seeded by ``(epoch, pass)``
    until the epoch is full, so a fixed epoch length works with any amount of data."""
    made = 0
    for n_pass in itertools.count():
        got = 0
        for batch in make_loader(epoch * 1_000 + n_pass):
            yield batch
            made, got = made + 1, got + 1
            if made >= steps:
                return
        if got == 0:
            raise ConfigError(f"the training data yields no batch in epoch {epoch}: check data.split / data.shards")
