"""A GRU layer for the CPU: PyTorch's GRU equations, every direction in one time loop, a backward of its own.

PyTorch's CPU GRU is not fused: oneDNN's RNN primitive is used for the LSTM only (``torch.mkldnn_rnn_layer``
builds an LSTM primitive whatever its ``mode``), so ``nn.GRU`` runs ~10 ops a time step and direction,
and autograd records each and replays them one by one, two small matmuls a step. For CNN+BiGRU-small
(batch 16, 311 frames, 128 units, both directions) that is ~207 ms of a ~940 ms training step.

:func:`gru_directions` computes the same function (``nn.GRU`` with biases, batch first, zero initial
state; its gate order ``r, z, n`` and ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``):

* the input projections of every step and direction are one batched matmul;
* the loop runs the ``D`` directions side by side (one ``bmm`` a step) without recording a graph, and
  keeps the gates;
* the backward runs only what is sequential (the hidden state's gradient: one ``bmm`` and six
  elementwise ops a step, into buffers), with each step's gate derivatives computed for all steps at
  once before the loop, and the weight gradients after it as one matmul over all steps.

:class:`~emgscale.models.rnn.StackedRNN` uses it for GRU layers on the CPU when a backward follows
(training), outside streaming and ``torch.compile``; ``nn.GRU`` keeps the parameters (checkpoints are
unchanged) and runs everywhere else: CUDA's cuDNN kernels, a streaming step's stateful call, and forwards
without gradients (validation, evaluation), where this one's forward alone is no faster
(``benchmarks/bench_kernels.py``: forward + backward ~1.4-1.5x ``nn.GRU``'s; without gradients the
forwards measured 0.93-0.98x in a scratch timing while this was written: that script times the forward
with gradients on, as training runs it). ``tests/test_gru.py`` holds the two equal,
outputs and every gradient, in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def gru_directions(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """``D`` GRU directions (each a unidirectional ``nn.GRU`` layer from a zero state) over their inputs.

    Args:
        x: (D, B, T, I) input of each direction (a backward direction's input already reversed).
        w_ih: (D, 3H, I) ``weight_ih_l0`` of each direction.
        w_hh: (D, 3H, H) ``weight_hh_l0``.
        b_ih: (D, 3H) ``bias_ih_l0``.
        b_hh: (D, 3H) ``bias_hh_l0``.

    Returns:
        (D, B, T, H): each direction's hidden state at every step (``nn.GRU``'s output).
    """
    if x.dim() != 4 or w_hh.dim() != 3 or x.shape[0] != w_hh.shape[0]:
        raise ValueError(f"gru_directions wants x (D, B, T, I) and w_hh (D, 3H, H), got {tuple(x.shape)} "
                         f"and {tuple(w_hh.shape)}")
    return _GRUDirections.apply(x, w_ih, w_hh, b_ih, b_hh)


class _GRUDirections(torch.autograd.Function):
    """The autograd function of :func:`gru_directions`. Its buffers are (D, T, B, .): a step is the slice
    ``[:, t]`` and a direction's steps one (T * B, .) matrix for the matmuls over all steps."""

    @staticmethod
    def forward(ctx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        D, B, T, _ = x.shape
        H = w_hh.shape[-1]
        xt = x.transpose(1, 2).reshape(D, T * B, -1)  # (D, T * B, I), time-major
        gi = torch.baddbmm(b_ih.unsqueeze(1), xt, w_ih.transpose(1, 2)).view(D, T, B, 3 * H)
        w_hh_t, b_h = w_hh.transpose(1, 2).contiguous(), b_hh.unsqueeze(1)
        gh = x.new_empty(D, T, B, 3 * H)  # W_h h + b_h (its n part is kept for the backward)
        rz = x.new_empty(D, T, B, 2 * H)  # the gates r and z
        n = x.new_empty(D, T, B, H)  # the candidate state
        hs = x.new_empty(D, T + 1, B, H)  # hs[:, 0] = 0, hs[:, t + 1] = h_t
        hs[:, 0].zero_()
        # Each step's views, made at once (slicing in the loop costs as much as some of its ops).
        steps = zip(hs.unbind(1), hs[:, 1:].unbind(1), gi[..., :2 * H].unbind(1), gi[..., 2 * H:].unbind(1),
                    gh.unbind(1), gh[..., :2 * H].unbind(1), gh[..., 2 * H:].unbind(1), rz.unbind(1),
                    rz[..., :H].unbind(1), rz[..., H:].unbind(1), n.unbind(1))
        for h, h_next, gi_rz, gi_n, gh_t, gh_rz, gh_n, rz_t, r, z, n_t in steps:
            torch.baddbmm(b_h, h, w_hh_t, out=gh_t)
            torch.add(gi_rz, gh_rz, out=rz_t).sigmoid_()
            c = torch.addcmul(gi_n, r, gh_n, out=n_t).tanh_()
            torch.lerp(c, h, z, out=h_next)  # (1 - z) n + z h
        ctx.save_for_backward(xt, w_ih, w_hh, gh, rz, n, hs)
        return hs[:, 1:].transpose(1, 2).contiguous()  # (D, B, T, H); not a view of a saved buffer

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        xt, w_ih, w_hh, gh, rz, n, hs = ctx.saved_tensors
        D, T, B, H = n.shape
        r, z, h_prev = rz[..., :H], rz[..., H:], hs[:, :-1]
        # d/dh of each pre-activation, for every step at once: a_n (via n), a_z (via z), a_r (via a_n).
        to_an = (1 - z) * (1 - n * n)
        to_az = (h_prev - n) * z * (1 - z)
        an_to_ar = gh[..., 2 * H:] * r * (1 - r)
        dgh = torch.empty_like(gh)  # gradient of W_h h + b_h: (a_r, a_z, a_n * r)
        dan = torch.empty_like(n)  # gradient of a_n (the input part's third gate)
        dyt = dy.transpose(1, 2).contiguous()  # (D, T, B, H)
        carry = torch.zeros_like(n[:, 0])
        steps = zip(dyt.unbind(1), dgh.unbind(1), dgh[..., :H].unbind(1), dgh[..., H:2 * H].unbind(1),
                    dgh[..., 2 * H:].unbind(1), dan.unbind(1), to_an.unbind(1), to_az.unbind(1),
                    an_to_ar.unbind(1), r.unbind(1), z.unbind(1))
        for dy_t, d, d_r, d_z, d_n, dan_t, to_an_t, to_az_t, an_to_ar_t, r_t, z_t in reversed(list(steps)):
            dh = carry.add_(dy_t)
            a_n = torch.mul(dh, to_an_t, out=dan_t)
            torch.mul(dh, to_az_t, out=d_z)
            torch.mul(a_n, an_to_ar_t, out=d_r)
            torch.mul(a_n, r_t, out=d_n)
            carry = torch.bmm(d, w_hh).addcmul_(dh, z_t)
        dgh = dgh.view(D, T * B, 3 * H)
        dgi = torch.cat([dgh[..., :2 * H], dan.view(D, T * B, H)], -1)  # gradient of W_i x + b_i
        need_x, need_wi, need_wh, need_bi, need_bh = ctx.needs_input_grad
        dx = torch.bmm(dgi, w_ih).view(D, T, B, -1).transpose(1, 2) if need_x else None
        dw_ih = torch.bmm(dgi.transpose(1, 2), xt) if need_wi else None
        dw_hh = torch.bmm(dgh.transpose(1, 2), h_prev.reshape(D, T * B, H)) if need_wh else None
        db_ih = dgi.sum(1) if need_bi else None
        db_hh = dgh.sum(1) if need_bh else None
        return dx, dw_ih, dw_hh, db_ih, db_hh
