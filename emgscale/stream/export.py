"""Export of the streaming step for deployment: ``torch.export`` first, TorchScript where export cannot.

>>> exported = export_step(model, units=3)          # the step for 3 output frames per call
>>> streamer = Streamer(model, step=exported.module, units_per_step=exported.units)
>>> exported.save("step.pt2")                       # torch.export archive (or TorchScript file)

The exported step is the same pure function as :class:`~emgscale.stream.StreamStep`:
``(samples (units * unit_samples, 2, 16), *state) -> (log_probs (units, 99), *new_state)``, with the
state tensors of ``StreamStep.init_state()`` (a deployment keeps them between calls, primes the raw
cache and drops ``skip_frames`` as :class:`~emgscale.stream.Streamer` does). The number of frames per
call is fixed at export (a device runs one chunk size: 40 ms at 2 kHz is 5 frames of a TDS, 2.5 of a
stride-2 model, so export 2 or 3 and let samples wait for whole steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from emgscale.common import atomic_write_bytes
from emgscale.features import NUM_BANDS, NUM_ELECTRODES
from emgscale.stream.step import StreamStep


@dataclass
class ExportedStep:
    """An exported streaming step.

    Attributes:
        module: callable ``module(samples, *state) -> (log_probs, *state)``.
        program: the ``torch.export.ExportedProgram`` (None when TorchScript was used).
        kind: ``"torch.export"`` or ``"torchscript"``.
        units: output frames per call.
        step: the eager step it was made from (geometry, ``init_state``).
        fallback_reason: why ``torch.export`` was not used (None when it was).
    """

    module: Callable[..., Any]
    program: Any
    kind: str
    units: int
    step: StreamStep
    fallback_reason: str | None = None

    def save(self, path: "str | Path") -> Path:
        """Write the export atomically (``.pt2`` archive for ``torch.export``, TorchScript otherwise)."""
        import io

        buf = io.BytesIO()
        if self.program is not None:
            torch.export.save(self.program, buf)
        else:
            torch.jit.save(self.module, buf)
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)


def example_inputs(step: StreamStep, units: int) -> tuple[torch.Tensor, ...]:
    """Inputs for tracing: ``units`` frames' worth of random samples and the initial state."""
    samples = torch.randn(units * step.unit_samples, NUM_BANDS, NUM_ELECTRODES)
    return (samples, *step.init_state())


def export_step(model: torch.nn.Module, units: int = 1, allow_torchscript: bool = True) -> ExportedStep:
    """Export the streaming step of ``model`` (eval mode).

    Args:
        model: a causal :class:`~emgscale.models.CTCModel`.
        units: output frames per call (``units * unit_samples`` input samples).
        allow_torchscript: when ``torch.export`` fails, trace with TorchScript (fixed ``units``).

    Returns:
        The :class:`ExportedStep`.

    Raises:
        NotStreamable: the model has a non-causal stage.
        RuntimeError: export failed and TorchScript is not allowed (or failed too).
    """
    if units < 1:
        raise ValueError(f"units must be >= 1, got {units}")
    step = StreamStep(model).eval()
    args = example_inputs(step, units)
    try:
        with torch.no_grad():
            program = torch.export.export(step, args)
        return ExportedStep(program.module(), program, "torch.export", units, step)
    except Exception as e:  # export is strict about Python control flow; fall back where allowed
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if not allow_torchscript:
            raise RuntimeError(f"torch.export of the streaming step failed ({reason})") from e
    with torch.no_grad():
        traced = torch.jit.trace(step, args, check_trace=False)
    return ExportedStep(traced, None, "torchscript", units, step, fallback_reason=reason)
