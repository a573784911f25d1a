"""CTC decoders behind one interface: greedy, and beam search with a KenLM character n-gram.

>>> dec = build_decoder(DecoderConfig(kind="beam", lm_path="lm/char6.bin"))
>>> labels = dec.decode(log_probs)              # (T, 99) log-probs, blank 98 -> labels, no blanks
>>> batch = dec.decode_batch(lp_btc, lengths)   # (B, T, 99), (B,) -> B label lists

Kinds:
    ``greedy``      argmax per frame, repeats collapsed, blanks dropped (vectorised).
    ``beam``        native C++ prefix beam search, **backspace-aware**: a backspace pops the LM context,
                    so ``ab⌫c`` is scored as ``ac`` (see :mod:`emgscale.decode.reference` for every
                    rule). Needs the KenLM library built by ``scripts/build_kenlm.sh``; compiles itself
                    on first use.
    ``flashlight``  flashlight-text's LexiconFreeDecoder (KenLM bundled, order <= 6); fast and
                    maintained, but scores backspace/shift/enter as ordinary unknown tokens.
    ``python``      the pure-Python reference of ``beam`` (slow; for checks and small cases).

Scores mix natural-log CTC probabilities with KenLM's log10 LM scores times ``lm_weight``, plus
``insertion_bonus`` per LM token, as the reference decoder and flashlight-text do, so the reference
defaults (beam 50, LM weight 2.0, insertion bonus 2.0) carry over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from emgscale.decode.greedy import GreedyDecoder, greedy_decode, greedy_decode_batch

KINDS = ("greedy", "beam", "flashlight", "python")


@dataclass
class DecoderConfig:
    """How to decode CTC emissions.

    Attributes:
        kind: ``greedy`` | ``beam`` | ``flashlight`` | ``python`` (see the module docstring).
        beam_size: hypotheses kept per frame.
        lm_path: KenLM character n-gram (``python -m emgscale.lm build``); None: no LM.
        lm_weight: weight of the LM's log10 score.
        insertion_bonus: score added per LM token (counters the LM's preference for short outputs).
        beam_threshold: drop hypotheses more than this below the best, in nats (<= 0: off).
        label_threshold: per frame, do not expand labels whose log-prob is more than this below the
            frame's best, in nats (<= 0: off). Not used by ``flashlight`` beyond masking them.
        max_labels_per_frame: per frame, expand at most this many labels (<= 0: all).
        num_threads: utterances decoded in parallel by ``decode_batch`` (``beam`` only).
    """

    kind: str = "greedy"
    beam_size: int = 50
    lm_path: str | None = None
    lm_weight: float = 2.0
    insertion_bonus: float = 2.0
    beam_threshold: float = 25.0
    label_threshold: float = 0.0
    max_labels_per_frame: int = 0
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"decoder kind {self.kind!r} is not one of {list(KINDS)}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


@runtime_checkable
class Decoder(Protocol):
    """Turns CTC log-probs into key labels."""

    def decode(self, log_probs: Any, length: int | None = None) -> list[int]:
        """(T, 99) log-probs (first ``length`` frames) -> labels without blanks."""
        ...

    def decode_batch(self, log_probs: Any, lengths: Any = None) -> list[list[int]]:
        """(B, T, 99) log-probs (numpy or torch) and (B,) lengths -> B label lists."""
        ...


def build_decoder(cfg: DecoderConfig) -> Decoder:
    """The decoder ``cfg`` describes.

    Raises:
        ValueError: an unknown kind.
        FileNotFoundError: ``lm_path`` does not exist.
        ImportError: an optional dependency is missing (the message says what to install).
    """
    if cfg.kind == "greedy":
        return GreedyDecoder()
    if cfg.kind == "beam":
        from emgscale.decode.beam import NativeBeamDecoder

        return NativeBeamDecoder(cfg.lm_path, beam_size=cfg.beam_size, lm_weight=cfg.lm_weight,
                                 insertion_bonus=cfg.insertion_bonus, beam_threshold=cfg.beam_threshold,
                                 label_threshold=cfg.label_threshold, max_labels=cfg.max_labels_per_frame,
                                 num_threads=cfg.num_threads)
    if cfg.kind == "python":
        from emgscale.decode.reference import PythonBeamDecoder

        return PythonBeamDecoder(cfg.lm_path, beam_size=cfg.beam_size, lm_weight=cfg.lm_weight,
                                 insertion_bonus=cfg.insertion_bonus, beam_threshold=cfg.beam_threshold,
                                 label_threshold=cfg.label_threshold, max_labels=cfg.max_labels_per_frame)
    if cfg.kind == "flashlight":
        from emgscale.decode.flashlight import FlashlightDecoder

        return FlashlightDecoder(cfg.lm_path, beam_size=cfg.beam_size, lm_weight=cfg.lm_weight,
                                 insertion_bonus=cfg.insertion_bonus, beam_threshold=cfg.beam_threshold,
                                 label_threshold=cfg.label_threshold, max_labels=cfg.max_labels_per_frame)
    raise ValueError(f"decoder kind {cfg.kind!r} is not one of {list(KINDS)}")  # pragma: no cover


__all__ = ["KINDS", "Decoder", "DecoderConfig", "GreedyDecoder", "build_decoder", "greedy_decode",
           "greedy_decode_batch"]
