"""The streaming contract of the encoders: state in, state out, beside each encoder's offline ``forward``.

Every :class:`~emgscale.models.common.Encoder` answers, next to
``forward(x (B, T, C), lengths (B,)) -> (y, out_lengths)``:

* ``init_state() -> list[Tensor]``: the state at the start of a stream: fixed-shape tensors of batch 1
  (zeros where the offline forward zero-pads), so a whole step exports with ``torch.export``. An
  encoder that reads the future or needs unbounded state raises :class:`NotStreamable` here, naming
  the setting to change (the base class raises it for a family without a streaming step);
* ``streaming_forward(x (1, T, C), pos (), *state) -> (y (1, T', D), *new_state)``: the next ``T`` input
  frames (a multiple of the encoder's subsampling) at stream position ``pos`` (output frames so far);
* ``stream_skip_frames``: junk frames a stream emits first (TDS blocks have no padding).

Fed a sequence in pieces, the steps give the offline forward of the whole sequence (eval mode, float
rounding aside); ``tests/test_stream.py`` holds every causal family to it.

The encoders write their forward pass once: the same block code runs offline, given the ``lengths``,
and streaming, given a :class:`StreamState` in their place (the step's position and a cursor over its
state tensors; :meth:`~emgscale.models.common.Encoder.streaming_forward` threads it). Only the
stateful primitives look which one they got, and keep their state there:

* causal conv (kernel ``K``, stride ``s``, fed multiples of ``s`` frames) and TDS conv block: the last
  ``K - 1`` input frames (:meth:`StreamState.with_history`; zeros at the start = the offline left
  padding);
* RNN: each layer's hidden (and cell) state;
* local / chunked causal attention: the last ``L`` keys and values (``L`` = the mask's left span) and
  the stream position (masks and rotary positions use it);
* S4D layer: its complex state; it runs its convolution mode given the ``lengths`` and its recurrence
  given a :class:`StreamState` (:mod:`emgscale.models.s4d`).

A family whose streaming form is not its offline blocks with state can override ``streaming_forward``
instead.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

# defined with the first stage that streams (the feature norm), which must not import the models
from emgscale.features.norm import NotStreamable


class StreamState:
    """The state of one streaming step on its way through an encoder's blocks.

    Stateful primitives :meth:`take` their tensors in the order the step runs them (the order of the
    encoder's ``init_state``) and :meth:`put` their new ones in the same order.

    Args:
        pos: () long, stream position (output frames so far) of the step's first frame.
        state: the state tensors of the step.
    """

    def __init__(self, pos: Tensor, state: Sequence[Tensor]) -> None:
        self.pos, self._state, self._next = pos, state, 0
        self.new: list[Tensor] = []

    def take(self, n: int = 1) -> tuple[Tensor, ...]:
        """The next ``n`` state tensors."""
        if self._next + n > len(self._state):
            raise ValueError(f"the streaming step was given {len(self._state)} state tensors and needs more; "
                             f"pass the encoder's init_state()")
        out = tuple(self._state[self._next:self._next + n])
        self._next += n
        return out

    def put(self, *tensors: Tensor) -> None:
        """Record new state tensors (in the order of :meth:`take`)."""
        self.new.extend(tensors)

    def with_history(self, x: Tensor, frames: int) -> Tensor:
        """``x`` (B, T, C) after the ``frames`` frames that came before it (one state tensor, kept as the
        last ``frames`` frames of the result): what a causal conv of kernel ``frames + 1`` reads."""
        if frames == 0:
            return x
        (cache,) = self.take()
        h = torch.cat([cache, x], 1)
        self.put(h[:, h.shape[1] - frames:])
        return h

    def finish(self) -> list[Tensor]:
        """The new state, after checking the step used every tensor it was given."""
        if self._next != len(self._state):
            raise ValueError(f"the streaming step was given {len(self._state)} state tensors and used "
                             f"{self._next}; pass the encoder's init_state()")
        return self.new


#: what the blocks of an encoder take beside ``x``: the offline ``lengths`` (B,) or a step's state
LengthsOrState = Union[Tensor, StreamState]


def history_state(frames: int, features: int) -> list[Tensor]:
    """The initial state of :meth:`StreamState.with_history`: ``frames`` zero frames (none for 0)."""
    return [torch.zeros(1, frames, features)] if frames else []


__all__ = ["LengthsOrState", "NotStreamable", "StreamState", "history_state"]
