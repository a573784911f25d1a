"""Online CTC decoding: labels committed as soon as they are final, from log-prob frames pushed as they come.

* :class:`OnlineGreedy`: a key is final the frame it appears (greedy collapsing looks only back), so
  it commits at once; the labels equal offline greedy decoding of the same frames.
* :class:`OnlineBeam`: the native beam search (with its KenLM LM) in incremental mode
  (:class:`~emgscale.decode.beam.BeamStream`): a prefix is committed when every hypothesis agrees
  on it, or after a fixed look-ahead of frames.

Both have ``push(log_probs (k, C)) -> new labels``, ``partial() -> uncommitted labels``,
``finish() -> last labels`` and ``reset()``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from emgscale.data.charset import charset
from emgscale.decode import DecoderConfig
from emgscale.decode.base import as_emissions


class OnlineDecoder(Protocol):
    """Incremental decoder interface (see the module docstring)."""

    def push(self, log_probs: Any) -> list[int]: ...

    def partial(self) -> list[int]: ...

    def finish(self) -> list[int]: ...

    def reset(self) -> None: ...


class OnlineGreedy:
    """Greedy CTC decoding frame by frame (argmax, repeats collapsed, blanks dropped)."""

    def __init__(self, blank: int | None = None) -> None:
        cs = charset()
        self.blank, self.num_classes = (cs.blank if blank is None else blank), cs.num_classes
        self.reset()

    def reset(self) -> None:
        """Start a new utterance."""
        self._prev = -1

    def push(self, log_probs: Any) -> list[int]:
        """Labels completed by (k, C) new frames."""
        best = as_emissions(log_probs, None, self.num_classes).argmax(-1)
        if best.size == 0:
            return []
        prev = np.concatenate([[self._prev], best[:-1]])
        self._prev = int(best[-1])
        return best[(best != prev) & (best != self.blank)].tolist()

    def partial(self) -> list[int]:
        """Nothing is ever pending in greedy decoding."""
        return []

    def finish(self) -> list[int]:
        """Nothing is left at the end."""
        return []


class OnlineBeam:
    """Incremental native beam search.

    Args:
        cfg: decoder settings (``kind`` is ignored; ``lm_path``, ``beam_size``, weights and thresholds
            are used as by the offline ``beam`` decoder).
        lookahead_frames: also commit the best hypothesis's labels this many frames after they entered
            the beam (None: only on agreement of the whole beam).
    """

    def __init__(self, cfg: DecoderConfig, lookahead_frames: int | None = None) -> None:
        from emgscale.decode.beam import NativeBeamDecoder

        self.decoder = NativeBeamDecoder(cfg.lm_path, beam_size=cfg.beam_size, lm_weight=cfg.lm_weight,
                                         insertion_bonus=cfg.insertion_bonus, beam_threshold=cfg.beam_threshold,
                                         label_threshold=cfg.label_threshold, max_labels=cfg.max_labels_per_frame)
        self.lookahead_frames = lookahead_frames
        self.reset()

    def reset(self) -> None:
        """Start a new utterance."""
        self._stream = self.decoder.stream(self.lookahead_frames)

    def push(self, log_probs: Any) -> list[int]:
        """Labels committed after (k, C) new frames."""
        return self._stream.push(log_probs) if len(log_probs) else []

    def partial(self) -> list[int]:
        """The current best hypothesis after the committed labels."""
        return self._stream.partial()

    def finish(self) -> list[int]:
        """The final best hypothesis after the committed labels."""
        return self._stream.finish()


def online_decoder(cfg: DecoderConfig, lookahead_frames: int | None = None) -> OnlineDecoder:
    """The online decoder for ``cfg.kind``: ``greedy`` or ``beam``.

    Raises:
        ValueError: another kind (``flashlight`` and ``python`` have no incremental mode).
    """
    if cfg.kind == "greedy":
        return OnlineGreedy()
    if cfg.kind == "beam":
        return OnlineBeam(cfg, lookahead_frames)
    raise ValueError(f"decoder kind {cfg.kind!r} has no online mode; use 'greedy' or 'beam'")
