"""Pieces shared by the encoders: the encoder contract, masking, masked 1-D convolutions, spans.

Encoder contract: ``forward(x (B, T, C), lengths (B,)) -> (y (B, T', D), out_lengths (B,))``, with
``output_lengths(lengths)`` giving ``out_lengths`` exactly, and padding never changing a sequence's
output (a batched forward equals each sequence run alone; padded output frames are zero).

Streaming contract (``init_state`` / ``streaming_forward``, state in, state out): see
:mod:`emgscale.models.streaming`.

Spans describe receptive fields: output frame ``j`` depends on input frames
``j * stride - left .. j * stride + right`` (None = unbounded: recurrence or global attention).
Chunked inference uses them to know which frames of a chunk equal whole-sequence inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgscale.features.norm import time_mask, zero_padding
from emgscale.models.streaming import LengthsOrState, NotStreamable, StreamState, history_state

__all__ = ["Encoder", "MaskedConv1d", "Span", "conv_output_lengths", "time_mask", "zero_padding"]


@dataclass(frozen=True)
class Span:
    """Receptive field of a stage: output ``j`` reads inputs ``j*stride - left .. j*stride + right``."""

    left: int | None
    right: int | None
    stride: int = 1

    def then(self, nxt: "Span") -> "Span":
        """The span of this stage followed by ``nxt``."""

        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a + self.stride * b

        return Span(add(self.left, nxt.left), add(self.right, nxt.right), self.stride * nxt.stride)

    @staticmethod
    def chain(*spans: "Span") -> "Span":
        out = Span(0, 0, 1)
        for s in spans:
            out = out.then(s)
        return out


class Encoder(nn.Module):
    """Base class of the encoders (see the module docstring for the contract).

    Subclasses set ``in_features``, ``out_features``, ``span`` (a :class:`Span` in input frames, its
    ``stride`` the temporal subsampling) and implement ``forward`` and ``output_lengths``. A causal
    family streams by implementing ``init_state`` and either ``encode`` (its forward pass, which then
    serves both) or ``streaming_forward`` (:mod:`emgscale.models.streaming`).
    """

    in_features: int
    out_features: int
    span: Span
    #: junk frames a stream emits first, which the offline forward does not have
    stream_skip_frames: int = 0

    @property
    def subsampling(self) -> int:
        """Input frames per output frame."""
        return self.span.stride

    def output_lengths(self, lengths: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        """The forward pass, before padding is zeroed: offline (``lengths``) or streaming (a
        :class:`~emgscale.models.streaming.StreamState`); what :meth:`streaming_forward` runs."""
        raise NotStreamable(f"encoder {type(self).__name__} has no streaming step")

    def init_state(self) -> list[Tensor]:
        """The state at the start of a stream (fixed shapes, batch 1).

        Raises:
            NotStreamable: the encoder reads future frames or needs unbounded state (the message names
                the setting), or its family has no streaming step.
        """
        raise NotStreamable(f"encoder {type(self).__name__} has no streaming step")

    def streaming_forward(self, x: Tensor, pos: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """One streaming step: (1, T, C) new frames at stream position ``pos`` (output frames so far),
        ``state`` as :meth:`init_state` -> ``(y (1, T', D), *new_state)``."""
        step = StreamState(pos, state)
        y = self.encode(x, step)
        return (y, *step.finish())


def conv_output_lengths(lengths: Tensor, kernel_size: int, stride: int, pad_left: int, pad_right: int) -> Tensor:
    """``floor((L + pad_left + pad_right - kernel) / stride) + 1``, clamped at 0."""
    out = torch.div(lengths + pad_left + pad_right - kernel_size, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


class MaskedConv1d(nn.Module):
    """1-D convolution over time of (B, T, C) sequences that ignores padding.

    Positions beyond each length are zeroed before the convolution, so they act exactly like the zero
    padding of a sequence run alone. ``causal`` pads ``kernel - 1`` frames on the left only; otherwise
    ``(kernel - 1) // 2`` on the left and the rest on the right. With stride ``s`` the output has
    ``ceil(L / s)`` frames (``conv_output_lengths``) and frame ``j`` is aligned to input ``j * s``.

    Args:
        in_channels, out_channels, kernel_size, stride, groups, bias: as ``nn.Conv1d``.
        causal: look only at the past.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, causal: bool = False,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if kernel_size < 1 or stride < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size} and {stride}")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=bias)
        self.kernel_size, self.stride, self.causal = kernel_size, stride, causal
        self.pad_left = kernel_size - 1 if causal else (kernel_size - 1) // 2
        self.pad_right = kernel_size - 1 - self.pad_left
        self.span = Span(self.pad_left, kernel_size - 1 - self.pad_left, stride)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.kernel_size, self.stride, self.pad_left, self.pad_right)

    def forward(self, x: Tensor, lengths: LengthsOrState) -> tuple[Tensor, LengthsOrState]:
        """(B, T, C_in), (B,) -> (B, T', C_out), (B,); output frames beyond the new lengths are zero.

        Streaming (``lengths`` a :class:`~emgscale.models.streaming.StreamState`), the last
        ``kernel - 1`` input frames of the previous steps stand in for the left padding.
        """
        if isinstance(lengths, StreamState):
            return self._conv(lengths.with_history(x, self.pad_left), 0), lengths
        out_lengths = self.output_lengths(lengths)
        return zero_padding(self._conv(zero_padding(x, lengths), self.pad_left), out_lengths), out_lengths

    def _conv(self, x: Tensor, pad_left: int) -> Tensor:
        """(B, T, C_in) -> (B, T', C_out), padded by ``pad_left`` zero frames and the right padding."""
        return self.conv(F.pad(x.transpose(1, 2), (pad_left, self.pad_right))).transpose(1, 2)

    def init_state(self, what: str = "conv") -> list[Tensor]:
        """The last ``kernel - 1`` input frames, zero (``what``: the config key, for the error).

        Raises:
            NotStreamable: the convolution is not causal.
        """
        if self.pad_right:
            raise NotStreamable(f"{what}: a non-causal convolution reads future frames; set causal: true")
        return history_state(self.pad_left, self.conv.in_channels)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (works on torch 2.3, whose API took no argument)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def drop(p: float) -> nn.Module:
    """``nn.Dropout(p)``, validating ``p``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return nn.Dropout(p)
