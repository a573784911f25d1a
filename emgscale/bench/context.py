"""What every benchmark suite is handed: where things are and what they may cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from emgscale.bench.budget import Budget
from emgscale.bench.steps import Corpus


@dataclass
class BenchContext:
    """Where things are and what they may cost."""

    cache: Path
    budget: Budget
    corpus: Corpus
    configs_dir: Path
    lm: Path | None = None
    workers: int = 1
    jobs: int = 1
    overrides: list[str] = field(default_factory=list)
    out: Path | None = None  # the benchmark's results folder (suites that draw their own plots write there)
    generic_checkpoint: Path | None = None  # a given generic model (e.g. Meta's generic.ckpt): not trained here

    def heldout(self) -> list[Path]:
        return self.corpus.heldout_splits(self.budget.max_heldout_users)
