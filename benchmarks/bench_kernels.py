"""Two CPU pieces of the training step, side by side with what they replaced, in one process.

    python benchmarks/bench_kernels.py [--threads 1] [--repeats 9]

* GRU: :func:`emgscale.models.gru.gru_directions` (through :class:`~emgscale.models.rnn.StackedRNN`, as
  training runs it) vs ``nn.GRU`` per direction (the same module with the CPU GRU switched off), the
  forward alone (with gradients on, as in training: without them ``StackedRNN`` runs ``nn.GRU``) and forward
  + backward, for CNN+BiGRU-small's BiGRU (batch 16, 311 frames, 128 -> 128) and the finger model's GRU
  (batch 16, 200 frames, 96 -> 128, one direction);
* spectra: :class:`~emgscale.features.spectral.SpectralFeatures` (rfft of the windowed frames) vs a matmul
  of the frames with the windowed real-DFT basis (the form it replaced), batch 16 x 5 s x 2 x 16 at 2 kHz,
  n_fft 64, hop 16; the largest difference of their outputs is printed too.

Each pair takes turns, ``--repeats`` times; the medians (ms) and their ratio are printed. Freed memory is
kept (:func:`emgscale.malloc.keep_freed_memory`), as in training.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def in_turn(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each function, the functions called in turn ``repeats`` times (2 untimed first)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats + 2):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(v) for name, v in times.items()}


def gru_rows(repeats: int) -> list[str]:
    """Markdown rows: the CPU GRU vs nn.GRU, forward and forward + backward, two shapes."""
    import torch

    import emgscale.models.rnn as rnn_module

    fused = rnn_module._fused_gru
    rows = []
    for label, bidirectional, T, I in [("BiGRU, CNN+BiGRU-small", True, 311, 128), ("GRU, finger model", False, 200, 96)]:
        torch.manual_seed(0)
        rnn = rnn_module.StackedRNN("gru", I, 128, 1, bidirectional, 0.0)
        x = torch.randn(16, T, I, requires_grad=True)
        lengths = torch.full((16,), T)

        def forward() -> object:
            return rnn(x, lengths)

        def both() -> object:
            rnn(x, lengths).sum().backward()
            return None

        def using(fn: Callable[[], object], on: bool) -> Callable[[], object]:
            def call() -> object:
                rnn_module._fused_gru = fused if on else (lambda layer, h: False)
                try:
                    return fn()
                finally:
                    rnn_module._fused_gru = fused
            return call

        for what, fn in [("forward", forward), ("forward + backward", both)]:
            ms = in_turn({"cpu": using(fn, True), "nn": using(fn, False)}, repeats)
            rows.append(f"| {label} | {what} | {ms['cpu']:.1f} | {ms['nn']:.1f} | {ms['nn'] / ms['cpu']:.2f}x |")
    return rows


def spectra_row(repeats: int) -> str:
    """Markdown row: rfft spectra vs the windowed-DFT-basis matmul they replaced."""
    import torch

    from emgscale.features.spectral import LOG_FLOOR, SpectralFeatures

    n_fft, hop = 64, 16
    spectral = SpectralFeatures("log_spectrogram", n_fft, hop)
    x = torch.randn(16, 10_000, 2, 16)
    lengths = torch.full((16,), 10_000)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    t = torch.arange(n_fft, dtype=torch.float64)[:, None]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[None, :]
    scale = window[:, None] / window.pow(2).sum().sqrt()
    angle = 2 * math.pi * t * k / n_fft
    basis = torch.cat([torch.cos(angle) * scale, -torch.sin(angle) * scale], 1).float()

    def by_matmul() -> torch.Tensor:
        z = x.unfold(1, n_fft, hop) @ basis
        re, im = z[..., : n_fft // 2 + 1], z[..., n_fft // 2 + 1:]
        return torch.log10(torch.addcmul(re * re, im, im).add_(LOG_FLOOR))

    ms = in_turn({"rfft": lambda: spectral(x, lengths), "matmul": by_matmul}, repeats)
    diff = float((spectral(x, lengths)[0] - by_matmul()).abs().max())
    return (f"| spectra, batch 16 x 5 s x 32 electrodes | forward | {ms['rfft']:.1f} | {ms['matmul']:.1f} | "
            f"{ms['matmul'] / ms['rfft']:.2f}x (largest difference {diff:.1e}) |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as each run of --jobs 2)")
    p.add_argument("--repeats", type=int, default=9, help="timed calls of each (default 9)")
    args = p.parse_args()
    import os

    import torch

    from emgscale.malloc import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cpus, load average before: "
          f"{os.getloadavg()[0]:.2f}")
    print("| what | pass | emgscale (ms) | replaced (ms) | speed-up |")
    print("|---|---|--:|--:|--:|")
    for row in [*gru_rows(args.repeats), spectra_row(args.repeats)]:
        print(row)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
