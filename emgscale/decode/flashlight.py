"""flashlight-text's LexiconFreeDecoder with its bundled KenLM: the maintained alternative.

It is fast and linear in length but knows nothing of backspace: ``⌫``, ``⇧`` and ``⏎`` are scored as
the LM's ``<unk>`` token, and a backspace never undoes the character before it. It has no insertion
bonus, so the bonus is added to every non-blank log-prob (per frame, not per emitted token: close for
peaky CTC outputs). Models of order <= 6 only (its KenLM's max order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emgscale.data.charset import charset
from emgscale.decode.base import DecoderBase, as_emissions, check_lm_file, load_lm_file
from emgscale.lm.text import label_lm_tokens


def _import_flashlight() -> tuple[Any, Any, Any]:
    try:
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary
    except ImportError as e:
        raise ImportError("decoder kind 'flashlight' needs flashlight-text: pip install 'emgscale[lm]'") from e
    return fl, KenLM, Dictionary


class FlashlightDecoder(DecoderBase):
    """CTC beam search by flashlight-text, with an optional KenLM LM (same arguments as the native one).

    ``max_labels <= 0`` expands every label; ``label_threshold > 0`` masks labels below the frame's
    best minus the threshold (flashlight then prunes them).
    """

    def __init__(self, lm_path: str | None = None, beam_size: int = 50, lm_weight: float = 2.0,
                 insertion_bonus: float = 2.0, beam_threshold: float = 25.0, label_threshold: float = 0.0,
                 max_labels: int = 0) -> None:
        fl, KenLM, Dictionary = _import_flashlight()
        cs = charset()
        self.blank, self.num_classes = cs.blank, cs.num_classes
        if lm_path is not None:
            check_lm_file(lm_path)
        # Unique entries; the LM maps each to its vocabulary (unknown -> <unk>).
        names = [tok or ch for tok, ch in zip(label_lm_tokens(cs), cs.chars)] + ["<blank>"]
        self._dict = Dictionary()
        for name in names:
            self._dict.add_entry(name)
        self.lm = load_lm_file(lm_path, lambda p: KenLM(p, self._dict)) if lm_path else fl.ZeroLM()
        self.insertion_bonus = insertion_bonus if lm_path else 0.0
        self.label_threshold = label_threshold
        opts = fl.LexiconFreeDecoderOptions(
            beam_size=beam_size,
            beam_size_token=max_labels if max_labels > 0 else self.num_classes,
            beam_threshold=beam_threshold if beam_threshold > 0 else 1e30,
            lm_weight=lm_weight if lm_path else 0.0,
            sil_score=0.0,
            log_add=True,
            criterion_type=fl.CriterionType.CTC,
        )
        self._decoder = fl.LexiconFreeDecoder(opts, self.lm, self.blank, self.blank, [])

    def decode(self, log_probs: Any, length: int | None = None) -> list[int]:
        """Best label sequence of one (T, C) log-prob matrix (first ``length`` frames)."""
        lp = as_emissions(log_probs, length, self.num_classes)
        if len(lp) == 0:
            return []
        if self.label_threshold > 0 or self.insertion_bonus:
            lp = lp.copy()
            if self.label_threshold > 0:
                lp[lp < lp.max(1, keepdims=True) - self.label_threshold] = -1e4
            nonblank = np.arange(self.num_classes) != self.blank
            lp[:, nonblank] += self.insertion_bonus
        lp = np.ascontiguousarray(lp, dtype=np.float32)
        results = self._decoder.decode(lp.ctypes.data, lp.shape[0], lp.shape[1])
        tokens = results[0].tokens
        out, prev = [], self.blank
        for t in tokens:  # frame-level path: collapse repeats, drop blanks and padding
            if t != prev and 0 <= t < self.num_classes and t != self.blank:
                out.append(int(t))
            prev = t
        return out
