"""Streaming versions of the encoders, built from an offline encoder and sharing its weights.

Each mirrors its encoder's ``forward`` stage by stage (the tests check equality for every causal
family); :func:`encoder_cell` picks the one for an encoder and :data:`STREAM_ENCODERS` maps encoder
classes to them, so a new encoder family streams by registering its cell.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from emgscale.models.common import Encoder
from emgscale.models.conformer import ConformerEncoder
from emgscale.models.rnn import CNNRNNEncoder, RNNEncoder
from emgscale.models.tds import TDSConvEncoder, block_order, to_channel_major
from emgscale.models.transformer import TransformerEncoder
from emgscale.stream.cells import AttentionCell, ConvCell, NotStreamable, RNNCell, SubsamplingCell, TDSConvCell


class StatefulSequence(nn.Module):
    """Runs cells in order, threading each one's slice of a flat state list.

    Subclasses fill ``self.cells`` (cells with ``init_state``) and call :meth:`run_cell`.
    """

    cells: nn.ModuleList

    def init_state(self) -> list[Tensor]:
        return [s for c in self.cells for s in c.init_state()]

    def sizes(self) -> list[int]:
        return [len(c.init_state()) for c in self.cells]


def _split(state: tuple[Tensor, ...], sizes: list[int]) -> list[tuple[Tensor, ...]]:
    out, i = [], 0
    for n in sizes:
        out.append(tuple(state[i:i + n]))
        i += n
    return out


class TDSStream(StatefulSequence):
    """:class:`TDSConvEncoder`: conv blocks with frame caches, fully connected blocks as they are.

    ``skip_frames`` (the encoder's ``shrink``) junk frames come out first.
    """

    def __init__(self, enc: TDSConvEncoder) -> None:
        super().__init__()
        blocks = list(enc.tds_conv_blocks)
        self.cells = nn.ModuleList(TDSConvCell(b) for b in blocks[0::2])
        self.fcs = nn.ModuleList(blocks[1::2])
        self.skip_frames = enc.shrink
        self.channel_major = enc.channel_major
        self._sizes = self.sizes()

    def forward(self, x: Tensor, pos: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        new: list[Tensor] = []
        layout = None  # as TDSConvEncoder: the reference's feature order outside, width-major inside
        for cell, fc, s in zip(self.cells, self.fcs, _split(state, self._sizes)):
            if self.channel_major:
                x, layout = block_order(x, layout, cell.block.channels)
            x, *s2 = cell(x, *s)
            x = fc(x)
            new += s2
        if layout is not None:
            x = to_channel_major(x, layout)
        return (x, *new)


class CNNRNNStream(StatefulSequence):
    """:class:`CNNRNNEncoder` (causal convs, unidirectional RNN) or :class:`RNNEncoder`."""

    def __init__(self, enc: "CNNRNNEncoder | RNNEncoder") -> None:
        super().__init__()
        convs = list(getattr(enc, "convs", []))
        self.post = nn.ModuleList(getattr(enc, "post", []))
        self.cells = nn.ModuleList([*(ConvCell(c, "cnn_rnn") for c in convs), RNNCell(enc.rnn, "rnn")])
        self.dropout = enc.dropout
        self.skip_frames = 0
        self._sizes = self.sizes()

    def forward(self, x: Tensor, pos: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        states = _split(state, self._sizes)
        new: list[Tensor] = []
        for cell, post, s in zip(self.cells[:-1], self.post, states):
            x, *s2 = cell(x, *s)
            x = post(x)
            new += s2
        x, *s2 = self.cells[-1](x, *states[-1])
        return (self.dropout(x), *new, *s2)


class AttentionStream(StatefulSequence):
    """:class:`ConformerEncoder` or :class:`TransformerEncoder` with causal convs and local/chunked attention."""

    def __init__(self, enc: "ConformerEncoder | TransformerEncoder") -> None:
        super().__init__()
        what = "conformer" if isinstance(enc, ConformerEncoder) else "transformer"
        self.conformer = isinstance(enc, ConformerEncoder)
        self.blocks = enc.blocks
        cells: list[nn.Module] = [SubsamplingCell(enc.subsampling_layer, what)]
        for b in enc.blocks:
            cells.append(AttentionCell(b.attn, what))
            if self.conformer:
                cells.append(ConvCell(b.conv.depthwise, f"{what}.conv_kernel"))
        self.cells = nn.ModuleList(cells)
        self.norm = getattr(enc, "norm", None)
        self.skip_frames = 0
        self._sizes = self.sizes()

    def forward(self, x: Tensor, pos: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """``pos``: stream position (output frames so far) of the first new frame."""
        states = _split(state, self._sizes)
        x, *new = self.cells[0](x, *states[0])
        per = 2 if self.conformer else 1
        for i, b in enumerate(self.blocks):
            attn, s_attn = self.cells[1 + per * i], states[1 + per * i]
            if self.conformer:
                x = x + 0.5 * b.ffn1(b.ffn1_norm(x))
                y, *s = attn(b.attn_norm(x), pos, *s_attn)
                x = x + b.dropout(y)
                new += s
                cm = b.conv
                h = nn.functional.glu(cm.pointwise1(cm.norm(x)), dim=-1)
                h, *s = self.cells[2 + per * i](h, *states[2 + per * i])
                new += s
                x = x + cm.dropout(cm.pointwise2(cm.act(cm.conv_norm(h))))
                x = b.norm(x + 0.5 * b.ffn2(b.ffn2_norm(x)))
            else:
                y, *s = attn(b.norm1(x), pos, *s_attn)
                x = x + b.dropout(y)
                new += s
                x = x + b.ffn(b.norm2(x))
        if self.norm is not None:
            x = self.norm(x)
        return (x, *new)


#: encoder class -> streaming builder
STREAM_ENCODERS: dict[type, Callable[[Encoder], StatefulSequence]] = {
    TDSConvEncoder: TDSStream,
    CNNRNNEncoder: CNNRNNStream,
    RNNEncoder: CNNRNNStream,
    ConformerEncoder: AttentionStream,
    TransformerEncoder: AttentionStream,
}


def encoder_cell(encoder: Encoder) -> StatefulSequence:
    """The streaming version of ``encoder``.

    Raises:
        NotStreamable: the encoder family has no streaming version, or the model is not causal.
    """
    for cls in type(encoder).__mro__:
        if cls in STREAM_ENCODERS:
            return STREAM_ENCODERS[cls](encoder)
    raise NotStreamable(f"no streaming version of encoder {type(encoder).__name__}; "
                        f"known: {', '.join(c.__name__ for c in STREAM_ENCODERS)}")

