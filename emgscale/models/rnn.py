"""Recurrent encoders: LSTM / GRU (uni- or bidirectional) and a CNN front end + RNN hybrid.

Padding never enters the recurrence (see :class:`StackedRNN`). A unidirectional RNN is causal; its
span is unbounded to the left, a bidirectional one on both sides. Both encoders stream when causal
(the state: each conv's last ``kernel - 1`` frames and each RNN layer's hidden state).

The CNN + RNN hybrid (``cnn_rnn``) runs masked 1-D convolutions with temporal striding (e.g. 2 -> 62.5 Hz
outputs) before the RNN; this family gives the best published single-user emg2qwerty results.
"""

from __future__ import annotations

from contextlib import nullcontext as _nullcontext
import torch
from torch import Tensor, nn

from emgscale.models.common import Encoder, MaskedConv1d, Span, autocast_enabled, drop, zero_padding
from emgscale.models.config import CNNRNNConfig, RNNConfig
from emgscale.models.gru import gru_directions
from emgscale.models.streaming import LengthsOrState, NotStreamable, StreamState


class StackedRNN(nn.Module):
    """Multi-layer, optionally bidirectional LSTM / GRU over zero-padded (B, T, C) batches, without packing.

    Each layer is a unidirectional ``nn.LSTM``/``nn.GRU`` per direction. A forward direction never sees the
    padding after a sequence; the backward direction runs on each sequence reversed *within its own
    length* (padding stays at the end) and is reversed back, so padding never reaches valid outputs
    either. This avoids packed sequences, whose CPU GRU backward is ~10x slower, and keeps oneDNN's
    LSTM kernels in use. In CPU training a GRU layer's directions run together in
    :func:`~emgscale.models.gru.gru_directions` (the same function, a backward of its own; not without
    gradients, in streaming steps or under ``torch.compile``). The parameter count equals ``nn.LSTM/GRU(num_layers, bidirectional)``.

    Args:
        rnn_type: ``"lstm"`` or ``"gru"``.
        in_features: input features.
        hidden_size: units per direction.
        num_layers: layers.
        bidirectional: add a backward direction per layer (outputs concatenated).
        dropout: dropout between layers.
    """

    def __init__(self, rnn_type: str, in_features: int, hidden_size: int, num_layers: int, bidirectional: bool,
                 dropout: float) -> None:
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU}.get(rnn_type)
        if cls is None:
            raise ValueError(f"rnn type must be 'lstm' or 'gru', got {rnn_type!r}")
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"RNN hidden_size and num_layers must be >= 1, got {hidden_size} and {num_layers}")
        dirs = 2 if bidirectional else 1
        sizes = [in_features] + [hidden_size * dirs] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(cls(n, hidden_size, batch_first=True) for n in sizes)
        self.backward_layers = nn.ModuleList(cls(n, hidden_size, batch_first=True) for n in sizes) \
            if bidirectional else None
        self.dropout = drop(dropout)
        self.out_features = hidden_size * dirs

    def init_state(self, what: str = "rnn") -> list[Tensor]:
        """Each layer's hidden state (and cell state, LSTM), zero: (1, 1, hidden_size) each.

        Raises:
            NotStreamable: the RNN is bidirectional.
        """
        if self.backward_layers is not None:
            raise NotStreamable(f"{what}: a bidirectional RNN reads the whole future; set bidirectional: false")
        per = 2 if isinstance(self.forward_layers[0], nn.LSTM) else 1
        return [torch.zeros(1, 1, self.forward_layers[0].hidden_size) for _ in range(per * len(self.forward_layers))]

    def forward(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        """(B, T, C), (B,) -> (B, T, H * directions), zero beyond each length; streaming (``lengths`` a
        :class:`~emgscale.models.streaming.StreamState`), each layer starts from its state.

        Under autocast the RNN runs in float32 with autocast off (CPU RNN kernels want one dtype, and
        the input may arrive in bfloat16 from autocast matmuls).
        """
        B, T, _ = x.shape
        step = lengths if isinstance(lengths, StreamState) else None
        rev = None
        if self.backward_layers is not None:
            if isinstance(lengths, StreamState):
                self.init_state()  # raises NotStreamable
            else:
                t = torch.arange(T, device=x.device).view(1, T)
                n = lengths.view(B, 1)
                rev = torch.where(t < n, n - 1 - t, t).unsqueeze(-1)  # reverses each sequence within its length
        autocast_on = autocast_enabled(x.device.type)
        with torch.autocast(x.device.type, enabled=False) if autocast_on else _nullcontext():
            h = x.float() if autocast_on else x
            for i, layer in enumerate(self.forward_layers):
                if i > 0:
                    h = self.dropout(h)
                back_layer = self.backward_layers[i] if rev is not None else None
                back_in = h.gather(1, rev.expand(B, T, h.shape[-1])) if rev is not None else None
                if step is not None:
                    out = _layer_step(layer, h, step)
                elif _fused_gru(layer, h):
                    out, back = _gru_layer(layer, back_layer, h, back_in)
                else:
                    out = layer(h)[0]
                    back = back_layer(back_in)[0] if back_layer is not None else None
                if rev is not None:
                    out = torch.cat([out, back.gather(1, rev.expand(B, T, back.shape[-1]))], -1)
                h = out
        return h if isinstance(lengths, StreamState) else zero_padding(h, lengths)


def _fused_gru(layer: nn.Module, x: Tensor) -> bool:
    """Whether a GRU layer runs :func:`~emgscale.models.gru.gru_directions` on ``x``: on the CPU, with
    biases, when a backward will follow (its forward alone is no faster than ``nn.GRU``'s), outside
    ``torch.compile`` (which would unroll its time loop)."""
    return (isinstance(layer, nn.GRU) and layer.bias and x.device.type == "cpu" and torch.is_grad_enabled()
            and (x.requires_grad or layer.weight_hh_l0.requires_grad) and not torch.compiler.is_compiling())


def _gru_layer(forward: nn.GRU, backward: nn.GRU | None, x: Tensor, x_reversed: Tensor | None
               ) -> tuple[Tensor, Tensor | None]:
    """One GRU layer's directions in one loop: the forward one's output on ``x`` and the backward one's on
    ``x_reversed`` (None without it); each equals ``layer(input)[0]``."""
    layers = [forward] if backward is None else [forward, backward]
    xs = x.unsqueeze(0) if backward is None else torch.stack([x, x_reversed])
    params = [torch.stack([getattr(m, name) for m in layers])
              for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    y = gru_directions(xs, *params)
    return y[0], (y[1] if backward is not None else None)


def _layer_step(layer: nn.Module, x: Tensor, step: StreamState) -> Tensor:
    """One RNN layer over a streaming step's frames, from its state in ``step`` (which keeps the new one)."""
    if isinstance(layer, nn.LSTM):
        out, (h, c) = layer(x, step.take(2))
        step.put(h, c)
    else:
        out, h = layer(x, *step.take())
        step.put(h)
    return out


class RNNEncoder(Encoder):
    """LSTM or GRU over the frames; output ``hidden_size * (2 if bidirectional else 1)`` features.

    Args:
        rnn_type: ``"lstm"`` or ``"gru"``.
        in_features: input features.
        cfg: RNN settings.
    """

    def __init__(self, rnn_type: str, in_features: int, cfg: RNNConfig) -> None:
        super().__init__()
        self.rnn = StackedRNN(rnn_type, in_features, cfg.hidden_size, cfg.num_layers, cfg.bidirectional, cfg.dropout)
        self.dropout = drop(cfg.dropout)
        self.in_features = in_features
        self.out_features = self.rnn.out_features
        self.span = Span(None, None if cfg.bidirectional else 0, 1)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return lengths

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, C), (B,) -> (B, T, H), (B,)."""
        return self.encode(x, lengths), lengths

    def encode(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        return self.dropout(self.rnn(x, lengths))

    def init_state(self) -> list[Tensor]:
        """Each RNN layer's hidden (and cell) state; NotStreamable when bidirectional."""
        return self.rnn.init_state("rnn")


class CNNRNNEncoder(Encoder):
    """Masked strided convs (Conv1d, LayerNorm, GELU, dropout) then an RNN; see :class:`CNNRNNConfig`."""

    def __init__(self, in_features: int, cfg: CNNRNNConfig) -> None:
        super().__init__()
        if len(cfg.strides) != len(cfg.conv_channels):
            raise ValueError(f"cnn_rnn.strides {cfg.strides} must have one entry per conv layer "
                             f"(cnn_rnn.conv_channels {cfg.conv_channels})")
        if cfg.causal and cfg.bidirectional:
            raise ValueError("cnn_rnn.causal needs cnn_rnn.bidirectional: false")
        self.convs = nn.ModuleList()
        self.post = nn.ModuleList()
        n_in, span = in_features, Span(0, 0, 1)
        for ch, s in zip(cfg.conv_channels, cfg.strides):
            conv = MaskedConv1d(n_in, ch, cfg.kernel_size, stride=s, causal=cfg.causal)
            self.convs.append(conv)
            self.post.append(nn.Sequential(nn.LayerNorm(ch), nn.GELU(), drop(cfg.dropout)))
            span, n_in = span.then(conv.span), ch
        self.rnn = StackedRNN(cfg.rnn_type, n_in, cfg.hidden_size, cfg.num_layers, cfg.bidirectional, cfg.dropout)
        self.dropout = drop(cfg.dropout)
        self.in_features = in_features
        self.out_features = self.rnn.out_features
        self.span = span.then(Span(None, None if cfg.bidirectional else 0, 1))

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for conv in self.convs:
            lengths = conv.output_lengths(lengths)
        return lengths

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, C), (B,) -> (B, T', H), (B,) with ``T' = T / prod(strides)`` (rounded up per layer)."""
        return self.encode(x, lengths), self.output_lengths(lengths)

    def encode(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        for conv, post in zip(self.convs, self.post):
            x, lengths = conv(x, lengths)
            x = post(x)
        return self.dropout(self.rnn(x, lengths))

    def init_state(self) -> list[Tensor]:
        """Each conv's last ``kernel - 1`` frames, then each RNN layer's state, in the order they run."""
        return [*(s for conv in self.convs for s in conv.init_state("cnn_rnn")), *self.rnn.init_state("cnn_rnn")]
