"""Validation and metric logging for the training loop (kept apart so the loop stays readable)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from emgscale.data.charset import charset
from emgscale.data.windows import Batch


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, labels: torch.Tensor,
             label_lengths: torch.Tensor) -> torch.Tensor:
    """Mean CTC loss (per target length, as ``nn.CTCLoss``) from ``(B, T, C)`` log-probs and the model's lengths."""
    return F.ctc_loss(log_probs.float().transpose(0, 1), labels, out_lengths, label_lengths,
                      blank=charset().blank, reduction="mean", zero_infinity=True)


@torch.no_grad()
def evaluate_ctc(model: torch.nn.Module, loader: Iterable[Batch], device: torch.device,
                 max_batches: int = 0) -> dict[str, float]:
    """Mean CTC loss and greedy CER of ``model`` over ``loader``, summed over all ranks.

    CER is the paper's: edit distance summed over samples divided by the total target length.
    """
    from emgscale.decode.greedy import greedy_decode
    from emgscale.metrics import edit_distance

    was_training = model.training
    model.eval()
    loss_sum, n_batches, errors, chars, samples = 0.0, 0, 0, 0, 0
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        batch = batch.to(device)
        log_probs, out_lengths = model(batch.emg, batch.emg_lengths)
        loss = ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths)
        loss_sum += float(loss) * len(batch)
        n_batches += len(batch)
        lp, ol = log_probs.float().cpu().numpy(), out_lengths.cpu().numpy()
        labels, ll = batch.labels.cpu().numpy(), batch.label_lengths.cpu().numpy()
        for b in range(len(batch)):
            pred = greedy_decode(lp[b, : ol[b]])
            errors += edit_distance(pred, labels[b, : ll[b]].tolist())
            chars += int(ll[b])
            samples += 1
    totals = torch.tensor([loss_sum, n_batches, errors, chars, samples], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = torch.distributed.get_backend()
        t = totals.to(device) if backend == "nccl" else totals
        torch.distributed.all_reduce(t)
        totals = t.cpu()
    loss_sum, n, errors, chars, samples = totals.tolist()
    model.train(was_training)
    return {
        "val_loss": loss_sum / max(n, 1),
        "val_cer": errors / max(chars, 1),
        "val_chars": int(chars),
        "val_samples": int(samples),
    }


class MetricsLogger:
    """Metrics to ``metrics.jsonl``, ``metrics.csv`` and TensorBoard (``tb/``) in the run folder (rank 0).

    The CSV is rewritten with the union of columns whenever a new column appears, so it stays a table.
    """

    def __init__(self, out_dir: "str | Path", tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out_dir / "metrics.jsonl"
        self.csv = self.out_dir / "metrics.csv"
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

                self._tb = SummaryWriter(str(self.out_dir / "tb"))
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
