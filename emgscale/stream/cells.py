"""Streaming counterparts of the causal model stages: each carries its state as explicit tensors.

A *cell* wraps the modules of an offline stage (sharing their weights) and exposes

* ``init_state() -> list[Tensor]``: the state at the start of a session (zeros, where the offline
  stage zero-pads), with fixed shapes, so a whole streaming step exports with ``torch.export``;
* ``forward(x (1, T, C), *state) -> (y (1, T', C'), *new_state)``: process ``T`` new frames.

Fed a sequence in pieces, a cell returns what the offline stage returns for the whole sequence
(float rounding aside), with the exceptions named on the cell (TDS blocks emit ``kernel - 1`` junk
frames first). Only causal stages stream; a non-causal one raises :class:`NotStreamable` at build time.
State rules, one per stage kind:

* causal conv (kernel ``K``, stride ``s``, fed multiples of ``s`` frames): the last ``K - 1`` input
  frames (zeros at the start = the offline left padding);
* TDS conv block (no padding): the last ``K - 1`` input frames;
* rolling normalisation: per-frame sums of the last ``W - 1`` frames (float64) and the frame count;
* RNN: the hidden (and cell) state of every layer;
* local / chunked causal attention: the last ``L`` keys and values (``L = left_frames``, or
  ``left_chunks * chunk + chunk - 1``) and the stream position (masks and rotary positions use it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgscale.models.attention import ConvSubsampling, SelfAttention, rotary
from emgscale.models.common import MaskedConv1d


class NotStreamable(ValueError):
    """A model stage that needs future input or unbounded state (the message says which and why)."""


class ConvCell(nn.Module):
    """A causal :class:`MaskedConv1d`; fed multiples of its stride, it returns ``T / stride`` frames.

    Args:
        conv: the offline layer (must be causal).
        what: the config key, for the error message.
    """

    def __init__(self, conv: MaskedConv1d, what: str = "conv") -> None:
        super().__init__()
        if not conv.causal and conv.kernel_size > 1:
            raise NotStreamable(f"{what}: a non-causal convolution reads future frames; set causal: true")
        self.conv, self.cache = conv.conv, conv.kernel_size - 1
        self.stride, self.channels = conv.stride, conv.conv.in_channels

    def init_state(self) -> list[Tensor]:
        return [torch.zeros(1, self.cache, self.channels)] if self.cache else []

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        buf = torch.cat([state[0], x], 1) if self.cache else x
        y = self.conv(buf.transpose(1, 2)).transpose(1, 2)
        return (y, buf[:, buf.shape[1] - self.cache:]) if self.cache else (y,)


class TDSConvCell(nn.Module):
    """A TDS conv block (no padding): cache of ``kernel - 1`` frames, so ``T`` in gives ``T`` out.

    The first ``kernel - 1`` outputs of a session read the zero cache and are junk; stacked, the
    first ``sum(kernel - 1)`` outputs are (:attr:`StreamStep.skip_frames` drops them).
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block, self.cache, self.features = block, block.kernel_width - 1, block.width * block.channels

    def init_state(self) -> list[Tensor]:
        return [torch.zeros(1, self.cache, self.features)] if self.cache else []

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        buf = torch.cat([state[0], x], 1) if self.cache else x
        y = self.block(buf)
        return (y, buf[:, buf.shape[1] - self.cache:]) if self.cache else (y,)


class RollingNormCell(nn.Module):
    """:class:`~emgscale.features.RollingNorm` over a stream of (1, T, 2, C, K) features."""

    def __init__(self, norm: nn.Module, bands: int, channels: int) -> None:
        super().__init__()
        self.norm, self.bands, self.channels = norm, bands, channels
        self.history = norm.window_frames - 1

    def init_state(self) -> list[Tensor]:
        zeros = torch.zeros(1, self.history, self.bands, self.channels, dtype=torch.float64)
        return [zeros, zeros.clone(), torch.zeros((), dtype=torch.float64)]

    def forward(self, x: Tensor, s1: Tensor, s2: Tensor, count: Tensor) -> tuple[Tensor, ...]:
        T, K, W = x.shape[1], x.shape[-1], self.norm.window_frames
        h1 = torch.cat([s1, x.sum(-1, dtype=torch.float64)], 1)  # (1, W - 1 + T, 2, C) per-frame sums
        h2 = torch.cat([s2, x.double().pow(2).sum(-1)], 1)
        c1 = F.pad(h1.cumsum(1), (0, 0, 0, 0, 1, 0))
        c2 = F.pad(h2.cumsum(1), (0, 0, 0, 0, 1, 0))
        w1, w2 = c1[:, W:] - c1[:, :T], c2[:, W:] - c2[:, :T]  # sums over each new frame's window
        n = (count + torch.arange(1, T + 1, dtype=torch.float64)).clamp(max=W).view(1, T, 1, 1) * K
        mean = w1 / n
        var = (w2 / n - mean.pow(2)).clamp(min=0.0)
        inv = torch.rsqrt(var + self.norm.eps).to(x.dtype).unsqueeze(-1)
        y = (x - mean.to(x.dtype).unsqueeze(-1)) * inv
        y = y * self.norm.weight.view(self.bands, self.channels, 1) + self.norm.bias.view(self.bands, self.channels, 1)
        return y, h1[:, T:], h2[:, T:], count + T


class RNNCell(nn.Module):
    """A unidirectional :class:`~emgscale.models.rnn.StackedRNN`: the state is each layer's hidden state."""

    def __init__(self, rnn: nn.Module, what: str = "rnn") -> None:
        super().__init__()
        if rnn.backward_layers is not None:
            raise NotStreamable(f"{what}: a bidirectional RNN reads the whole future; set bidirectional: false")
        self.layers = rnn.forward_layers
        self.lstm = isinstance(self.layers[0], nn.LSTM)
        self.hidden = self.layers[0].hidden_size

    def init_state(self) -> list[Tensor]:
        per = 2 if self.lstm else 1
        return [torch.zeros(1, 1, self.hidden) for _ in range(per * len(self.layers))]

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        new: list[Tensor] = []
        for i, layer in enumerate(self.layers):  # dropout between layers is the identity in eval mode
            if self.lstm:
                x, (h, c) = layer(x, (state[2 * i], state[2 * i + 1]))
                new += [h, c]
            else:
                x, h = layer(x, state[i])
                new.append(h)
        return (x, *new)


class AttentionCell(nn.Module):
    """Causal local or chunked :class:`SelfAttention` with a key/value cache of fixed size.

    Cached keys are stored before the rotary rotation: each step rotates the keys of
    ``[cache, new]`` by their place in that window and the queries by theirs, which gives the offline
    scores (rotary scores depend only on position differences) with shapes that never change.
    """

    def __init__(self, attn: SelfAttention, what: str = "attention") -> None:
        super().__init__()
        m = attn.mask
        if m.mode == "full":
            raise NotStreamable(f"{what}: full attention has unbounded state; use attention: local or chunk")
        if m.right > 0 or (m.mode == "chunk" and not m.causal and m.chunk_frames > 1):
            raise NotStreamable(f"{what}: attention reads future frames; set causal: true")
        self.attn, self.mask = attn, m
        self.cache = m.left_frames if m.mode == "local" else m.left_chunks * m.chunk_frames + m.chunk_frames - 1
        self.heads = attn.num_heads
        self.head_dim = attn.qkv.in_features // attn.num_heads

    def init_state(self) -> list[Tensor]:
        zeros = torch.zeros(1, self.heads, self.cache, self.head_dim)
        return [zeros, zeros.clone()] if self.cache else []

    def forward(self, x: Tensor, pos: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """x (1, T, D) at stream frames ``pos .. pos + T - 1`` -> (1, T, D), new cache."""
        B, T, D = x.shape
        L = self.cache
        q, k, v = self.attn.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if L:
            k, v = torch.cat([state[0], k], 2), torch.cat([state[1], v], 2)
        base = self.attn.rope_base
        kr = rotary(k, base)
        qr = rotary(torch.cat([q.new_zeros(B, self.heads, L, self.head_dim), q], 2), base)[:, :, L:] if L \
            else rotary(q, base)
        qpos = (pos + torch.arange(T)).view(T, 1)
        kpos = (pos - L + torch.arange(L + T)).view(1, L + T)
        allowed = (self.mask._allowed(qpos, kpos) & (kpos >= 0)) | (qpos == kpos)
        o = F.scaled_dot_product_attention(qr, kr, v, attn_mask=allowed.view(1, 1, T, L + T))
        y = self.attn.proj(o.transpose(1, 2).reshape(B, T, D))
        return (y, k[:, :, T:], v[:, :, T:]) if L else (y,)


class SubsamplingCell(nn.Module):
    """:class:`ConvSubsampling` (causal strided convs + GELU, or a Linear projection)."""

    def __init__(self, sub: ConvSubsampling, what: str) -> None:
        super().__init__()
        self.sub = sub
        self.convs = nn.ModuleList(ConvCell(c, what) for c in sub.convs)

    def init_state(self) -> list[Tensor]:
        return [s for c in self.convs for s in c.init_state()]

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if self.sub.proj is not None:
            return (self.sub.proj(x),)
        new: list[Tensor] = []
        i = 0
        for cell in self.convs:
            n = 1 if cell.cache else 0
            x, *s = cell(x, *state[i:i + n])
            x = self.sub.act(x)
            new += s
            i += n
        return (x, *new)
