"""Per-time-point scores of a frame classifier on whole recordings.

A recording is run through the model in one pass (eval mode); every row takes the class of the output
frame that owns it (:func:`emgscale.train.frames.frames_to_samples`) and is scored against its label:
accuracy (rows right / rows), balanced accuracy (mean recall over the classes present), macro-F1
(mean F1 over the classes present in the labels or the predictions), and the confusion matrix
(rows = true class, columns = predicted), all pooled over the rows of the recordings scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from emgscale.data.tables import Recording, check_class_labels
from emgscale.train.frames import frames_to_samples


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: ``[true, predicted]``."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
    keep = labels >= 0
    return np.bincount(labels[keep] * num_classes + predictions[keep], minlength=num_classes ** 2
                       ).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 of a confusion matrix (see the module docstring)."""
    c = np.asarray(confusion, dtype=np.float64)
    tp, true, pred = np.diag(c), c.sum(1), c.sum(0)
    present = true > 0
    recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    used = present | (pred > 0)
    return {"accuracy": float(tp.sum() / max(c.sum(), 1)),
            "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
            "macro_f1": float(f1[used].mean()) if used.any() else 0.0,
            "rows": int(c.sum())}


@torch.no_grad()
def predict_rows(model: torch.nn.Module, recording: Recording, device: "torch.device | str" = "cpu") -> np.ndarray:
    """The class the model gives each row of ``recording`` (one pass over the whole recording)."""
    model.eval()
    rate = float(getattr(model, "input_sample_rate_hz", recording.sample_rate_hz))
    if abs(rate - recording.sample_rate_hz) > 1e-6:
        raise ValueError(f"{recording.path}: recorded at {recording.sample_rate_hz:g} Hz, the model takes {rate:g} Hz")
    n = len(recording)
    if n < model.min_input_samples:
        raise ValueError(f"{recording.path}: {n} rows is shorter than the model's minimum input "
                         f"({model.min_input_samples} rows)")
    x = torch.from_numpy(np.ascontiguousarray(recording.emg[None, :, None, :])).to(device)
    log_probs, out_lengths = model(x, torch.tensor([n], device=device))
    frames = log_probs[0, : int(out_lengths[0])].argmax(-1).cpu().numpy()
    return frames_to_samples(frames, n, int(model.samples_per_frame))


def evaluate_recordings(model: torch.nn.Module, recordings: Sequence[Recording], num_classes: int | None = None,
                        device: "torch.device | str" = "cpu") -> dict[str, Any]:
    """Pooled and per-user scores and confusion matrices of ``model`` on ``recordings``.

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1", "rows", "confusion": [[...]], "per_user":
        {user: {... same ...}}, "per_recording": {session: accuracy}}``.
    """
    k = int(num_classes or model.num_classes)
    total = np.zeros((k, k), dtype=np.int64)
    per_user: dict[str, np.ndarray] = {}
    per_rec: dict[str, float] = {}
    for rec in recordings:
        if rec.labels is None:
            raise ValueError(f"{rec.path}: no labels to score against")
        check_class_labels(rec, k)
        conf = confusion_matrix(rec.labels, predict_rows(model, rec, device), k)
        total += conf
        per_user[rec.user] = per_user.get(rec.user, np.zeros_like(conf)) + conf
        per_rec[rec.session] = scores(conf)["accuracy"]
    return {**scores(total), "confusion": total.tolist(),
            "per_user": {u: {**scores(c), "confusion": c.tolist()} for u, c in per_user.items()},
            "per_recording": per_rec}


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], title: str, caption: str,
                   path: "str | Path") -> Path:
    """A row-normalised confusion matrix PNG (recall per true class, in %), with a caption under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emgscale.common import atomic_path

    c = np.asarray(confusion, dtype=np.float64)
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.4, 5.0), dpi=120)
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(norm)):
        for j in range(len(norm)):
            ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (cue)")
    ax.set_title(title, fontsize=10)
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
