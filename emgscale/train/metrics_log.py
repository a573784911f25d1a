"""Metric logging of a training run: ``metrics.jsonl``, ``metrics.csv`` and TensorBoard, on rank 0."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from emgscale.run_folder import RunFolder


class MetricsLogger:
    """Metrics to ``metrics.jsonl``, ``metrics.csv`` and TensorBoard (``tb/``) in the run folder (rank 0).

    The CSV is rewritten with the union of columns whenever a new column appears, so it stays a table.
    """

    def __init__(self, out_dir: "str | Path", tensorboard: bool = True, resume_step: int | None = None) -> None:
        folder = RunFolder(out_dir)
        self.out_dir = folder.root
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = folder.metrics
        self.csv = folder.metrics_csv
        self.rows: list[dict[str, Any]] = []
        if self.jsonl.exists() and resume_step is not None:
            # A resumed run keeps its history up to the checkpoint it resumed from; rows logged after
            # it (by the run that died) are dropped, since the resumed run logs those steps again.
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r.get("step", 0) <= resume_step]
            self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        elif self.jsonl.exists():
            self.jsonl.unlink()
        self._columns: list[str] | None = None
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(folder.tensorboard))
            except ImportError:  # tensorboard not installed: JSONL/CSV only
                self._tb = None

    def log(self, row: dict[str, Any], step: int) -> None:
        """Append one row of scalars (the CSV is rewritten only when a new column appears)."""
        self.rows.append(row)
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._columns is None or any(k not in self._columns for k in row):
            self._columns = []
            for r in self.rows:
                self._columns.extend(k for k in r if k not in self._columns)
            with self.csv.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self._columns)
                w.writeheader()
                w.writerows(self.rows)
        else:
            with self.csv.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self._columns).writerow(row)
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
