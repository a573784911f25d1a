"""Helpers shared by the fault suite (``tests/faults``): tiny models, training overrides, bad sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import emgscale
from emgscale.data.writer import write_session_file

REPO = Path(__file__).resolve().parents[2]
#: The tree of the ``emgscale`` under test: subprocesses put it first on their path.
SRC = Path(emgscale.__file__).resolve().parents[1]
TINY_MODEL = ["model.arch=tds", "model.frontend.mlp_features=[16]", "model.tds.block_channels=[4,4]",
              "model.tds.kernel_width=8"]
WIN = ["data.window.window_samples=2000", "data.window.pad_left_samples=200", "data.window.pad_right_samples=100"]


def train_overrides(out: Path, *extra: str) -> list[str]:
    """Overrides of a few-second training run of a tiny TDS model into ``out``."""
    return [f"run.out_dir={out}", "data.batch_size=4", "run.tensorboard=false", "run.threads=1", "run.max_epochs=1",
            "run.steps_per_epoch=4", "run.val_max_batches=1", "optim.warmup_epochs=0", *TINY_MODEL, *WIN, *extra]


def rewrite_session(path: Path, *, user: str = "43037958", edit=None, rows: int | None = None) -> None:
    """Rewrite session ``path`` with random EMG and regular timestamps, ``edit(emg, t)`` applied in place."""
    n = rows if rows is not None else 12_000
    rng = np.random.default_rng(1)
    emg = (rng.normal(size=(n, 2, 16)) * 10).astype(np.float32)
    t = 1.6e9 + np.arange(n) / 2000.0
    if edit is not None:
        edit(emg, t)
    keys = [{"key": "a", "start": float(t[10]), "end": float(t[20])}] if n > 20 else []
    write_session_file(path, emg, t, session_name=path.stem, user=user, keystrokes=keys)


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line of a CLI's stderr (asserting there is no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    return lines[0]
