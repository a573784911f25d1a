"""Pure-Python backspace-aware CTC prefix beam search: the specification of the native decoder.

Slow (about 20 frames/s at beam 50 with every label expanded, about 2,500x slower than the native one);
use it for small cases and to check the native decoder (``emgscale/decode/csrc/search.hh``, which
mirrors this file step for step and must return the same hypotheses and scores).

Scoring (all hypotheses are label prefixes without blanks)::

    score = log P_ctc(prefix | emissions)                      (natural log, summed over CTC paths)
          + lm_weight * log10 P_lm(text after edits) + insertion_bonus * len(text after edits)
          + lm_weight * log10 P_lm(</s> | text) at the end     (unless the text ends a sentence)

``log10`` is KenLM's unit, kept so ``lm_weight`` / ``insertion_bonus`` mean what they mean in the
reference decoder and in flashlight-text (defaults 2.0 / 2.0). Label actions
(:func:`emgscale.decode.base.label_actions`): a printable key or space scores its token; backspace
pops the last LM token and undoes its score and bonus (nothing at an empty context); shift passes;
enter, and any key whose token the LM does not know, is a boundary: it scores ``</s>`` (or, at the
start of a sentence, the ``<unk>`` unigram, as the reference does) and starts a new sentence.

Pruning, per frame: labels scoring below the frame's best minus ``label_threshold`` (nats), and
beyond the ``max_labels`` best, are not expanded; hypotheses below the best minus
``beam_threshold`` are dropped; the ``beam_size`` best are kept (ties broken by prefix hash).
The native decoder also skips extensions whose score bound shows they cannot enter the beam; that
is exact (same result as expanding them), which the tests check against this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from emgscale.data.charset import charset
from emgscale.decode.base import BACKSPACE, PASS, SCORE, DecoderBase, as_emissions, label_actions, load_lm_file

NEG_INF = -math.inf
_MASK = (1 << 64) - 1


def _log_add(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a)) if a > b else b + math.log1p(math.exp(a - b))


def _extend_hash(h: int, label: int) -> int:
    """Hash of a prefix extended by ``label`` (identical to ``extend_hash`` in csrc/util.hh)."""
    z = h ^ ((label + 0x9E3779B97F4A7C15 + ((h << 6) & _MASK) + (h >> 2)) & _MASK)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _kenlm_module() -> Any:
    """The ``kenlm`` module, with an install hint when it is missing."""
    try:
        import kenlm
    except ImportError as e:
        raise ImportError("the Python reference beam decoder needs the kenlm module: "
                          "pip install 'emgscale[lm]'") from e
    return kenlm


def load_kenlm(path: str) -> Any:
    """``kenlm.Model(path)``, with an install hint when the module is missing."""
    return _kenlm_module().Model(str(path))


@dataclass
class _LMNode:
    parent: "_LMNode | None"
    score: float  # log10 score of this node's token given the parent context
    bos: bool
    state: Any


def _unlink(node: "tuple | None") -> list[int]:
    out = []
    while node is not None:
        node, label = node
        out.append(label)
    return out[::-1]


class PythonBeamDecoder(DecoderBase):
    """The reference prefix beam search in Python (same arguments as the native decoder)."""

    def __init__(self, lm_path: str | None = None, beam_size: int = 50, lm_weight: float = 2.0,
                 insertion_bonus: float = 2.0, beam_threshold: float = 25.0, label_threshold: float = 0.0,
                 max_labels: int = 0) -> None:
        cs = charset()
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.blank, self.num_classes = cs.blank, cs.num_classes
        self.beam_size, self.lm_weight, self.insertion_bonus = beam_size, lm_weight, insertion_bonus
        self.beam_threshold, self.label_threshold, self.max_labels = beam_threshold, label_threshold, max_labels
        self.tokens, self.actions = label_actions(cs)
        if lm_path:
            _kenlm_module()  # a missing module is said first
        self.lm = load_lm_file(lm_path, load_kenlm) if lm_path else None
        if self.lm is not None:
            import kenlm

            self._kenlm = kenlm
            self.bos_state = kenlm.State()
            self.lm.BeginSentenceWrite(self.bos_state)
            null, out = kenlm.State(), kenlm.State()
            self.lm.NullContextWrite(null)
            self.unk_score = self.lm.BaseScore(null, "<unk>", out)
            for c, tok in enumerate(self.tokens):  # unknown tokens act as boundaries, as in the reference
                if self.actions[c] == SCORE and tok not in self.lm:
                    self.actions[c] = 1  # BOUNDARY

    # --- LM -----------------------------------------------------------------------------------
    def _root(self) -> _LMNode | None:
        return None if self.lm is None else _LMNode(None, 0.0, True, self.bos_state)

    def _lm_step(self, node: _LMNode | None, label: int, cache: dict) -> tuple[_LMNode | None, float]:
        """New LM context and weighted LM score + bonus of appending ``label`` to ``node``."""
        if self.lm is None:
            return node, 0.0
        act = self.actions[label]
        if act == PASS:
            return node, 0.0
        if act == BACKSPACE:
            if node.parent is None:
                return node, 0.0
            return node.parent, -(self.lm_weight * node.score + self.insertion_bonus)
        key = (id(node), label if act == SCORE else -1)
        child = cache.get(key)
        if child is None:
            if act == SCORE:
                out = self._kenlm.State()
                child = _LMNode(node, self.lm.BaseScore(node.state, self.tokens[label], out), False, out)
            else:  # boundary
                score = self.unk_score if node.bos else self.lm.BaseScore(node.state, "</s>", self._kenlm.State())
                child = _LMNode(node, score, True, self.bos_state)
            cache[key] = (child, node)  # keep node alive so id() stays unique
        else:
            child = child[0]
        return child, self.lm_weight * child.score + self.insertion_bonus

    def _eos(self, node: _LMNode | None) -> float:
        if self.lm is None or node.bos:
            return 0.0
        return self.lm_weight * self.lm.BaseScore(node.state, "</s>", self._kenlm.State())

    def score_labels(self, labels: list[int], eos: bool = True) -> float:
        """LM score + insertion bonus the search adds for ``labels`` (with the final ``</s>`` if ``eos``).

        ``"ab⌫c"`` scores exactly as ``"ac"``. 0 without an LM.
        """
        node, total, cache = self._root(), 0.0, {}
        for c in labels:
            if not 0 <= c < self.num_classes or c == self.blank:
                raise ValueError(f"label {c} out of range (or blank)")
            node, s = self._lm_step(node, c, cache)
            total += s
        return total + (self._eos(node) if eos else 0.0)

    # --- search -------------------------------------------------------------------------------
    def nbest(self, log_probs: Any, length: int | None = None, n: int = 1) -> list[tuple[list[int], float]]:
        """The ``n`` best hypotheses of one (T, C) utterance with their final scores, best first."""
        lp = as_emissions(log_probs, length, self.num_classes)
        # A hypothesis: [hash, labels (linked: (parent, label) or None), lm node, last label, b, nb].
        beam = [[0, None, self._root(), -1, 0.0, NEG_INF]]
        cache: dict = {}
        blank = self.blank
        for row_np in lp:
            row = row_np.tolist()
            best = max(row)
            cands = [c for c in range(len(row)) if self.label_threshold <= 0 or row[c] >= best - self.label_threshold]
            if 0 < self.max_labels < len(cands):
                cands = sorted(sorted(cands, key=lambda c: -row[c])[: self.max_labels])
            is_cand = set(cands)
            cands = [c for c in cands if c != blank]
            # An entry: [b, nb, labels, lm node, last label], keyed by prefix hash.
            entries: dict[int, list] = {}
            for hsh, labels, lm, last, b, nb in beam:  # stay: blank, or a collapsed repeat
                stay_blank, stay_rep = blank in is_cand, last >= 0 and last in is_cand
                if not (stay_blank or stay_rep):
                    continue
                e = entries.setdefault(hsh, [NEG_INF, NEG_INF, labels, lm, last])
                if stay_blank:
                    e[0] = _log_add(e[0], _log_add(b, nb) + row[blank])
                if stay_rep:
                    e[1] = _log_add(e[1], nb + row[last])
            for hsh, labels, lm, last, b, nb in beam:  # extend by a label
                total = _log_add(b, nb)
                for c in cands:
                    start = b if c == last else total
                    if start == NEG_INF:
                        continue
                    child_hash = _extend_hash(hsh, c)
                    child_lm, s = self._lm_step(lm, c, cache)
                    e = entries.get(child_hash)
                    if e is None:
                        e = entries[child_hash] = [NEG_INF, NEG_INF, (labels, c), child_lm, c]
                    e[1] = _log_add(e[1], start + row[c] + s)
            scored = [(_log_add(e[0], e[1]), hsh, e) for hsh, e in entries.items()]
            top = max((t for t, _, _ in scored), default=NEG_INF)
            kept = [x for x in scored if x[0] != NEG_INF
                    and not (self.beam_threshold > 0 and x[0] < top - self.beam_threshold)]
            kept.sort(key=lambda x: (-x[0], x[1]))
            beam = [[hsh, e[2], e[3], e[4], e[0], e[1]] for _, hsh, e in kept[: self.beam_size]]
        final = sorted(((_log_add(h[4], h[5]) + self._eos(h[2]), h[0], h[1]) for h in beam),
                       key=lambda x: (-x[0], x[1]))
        if not final:
            return [([], NEG_INF)]
        return [(_unlink(labels), score) for score, _, labels in final[:n]]

    def decode(self, log_probs: Any, length: int | None = None) -> list[int]:
        """Best label sequence of one (T, C) utterance."""
        return self.nbest(log_probs, length, 1)[0][0]
