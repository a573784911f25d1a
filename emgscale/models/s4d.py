"""S4D encoder: diagonal state-space layers (Gu, Gupta, Goel, Ré 2022, "On the Parameterization and
Initialization of Diagonal State Space Models") over a causal strided conv front end.

Front end: a causal conv over the 125 Hz feature frames (kernel ``kernel_size``, stride ``stride``:
5 -> 25 Hz outputs, 4 -> 31.25 Hz), LayerNorm, GELU. Then ``num_layers`` S4D blocks as the paper's
example model: ``z = Linear-GLU(dropout(GELU(S4D(x))))``, ``x = LayerNorm(x + dropout(z))``
(``prenorm``: ``x = x + dropout(z(LayerNorm(x)))``, and a LayerNorm at the end).

An S4D layer runs, for each of its ``H = d_model`` channels, ``M = d_state / 2`` complex modes (their
conjugates are implicit, so the real state has ``d_state`` numbers per channel)::

    x'(t) = A x(t) + u(t)        y(t) = 2 Re(C x(t)) + D u(t)       A_m = -exp(log_A_real) + i A_imag
    S4D-Lin initialisation:      A_m = -1/2 + i pi m,  C ~ CN(0, 1),  D ~ N(0, 1),
                                 dt = exp(log_dt) log-uniform in [dt_min, dt_max] per channel
    zero-order hold:             Ā = exp(dt A),  B̄ = (Ā - 1) / A  (B = 1, folded into C' = C B̄)
    convolution mode (offline):  K_l = 2 Re(C' Ā^l),  y = K * u + D u   (an FFT convolution)
    recurrent mode (streaming):  s_k = Ā s_{k-1} + u_k,   y_k = 2 Re(C' s_k) + D u_k

Both modes are written in real arithmetic (complex numbers as (re, im) pairs), so the streaming step
exports with ``torch.export``; ``tests/test_s4d.py`` holds the two modes equal. The layer starts from a
zero state (the convolution's implicit zero past), which is the stream's initial state.

Causal by construction: frame ``j`` of the output reads features up to ``j * stride`` (span left
unbounded: the state remembers the whole past, like an RNN). Streaming state: the front-end conv's last
``kernel_size - 1`` frames and each layer's complex state, ``(1, 2, H, M)``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgscale.models.common import Encoder, MaskedConv1d, Span, autocast_enabled, drop, zero_padding
from emgscale.models.config import S4DConfig
from emgscale.models.streaming import LengthsOrState, StreamState

#: the kernel is built in pieces of this many frames (bounds memory for whole-session inference)
KERNEL_CHUNK_FRAMES = 1024


def causal_convolution(u: Tensor, k: Tensor) -> Tensor:
    """``y[..., t] = sum_{j <= t} k[..., j] u[..., t - j]`` per channel: (B, H, L), (H, L) -> (B, H, L).

    Through the FFT (zero-padded to ``2 L``, so nothing wraps around), O(L log L), at every length: a
    direct grouped convolution (O(L^2)) was faster only below ~32 frames on a CPU (batch 32, H = 256),
    shorter than a training window at 25 Hz, and the streaming step uses the recurrence.
    """
    L = k.shape[-1]
    n = 2 * L
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]


class S4D(nn.Module):
    """One diagonal state-space layer (S4D-Lin, ZOH); (B, T, H) -> (B, T, H). See the module docstring.

    Args:
        d_model: channels H.
        d_state: real state size N per channel (even).
        dt_min, dt_max: range of the log-uniform initial step.
    """

    def __init__(self, d_model: int, d_state: int, dt_min: float, dt_max: float) -> None:
        super().__init__()
        H, M = d_model, d_state // 2
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_A_real = nn.Parameter(torch.full((H, M), math.log(0.5)))  # Re A = -1/2
        self.A_imag = nn.Parameter(math.pi * torch.arange(M, dtype=torch.float32).expand(H, M).clone())  # Im A = pi m
        self.C = nn.Parameter(torch.randn(H, M, 2) * math.sqrt(0.5))  # complex C ~ CN(0, 1) as (re, im)
        self.D = nn.Parameter(torch.randn(H))
        self.d_model, self.modes = H, M

    def discrete(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """ZOH discretisation: ``(log |Ā|, arg Ā, Re C', Im C')``, each (H, M)."""
        dt = self.log_dt.exp().unsqueeze(-1)
        a_re, a_im = -self.log_A_real.exp(), self.A_imag
        log_r, theta = dt * a_re, dt * a_im
        # B̄ = (Ā - 1) / A, with Ā - 1 = expm1(log_r) cos(theta) - 2 sin^2(theta / 2) + i e^log_r sin(theta)
        # (expm1 and the half-angle keep it exact when dt A is small)
        p = torch.expm1(log_r) * theta.cos() - 2 * (theta / 2).sin().square()
        q = log_r.exp() * theta.sin()
        den = a_re.square() + a_im.square()
        b_re, b_im = (p * a_re + q * a_im) / den, (q * a_re - p * a_im) / den
        c_re, c_im = self.C[..., 0], self.C[..., 1]
        return log_r, theta, c_re * b_re - c_im * b_im, c_re * b_im + c_im * b_re

    def kernel(self, length: int) -> Tensor:
        """The convolution kernel ``K_l = 2 Re(C' Ā^l)``, ``l < length``: (H, length), the parameters' dtype."""
        log_r, theta, c_re, c_im = (t.unsqueeze(-1) for t in self.discrete())
        pieces = []
        for start in range(0, length, KERNEL_CHUNK_FRAMES):
            ls = torch.arange(start, min(length, start + KERNEL_CHUNK_FRAMES), device=theta.device)
            # theta * l reaches thousands of radians, where float32 keeps no digit of the phase: reduce it in
            # float64 first (the recurrence accumulates the rotation step by step and needs no such care)
            phase = torch.remainder(theta.double() * ls.double(), 2 * math.pi).to(theta.dtype)  # (H, M, l)
            mag = (log_r * ls).exp()
            pieces.append(2 * (mag * (c_re * phase.cos() - c_im * phase.sin())).sum(1))
        return torch.cat(pieces, -1) if pieces else theta.new_zeros(self.d_model, 0)

    def init_state(self) -> list[Tensor]:
        """The zero complex state, ``(1, 2, H, M)`` (real and imaginary parts)."""
        return [torch.zeros(1, 2, self.d_model, self.modes)]

    def recurrence(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Recurrent mode, one frame at a time: (B, T, H), state (B, 2, H, M) -> (B, T, H), new state."""
        log_r, theta, c_re, c_im = self.discrete()
        r = log_r.exp()
        a_re, a_im = r * theta.cos(), r * theta.sin()
        s_re, s_im = state[:, 0], state[:, 1]
        ys = []
        for t in range(u.shape[1]):
            s_re, s_im = a_re * s_re - a_im * s_im + u[:, t, :, None], a_re * s_im + a_im * s_re
            ys.append(2 * (c_re * s_re - c_im * s_im).sum(-1))
        y = torch.stack(ys, 1) if ys else u.new_zeros(u.shape)
        return y + u * self.D, torch.stack([s_re, s_im], 1)

    def forward(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        """(B, T, H) -> (B, T, H) in the parameters' dtype: convolution mode given ``lengths`` (padding
        zeroed first, so it never reaches a valid frame), recurrent mode given a :class:`StreamState`
        (one state tensor).

        Runs with autocast off, in float32 under it (FFTs and long sums; CPU FFTs take no bfloat16).
        """
        if isinstance(lengths, StreamState):
            (state,) = lengths.take()
            y, new = self.recurrence(x.to(self.D.dtype), state)
            lengths.put(new)
            return y
        on = autocast_enabled(x.device.type)
        with torch.autocast(x.device.type, enabled=False) if on else nullcontext():
            u = zero_padding(x.to(self.D.dtype), lengths)
            y = causal_convolution(u.transpose(1, 2), self.kernel(u.shape[1])).transpose(1, 2)
            return y + u * self.D


class S4DBlock(nn.Module):
    """S4D -> GELU -> dropout -> Linear(H, 2H) -> GLU -> dropout, residual, LayerNorm (post or pre)."""

    def __init__(self, cfg: S4DConfig) -> None:
        super().__init__()
        self.ssm = S4D(cfg.d_model, cfg.d_state, cfg.dt_min, cfg.dt_max)
        self.dropout1, self.dropout2 = drop(cfg.dropout), drop(cfg.dropout)
        self.output_linear = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.prenorm = cfg.prenorm

    def forward(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        z = self.norm(x) if self.prenorm else x
        z = self.dropout1(F.gelu(self.ssm(z, lengths)))
        z = self.dropout2(F.glu(self.output_linear(z), -1))
        return x + z if self.prenorm else self.norm(x + z)


class S4DEncoder(Encoder):
    """Causal strided conv front end, then S4D blocks; see the module docstring and :class:`S4DConfig`.

    Args:
        in_features: features per input frame.
        cfg: the settings.
    """

    def __init__(self, in_features: int, cfg: S4DConfig) -> None:
        super().__init__()
        for key in ("d_model", "num_layers", "kernel_size", "stride"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"s4d.{key} must be >= 1, got {getattr(cfg, key)}")
        if cfg.d_state < 2 or cfg.d_state % 2:
            raise ValueError(f"s4d.d_state must be even and >= 2 (complex modes come in conjugate pairs), "
                             f"got {cfg.d_state}")
        if cfg.kernel_size < cfg.stride:
            raise ValueError(f"s4d.kernel_size {cfg.kernel_size} must be >= s4d.stride {cfg.stride} "
                             f"(else some frames reach no output)")
        if not 0.0 < cfg.dt_min <= cfg.dt_max:
            raise ValueError(f"s4d.dt_min and s4d.dt_max must satisfy 0 < dt_min <= dt_max, got "
                             f"{cfg.dt_min} and {cfg.dt_max}")
        self.conv = MaskedConv1d(in_features, cfg.d_model, cfg.kernel_size, stride=cfg.stride, causal=True)
        self.conv_post = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.GELU(), drop(cfg.dropout))
        self.blocks = nn.ModuleList(S4DBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.prenorm else nn.Identity()
        self.in_features, self.out_features = in_features, cfg.d_model
        self.span = self.conv.span.then(Span(None, 0, 1))

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """``ceil(L / stride)``."""
        return self.conv.output_lengths(lengths)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, C), (B,) -> (B, ceil(T / stride), d_model), (B,)."""
        out_lengths = self.output_lengths(lengths)
        return zero_padding(self.encode(x, lengths), out_lengths), out_lengths

    def encode(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        x, lengths = self.conv(x, lengths)
        x = self.conv_post(x)
        for block in self.blocks:
            x = block(x, lengths)
        return self.final_norm(x)

    def init_state(self) -> list[Tensor]:
        """The front-end conv's last ``kernel_size - 1`` frames, then each layer's complex state."""
        return [*self.conv.init_state("s4d"), *(s for b in self.blocks for s in b.ssm.init_state())]

    def recurrent_flops(self, frames: int) -> int:
        """FLOPs of the S4D recurrences over ``frames`` output frames (batch 1): the elementwise work of the
        streaming form (per mode and frame: 7 for the complex state update with its input, 4 for the
        output's real part and sum; per channel 3 for the factor 2 and the D skip), which
        ``FlopCounterMode`` does not count."""
        return frames * sum(11 * b.ssm.d_model * b.ssm.modes + 3 * b.ssm.d_model for b in self.blocks)


__all__ = ["S4D", "S4DBlock", "S4DConfig", "S4DEncoder", "causal_convolution"]
