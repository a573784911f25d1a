"""TDS-Conv encoder: the emg2qwerty paper's baseline (time-depth-separable convolutions, Hannun et al. 2019).

Each block pair is a temporal convolution over ``channels`` groups of ``width = F // channels`` features
(kernel ``kernel_width`` frames, no padding, ReLU, residual from the *last* input frames, LayerNorm)
and a two-layer fully connected block (residual, LayerNorm). Every block shortens the sequence by
``kernel_width - 1`` frames, so ``out = L - len(block_channels) * (kernel_width - 1)`` (4 x 31 = 124 for
the reference) and output frame ``j`` reads input frames ``j .. j + 124``: the encoder is causal with
respect to its last input frame and has a 125-frame (1 s) receptive field.

Feature order: the reference groups the F = 768 features *channel-major*: feature ``c * width + w`` is
conv channel ``c`` at position ``w``, so with the per-band MLP's output ``[left 384 | right 384]`` every
conv position mixes both wrist bands. The encoder's input and output are in that order (the order the
reference's ``TDSConvEncoder`` and its ``Linear`` head see), so it computes the reference's function.

Inside, the blocks run on a *width-major* copy (``F = width x channels``: position ``w * C + c`` holds
reference feature ``c * W + w``), where ``(B, T, F)`` is already a channels-last ``(B, channels, T, width)``
tensor and the ``Conv2d`` (kernel ``(kernel_width, 1)``) reads it without a copy. The order changes only at
the encoder's edges (and between blocks of different ``channels``), one transpose each
(:func:`to_width_major` / :func:`to_channel_major`); the LayerNorm and fully connected weights of a block
are stored in its width-major order, and :mod:`emgscale.models.reference` maps them to the reference's
layout. ``feature_order: width_major`` skips the edge transposes: the encoder emgscale had before it
matched the reference (each conv position then sees one band only), kept to load checkpoints trained
with it.

Streaming, each conv block keeps its last ``kernel_width - 1`` input frames (in its width-major
order), so ``T`` new frames give ``T`` outputs; the first ``shrink`` outputs of a stream read the zero
initial state and are junk (``stream_skip_frames``).
"""

from __future__ import annotations

from torch import Tensor, nn

from emgscale.models.common import Encoder, Span, drop, zero_padding
from emgscale.models.config import FEATURE_ORDERS, TDSConfig
from emgscale.models.streaming import LengthsOrState, StreamState, history_state


def to_width_major(x: Tensor, channels: int) -> Tensor:
    """Reorder the last dim from the reference's ``c * W + w`` to ``w * C + c`` (``C = channels``).

    Also maps a (…, F) parameter stored in the reference's order to this module's (apply it to both
    dims of a Linear weight).
    """
    *lead, f = x.shape
    return x.reshape(*lead, channels, f // channels).transpose(-1, -2).reshape(*lead, f)


def to_channel_major(x: Tensor, channels: int) -> Tensor:
    """Inverse of :func:`to_width_major`: last dim from ``w * C + c`` back to ``c * W + w``."""
    *lead, f = x.shape
    return x.reshape(*lead, f // channels, channels).transpose(-1, -2).reshape(*lead, f)


def block_order(x: Tensor, layout: int | None, channels: int) -> tuple[Tensor, int]:
    """``x`` in the width-major order of a block of ``channels``, from the order ``layout`` (the channels of
    the current width-major order; None = the reference's channel-major order). Returns ``(x, channels)``.

    The one rule of where the encoder reorders its features: features are reordered per frame, so
    streamed chunks reorder alike.
    """
    if layout == channels:
        return x, layout
    if layout is not None:  # blocks of different channels: back to the reference's order first
        x = to_channel_major(x, layout)
    return to_width_major(x, channels), channels


class TDSConv2dBlock(nn.Module):
    """Temporal conv over ``channels`` groups of ``width`` features, ReLU, residual, LayerNorm.

    Args:
        num_features: F = channels x width.
        channels: conv channels.
        kernel_width: temporal kernel in frames (no padding: the output is ``kernel_width - 1`` shorter).
    """

    def __init__(self, num_features: int, channels: int, kernel_width: int) -> None:
        super().__init__()
        if channels < 1 or num_features % channels:
            raise ValueError(f"tds.block_channels entry {channels} does not divide the {num_features} features")
        self.channels, self.width, self.kernel_width = channels, num_features // channels, kernel_width
        self.conv2d = nn.Conv2d(channels, channels, kernel_size=(kernel_width, 1))
        self.layer_norm = nn.LayerNorm(num_features)

    def init_state(self) -> list[Tensor]:
        """The last ``kernel_width - 1`` input frames, zero (none for a kernel of 1)."""
        return history_state(self.kernel_width - 1, self.width * self.channels)

    def forward(self, x: Tensor, step: StreamState | None = None) -> Tensor:
        """(B, T, F) -> (B, T - kernel_width + 1, F); streaming (``step`` given), the block's last
        ``kernel_width - 1`` input frames go first, so ``T`` frames in give ``T`` out."""
        if step is not None:
            x = step.with_history(x, self.kernel_width - 1)
        B, T, F = x.shape
        h = x.view(B, T, self.width, self.channels).permute(0, 3, 1, 2)  # (B, C, T, W), channels-last memory
        h = self.conv2d(h).relu_()  # in place: the conv's backward does not need its output
        t_out = h.shape[2]
        h = h.permute(0, 2, 3, 1).reshape(B, t_out, F)
        return self.layer_norm(h + x[:, T - t_out:])


class TDSFullyConnectedBlock(nn.Module):
    """``LayerNorm(x + Linear(ReLU(Linear(x))))`` with optional dropout on the branch."""

    def __init__(self, num_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc_block = nn.Sequential(nn.Linear(num_features, num_features), nn.ReLU(inplace=True),
                                      nn.Linear(num_features, num_features))
        self.dropout = drop(dropout)
        self.layer_norm = nn.LayerNorm(num_features)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(self.fc_block(x))
        # In place (as the reference) saves a (B, T, F) allocation: neither Linear's nor dropout's backward
        # reads h. Under autocast h is bf16 and x float32: out of place, so the sum stays float32.
        h = h.add_(x) if h.dtype == x.dtype else h + x
        return self.layer_norm(h)


class TDSConvEncoder(Encoder):
    """Stack of (TDS conv block, fully connected block) pairs; see the module docstring.

    Args:
        in_features: F, features per frame (768 for the reference).
        cfg: block settings.
    """

    def __init__(self, in_features: int, cfg: TDSConfig) -> None:
        super().__init__()
        if not cfg.block_channels:
            raise ValueError("tds.block_channels must name at least one block")
        if cfg.kernel_width < 1:
            raise ValueError(f"tds.kernel_width must be >= 1, got {cfg.kernel_width}")
        if cfg.feature_order not in FEATURE_ORDERS:
            raise ValueError(f"tds.feature_order must be one of {', '.join(FEATURE_ORDERS)}, got {cfg.feature_order!r}")
        self.channel_major = cfg.feature_order == "channel_major"
        self.block_channels = list(cfg.block_channels)
        blocks: list[nn.Module] = []
        for channels in cfg.block_channels:
            blocks += [TDSConv2dBlock(in_features, channels, cfg.kernel_width),
                       TDSFullyConnectedBlock(in_features, cfg.dropout)]
        self.tds_conv_blocks = nn.Sequential(*blocks)
        self.in_features = self.out_features = in_features
        self.shrink = len(cfg.block_channels) * (cfg.kernel_width - 1)
        self.span = Span(0, self.shrink, 1)
        self.stream_skip_frames = self.shrink

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """``L - num_blocks * (kernel_width - 1)``, clamped at 0."""
        return (lengths - self.shrink).clamp(min=0)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, F), (B,) -> (B, T - shrink, F), (B,)."""
        if x.shape[1] <= self.shrink:
            raise ValueError(f"TDS needs more than {self.shrink} frames, got {x.shape[1]}")
        out_lengths = self.output_lengths(lengths)
        return zero_padding(self.encode(x, lengths), out_lengths), out_lengths

    def encode(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        step = lengths if isinstance(lengths, StreamState) else None
        layout = None  # channels of the current width-major order; None = the reference's order
        for i, block in enumerate(self.tds_conv_blocks):
            if i % 2 == 0:
                if self.channel_major:
                    x, layout = block_order(x, layout, block.channels)
                x = block(x, step)
            else:
                x = block(x)
        if layout is not None:
            x = to_channel_major(x, layout)
        return x

    def init_state(self) -> list[Tensor]:
        """Each conv block's last ``kernel_width - 1`` input frames."""
        return [s for block in self.tds_conv_blocks[0::2] for s in block.init_state()]
