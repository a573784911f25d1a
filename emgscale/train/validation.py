"""The loss and the validation pass of the training loop (kept apart so the loop stays readable)."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from emgscale.data.charset import charset
from emgscale.data.windows import Batch
from emgscale.decode.greedy import collapse_batch
from emgscale.metrics import CERMeter
from emgscale.models import forward_batch


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, labels: torch.Tensor,
             label_lengths: torch.Tensor) -> torch.Tensor:
    """Mean CTC loss (per target length, as ``nn.CTCLoss``) from ``(B, T, C)`` log-probs and the model's lengths."""
    return F.ctc_loss(log_probs.float().transpose(0, 1), labels, out_lengths, label_lengths,
                      blank=charset().blank, reduction="mean", zero_infinity=True)


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Iterable[Batch], device: torch.device, max_batches: int = 0,
             autocast: dict | None = None) -> dict[str, float]:
    """Mean CTC loss and greedy CER of ``model`` over ``loader``, summed over all ranks.

    The greedy argmax is taken on the device and comes back in one transfer per batch; the loss stays
    on the device until the end. CER is the paper's (:class:`~emgscale.metrics.CERMeter`): edit
    distance summed over samples divided by the total target length.
    """
    was_training = model.training
    model.eval()
    meter = CERMeter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        gpu = batch.to(device)
        with torch.autocast(**(autocast or {"device_type": device.type, "enabled": False})):
            log_probs, out_lengths = forward_batch(model, gpu)
        loss = ctc_loss(log_probs, out_lengths, gpu.labels, gpu.label_lengths)
        loss_sum += loss.double() * len(batch)
        n += len(batch)
        packed = torch.cat([out_lengths[:, None], log_probs.argmax(-1)], dim=1).cpu().numpy()  # one transfer
        labels, ll = batch.labels.numpy(), batch.label_lengths.numpy()
        for b, pred in enumerate(collapse_batch(packed[:, 1:], packed[:, 0])):
            meter.update(pred, labels[b, : ll[b]])
    t = meter.total
    totals = torch.tensor([float(loss_sum), n, t.errors, t.target_length, t.utterances], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        on = totals.to(device) if torch.distributed.get_backend() == "nccl" else totals
        torch.distributed.all_reduce(on)
        totals = on.cpu()
    loss_total, count, errors, chars, samples = totals.tolist()
    model.train(was_training)
    return {
        "val_loss": loss_total / max(count, 1),
        "val_cer": errors / max(chars, 1),
        "val_chars": int(chars),
        "val_samples": int(samples),
    }
