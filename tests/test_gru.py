"""The CPU GRU (emgscale.models.gru) computes nn.GRU's function: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emgscale.models.gru import gru_directions
from emgscale.models.rnn import StackedRNN


def _grads(module: nn.Module, x: torch.Tensor, out: torch.Tensor, dy: torch.Tensor) -> list[torch.Tensor]:
    return torch.autograd.grad(out, [x, *module.parameters()], dy)


@pytest.mark.parametrize("directions", [1, 2])
def test_gru_directions_equals_nn_gru(directions: int) -> None:
    """Each direction's output and the gradients of its input, weights and biases equal nn.GRU's (float64)."""
    torch.manual_seed(0)
    B, T, I, H = 3, 7, 5, 4
    layers = [nn.GRU(I, H, batch_first=True).double() for _ in range(directions)]
    x = torch.randn(directions, B, T, I, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(directions, B, T, H, dtype=torch.float64)
    params = [torch.stack([getattr(m, n) for m in layers])
              for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    y = gru_directions(x, *params)
    mine = torch.autograd.grad(y, [x, *(p for m in layers for p in m.parameters())], dy)
    for d, m in enumerate(layers):
        xd = x[d].detach().clone().requires_grad_(True)
        ref = m(xd)[0]
        torch.testing.assert_close(y[d], ref, rtol=0, atol=1e-12)
        want = _grads(m, xd, ref, dy[d])
        torch.testing.assert_close(mine[0][d], want[0], rtol=0, atol=1e-12)
        for got, exp in zip(mine[1 + 4 * d: 5 + 4 * d], want[1:]):
            torch.testing.assert_close(got, exp, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_gru_same_as_nn_gru_path(bidirectional: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """StackedRNN's GRU gives the same outputs and gradients with the CPU GRU as with nn.GRU (padded batch)."""
    torch.manual_seed(1)
    rnn = StackedRNN("gru", 6, 5, num_layers=2, bidirectional=bidirectional, dropout=0.0).double()
    x = torch.randn(3, 9, 6, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([9, 4, 6])
    dy = torch.randn(3, 9, rnn.out_features, dtype=torch.float64)

    def run() -> list[torch.Tensor]:
        y = rnn(x, lengths)
        return [y, *torch.autograd.grad(y, [x, *rnn.parameters()], dy)]

    fused = run()
    import emgscale.models.rnn as rnn_module

    monkeypatch.setattr(rnn_module, "_fused_gru", lambda layer, x: False)
    plain = run()
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gru_directions_skips_frozen_weights() -> None:
    """With weights that need no gradient, only the input's gradient is computed, and it is unchanged."""
    torch.manual_seed(2)
    m = nn.GRU(4, 3, batch_first=True).double().requires_grad_(False)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    params = [getattr(m, n).unsqueeze(0) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    (dx,) = torch.autograd.grad(gru_directions(x, *params).sum(), [x])
    xr = x[0].detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad(m(xr)[0].sum(), [xr])
    torch.testing.assert_close(dx[0], want, rtol=0, atol=1e-12)


def test_bench_kernels_times_each_piece_against_what_it_replaced() -> None:
    """benchmarks/bench_kernels.py prints a row per piece and pass with both timings, and the rfft spectra
    agree with the DFT-basis matmul they replaced."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_kernels.py"), "--repeats", "1"],
                         capture_output=True, text=True, check=True, cwd=root).stdout
    rows = [line for line in out.splitlines() if re.match(r"\| (BiGRU|GRU|spectra)", line)]
    assert len(rows) == 5
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and cells[4].endswith(("x", ")"))
    diff = float(re.search(r"largest difference ([0-9.e+-]+)", rows[-1]).group(1))
    assert diff < 1e-3
