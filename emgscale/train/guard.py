"""The training loop's guard for a batch that poisons the model's running statistics.

One batch of huge input (finite EMG of 3e38 overflows the float32 power spectrum) makes a forward pass
non-finite and, with it, the BatchNorm running statistics it updates: the step is skipped (its loss is
not finite), but the statistics stay poisoned, every later checkpoint is refused and every ``--resume``
dies at the same batch. :func:`restore_poisoned_stats` puts them back as they were before the batch
and names the batch's sessions. The data layer's value rule (:mod:`emgscale.data.values`) keeps such
EMG out in the first place; this is the loop's last line.
"""

from __future__ import annotations

from typing import Sequence

import torch

from emgscale.common import print0
from emgscale.data.errors import DataError


def running_stats(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's running statistics (BatchNorm ``running_mean`` / ``running_var``): the buffers a
    forward pass changes."""
    return [b for name, b in model.named_buffers() if name.rsplit(".", 1)[-1].startswith("running_")
            and b.is_floating_point()]


def restore_poisoned_stats(stats: list[torch.Tensor], saved: list[torch.Tensor], keys: Sequence[str], *,
                           skip_bad: bool, world: int = 1, device: "torch.device | str" = "cpu") -> bool:
    """After a non-finite step: when the running statistics ``stats`` turned non-finite in this batch's
    forward pass, copy ``saved`` (their values before it) back and name the batch's sessions.

    Args:
        stats: the running statistics (:func:`running_stats`).
        saved: their copies from before the batch.
        keys: the batch's sample keys (``user/session/offset``).
        skip_bad: go on (the caller skips the step) instead of raising.
        world: processes in the DDP job; every rank takes the same decision (one all-reduce, only on
            this rare path).
        device: where ``stats`` live.

    Returns:
        True when the statistics were poisoned (and are now restored).

    Raises:
        DataError: poisoned statistics without ``skip_bad``, naming the batch's sessions.
    """
    bad = torch.tensor(float(any(not bool(torch.isfinite(b).all()) for b in stats)), device=device)
    if world > 1:
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    if not bool(bad):
        return False
    with torch.no_grad():
        for b, s in zip(stats, saved):
            b.copy_(s)
    sessions = sorted({"/".join(str(k).split("/")[:2]) for k in keys})
    shown = ", ".join(str(k) for k in list(keys)[:4]) + (", ..." if len(keys) > 4 else "")
    problem = (f"non-finite features: the BatchNorm running statistics turned non-finite in the forward pass "
               f"of the batch holding {shown} (statistics restored)")
    if not skip_bad:
        raise DataError(", ".join(sessions), problem + "; find the bad file with python -m emgscale.data info, "
                        "or set data.skip_bad=true to skip such batches")
    print0(f"[train] {', '.join(sessions)}: {problem}; batch skipped (data.skip_bad)")
    return True
