"""One shared check for model families: a few Adam steps on one fixed batch lower the CTC loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def overfit_one_batch(model: torch.nn.Module, steps: int = 30, lr: float = 3e-3) -> list[float]:
    """CTC losses of ``steps`` Adam steps on one seeded batch of 2 x 1.2 s of EMG with 8 labels each
    (asserts every loss is finite)."""
    emg = torch.randn(2, 2400, 2, 16, generator=torch.Generator().manual_seed(0)) * 20.0
    lengths = torch.tensor([2400, 2000])
    labels = torch.randint(0, 98, (2, 8), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        lp, out_lengths = model(emg, lengths)
        loss = F.ctc_loss(lp.transpose(0, 1), labels, out_lengths, torch.tensor([8, 8]), blank=98)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(x) for x in losses)
    return losses
