"""Self-attention for long EMG sequences: rotary positions, local / chunked / full masks, conv subsampling.

Attention modes (per layer, at the subsampled frame rate):

* ``local``: frame ``t`` attends to frames ``t - left_frames .. t + right_frames``. Queries are processed
  in blocks, each against only its window of keys, so memory is ``O(T * (block + left + right))`` and
  whole sessions (tens of thousands of frames) fit.
* ``chunk``: frames are cut into chunks of ``chunk_frames``; a frame attends to its own chunk and the
  ``left_chunks`` chunks before it (streaming-style). Outputs depend on where chunks start, so chunked
  inference must start its pieces at multiples of the chunk.
* ``full``: every frame attends to every frame (fine for training windows, quadratic for sessions).

``causal`` additionally forbids attending to later frames. Keys beyond each sequence's length are
masked (and a query may always see itself, so padded queries never produce NaNs). Positions are
rotary (RoPE): scores depend only on frame differences, so a chunk behaves like the same frames
inside a whole session.

Streaming (causal ``local`` or ``chunk`` attention), :class:`SelfAttention` keeps the last
``span.left`` keys and values (before the rotary rotation: each step rotates the keys of
``[cache, new]`` by their place in that window and the queries by theirs, which gives the offline
scores with shapes that never change) and masks by stream position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgscale.models.common import MaskedConv1d, Span, drop, time_mask
from emgscale.models.streaming import LengthsOrState, NotStreamable, StreamState


@dataclass(frozen=True)
class AttentionMask:
    """Which keys a query may see; see the module docstring.

    Attributes:
        mode: ``"local"``, ``"chunk"`` or ``"full"``.
        left_frames, right_frames: ``local`` window.
        chunk_frames, left_chunks: ``chunk`` geometry.
        causal: also forbid later frames.
    """

    mode: str = "local"
    left_frames: int = 64
    right_frames: int = 64
    chunk_frames: int = 32
    left_chunks: int = 2
    causal: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("local", "chunk", "full"):
            raise ValueError(f"attention must be 'local', 'chunk' or 'full', got {self.mode!r}")
        if min(self.left_frames, self.right_frames, self.left_chunks) < 0 or self.chunk_frames < 1:
            raise ValueError(f"attention window sizes must be >= 0 (chunk_frames >= 1), got {self}")

    @property
    def right(self) -> int:
        return 0 if self.causal else self.right_frames

    @property
    def span(self) -> Span:
        """Receptive field of one attention layer, in frames."""
        if self.mode == "local":
            return Span(self.left_frames, self.right, 1)
        if self.mode == "chunk":
            c = self.chunk_frames
            return Span(self.left_chunks * c + c - 1, 0 if self.causal else c - 1, 1)
        return Span(None, 0 if self.causal else None, 1)

    @property
    def alignment_frames(self) -> int:
        """Frames a chunk of a longer sequence must start on for its outputs to match."""
        return self.chunk_frames if self.mode == "chunk" else 1

    def _geometry(self, T: int) -> tuple[int, int, int]:
        """(query block, keys before a block, keys after a block's start + block)."""
        if self.mode == "chunk":
            return self.chunk_frames, self.left_chunks * self.chunk_frames, 0
        block = max(32, self.left_frames, self.right)
        if T <= block:
            return T, 0, 0  # one block, all keys
        return block, self.left_frames, self.right

    def _allowed(self, qpos: Tensor, kpos: Tensor) -> Tensor:
        if self.mode == "local":
            ok = (kpos - qpos >= -self.left_frames) & (kpos - qpos <= self.right)
        else:  # chunk
            qc, kc = torch.div(qpos, self.chunk_frames, rounding_mode="floor"), torch.div(
                kpos, self.chunk_frames, rounding_mode="floor")
            ok = (kc >= qc - self.left_chunks) & (kc <= qc)
        return ok & (kpos <= qpos) if self.causal else ok

    def attend(self, q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, dropout_p: float = 0.0) -> Tensor:
        """Masked scaled dot-product attention.

        Args:
            q, k, v: (B, H, T, Dh).
            lengths: (B,) valid frames.
            dropout_p: attention dropout.

        Returns:
            (B, H, T, Dh).
        """
        B, H, T, D = q.shape
        lengths = lengths.clamp(min=1)
        if self.mode == "full":
            if not self.causal and bool((lengths >= T).all()):
                return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            mask = time_mask(lengths, T)[:, None, None, :]
            if self.causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        block, before, after = self._geometry(T)
        nb = -(-T // block)
        tq = nb * block
        win = block + before + after
        pos = torch.arange(tq, device=q.device)
        qpos = pos.view(nb, block, 1)
        kpos = (pos[::block].view(nb, 1) - before + torch.arange(win, device=q.device).view(1, win)).view(nb, 1, win)
        kvalid = F.pad(time_mask(lengths, T), (before, tq - T + after), value=False).unfold(1, win, block)
        mask = (self._allowed(qpos, kpos).unsqueeze(0) & kvalid.unsqueeze(2)) | (qpos == kpos).unsqueeze(0)
        # (B * blocks, H, block or window, D): 4-D so every SDPA backend accepts it.
        qb = F.pad(q, (0, 0, 0, tq - T)).view(B, H, nb, block, D).transpose(1, 2).reshape(B * nb, H, block, D)

        def windows(t: Tensor) -> Tensor:
            t = F.pad(t, (0, 0, before, tq - T + after)).unfold(2, win, block)  # (B, H, nb, D, win)
            return t.permute(0, 2, 1, 4, 3).reshape(B * nb, H, win, D)

        out = F.scaled_dot_product_attention(qb, windows(k), windows(v), attn_mask=mask.view(B * nb, 1, block, win),
                                             dropout_p=dropout_p)
        return out.view(B, nb, H, block, D).transpose(1, 2).reshape(B, H, tq, D)[:, :, :T]


def rotary(x: Tensor, base: float = 10000.0, start: int = 0) -> Tensor:
    """Rotary position embedding of (B, H, T, Dh) queries or keys at positions start..start+T-1 (Dh even)."""
    T, D = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float64) / D)
    ang = torch.arange(start, start + T, device=x.device, dtype=torch.float64)[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and an :class:`AttentionMask`.

    Args:
        d_model: model width (divisible by ``num_heads``, head size even).
        num_heads: heads.
        dropout: attention-weight dropout.
        mask: which keys each query sees.
        rope_base: rotary base.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float, mask: AttentionMask,
                 rope_base: float = 10000.0) -> None:
        super().__init__()
        if num_heads < 1 or d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model {d_model} must split into {num_heads} heads of even size")
        self.num_heads, self.mask, self.rope_base = num_heads, mask, rope_base
        drop(dropout)
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        """(B, T, D), (B,) -> (B, T, D); streaming, ``lengths`` is the step's
        :class:`~emgscale.models.streaming.StreamState` (key/value cache, position)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if isinstance(lengths, StreamState):
            o = self._attend_cached(q, k, v, lengths)
        else:
            q, k = rotary(q, self.rope_base), rotary(k, self.rope_base)
            o = self.mask.attend(q, k, v, lengths, self.dropout if self.training else 0.0)
        return self.proj(o.transpose(1, 2).reshape(B, T, D))

    def init_state(self, what: str = "attention") -> list[Tensor]:
        """The key and value cache, zero: (1, heads, L, Dh) each, ``L = mask.span.left`` (none for 0).

        Raises:
            NotStreamable: full attention (unbounded state) or attention that reads future frames.
        """
        m = self.mask
        if m.mode == "full":
            raise NotStreamable(f"{what}: full attention has unbounded state; use attention: local or chunk")
        if m.span.right:
            raise NotStreamable(f"{what}: attention reads future frames; set causal: true")
        cache = int(m.span.left or 0)
        zeros = torch.zeros(1, self.num_heads, cache, self.qkv.in_features // self.num_heads)
        return [zeros, zeros.clone()] if cache else []

    def _attend_cached(self, q: Tensor, k: Tensor, v: Tensor, step: StreamState) -> Tensor:
        """(B, H, T, Dh) of the frames at ``step.pos ..`` against the cached keys and values before them."""
        B, H, T, Dh = q.shape
        L = int(self.mask.span.left or 0)
        if L:
            k_cache, v_cache = step.take(2)
            k, v = torch.cat([k_cache, k], 2), torch.cat([v_cache, v], 2)
            step.put(k[:, :, T:], v[:, :, T:])
        qpos = (step.pos + torch.arange(T, device=q.device)).view(T, 1)
        kpos = (step.pos - L + torch.arange(L + T, device=q.device)).view(1, L + T)
        allowed = (self.mask._allowed(qpos, kpos) & (kpos >= 0)) | (qpos == kpos)
        return F.scaled_dot_product_attention(rotary(q, self.rope_base, L), rotary(k, self.rope_base), v,
                                              attn_mask=allowed.view(1, 1, T, L + T))


class FeedForward(nn.Module):
    """``Linear(d, ffn) -> activation -> dropout -> Linear(ffn, d) -> dropout``."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        act = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}[activation]
        self.net = nn.Sequential(nn.Linear(d_model, ffn_dim), act(), drop(dropout), nn.Linear(ffn_dim, d_model),
                                 drop(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvSubsampling(nn.Module):
    """Masked strided Conv1d + GELU layers (one per stride) mapping (B, T, C) to (B, T', d_model).

    With no strides it is a Linear projection. Each layer gives ``ceil(L / stride)`` frames.
    """

    def __init__(self, in_features: int, d_model: int, strides: list[int], kernel_size: int, causal: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        n_in, span = in_features, Span(0, 0, 1)
        for s in strides:
            conv = MaskedConv1d(n_in, d_model, kernel_size, stride=s, causal=causal)
            self.convs.append(conv)
            span, n_in = span.then(conv.span), d_model
        self.proj = nn.Linear(in_features, d_model) if not strides else None
        self.act = nn.GELU()
        self.span = span

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for conv in self.convs:
            lengths = conv.output_lengths(lengths)
        return lengths

    def init_state(self, what: str = "subsampling") -> list[Tensor]:
        """Each conv's cache (:meth:`MaskedConv1d.init_state`)."""
        return [s for conv in self.convs for s in conv.init_state(what)]

    def forward(self, x: Tensor, lengths: LengthsOrState) -> tuple[Tensor, LengthsOrState]:
        if self.proj is not None:
            return self.proj(x), lengths
        for conv in self.convs:
            x, lengths = conv(x, lengths)
            x = self.act(x)
        return x, lengths


def layers_span(per_layer: Span, num_layers: int) -> Span:
    """Span of ``num_layers`` identical stride-1 layers."""
    out = Span(0, 0, 1)
    for _ in range(num_layers):
        out = out.then(per_layer)
    return out

