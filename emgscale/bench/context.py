"""What every benchmark suite is handed: where things are and what they may cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from emgscale.bench.budget import Budget
from emgscale.bench.steps import Corpus


@dataclass
class BenchContext:
    """Where things are and what they may cost: what :mod:`emgscale.bench.runner` hands every suite.

    A suite is a function ``(ctx: BenchContext, definition: dict) -> dict`` registered in
    :data:`emgscale.bench.suites.SUITES`; it may live in its own module under ``emgscale/bench/``
    (:mod:`emgscale.bench.fingers`).

    Attributes:
        cache: the benchmark cache folder (corpora, shards, trained runs, evaluations).
        budget: the size of everything (:mod:`emgscale.bench.budget`).
        corpus: the data the suites train and test on.
        configs_dir: the folder holding ``models/*.yaml`` (and ``fingers/``).
        lm: the character LM for the +LM columns (None: greedy only).
        shard_workers, jobs: shard-writer processes (``--shard-workers``); training runs at a time.
        overrides: ``dotted.key=value`` applied to every training run.
        out: the results folder (suites that draw their own plots write there).
        generic_checkpoint: a given generic model (e.g. Meta's generic.ckpt): not trained here.
        synthetic_corpus: the synthetic corpus flags ``corpus`` was generated from, when it is the budget's
            (no ``--data-root``); a suite may make a variant of it (the recipes table's held-out users).
    """

    cache: Path
    budget: Budget
    corpus: Corpus
    configs_dir: Path
    lm: Path | None = None
    shard_workers: int = 1
    jobs: int = 1
    overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    generic_checkpoint: Path | None = None
    synthetic_corpus: dict | None = None

    def heldout(self) -> list[Path]:
        """The held-out users' split files (at most the budget's ``max_heldout_users``)."""
        return self.corpus.heldout_splits(self.budget.max_heldout_users)
