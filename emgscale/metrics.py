"""Character error rate exactly as the paper: Levenshtein distance between decoded and target key
label sequences (backspace, shift and enter are characters like any other), errors summed over a
split and divided by the total target length — pooled, per session and per user.

Edit distances come from rapidfuzz (``Levenshtein.editops`` on label sequences), which also splits
each distance into insertions (extra predicted keys), deletions (missed target keys) and substitutions;
their rates (``insertion_rate`` ...) are each count over the target length, pooled like the CER, and add
up to it.

Beside the key CER, the *rendered* CER (``rendered_cer``) compares the text a user would see
(:func:`emgscale.data.charset.render_text`: backspaces applied, shift folded into the next key, as the
emg2qwerty NeurIPS challenge and NeuralBench score text): errors of the rendered prediction against the
rendered target, pooled over the rendered target length. A typo corrected with backspace costs nothing
there; a missed backspace costs one character less than in the key CER.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from emgscale.data.charset import charset


def _as_list(labels: Any) -> list[int]:
    if hasattr(labels, "detach"):  # torch.Tensor
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        return labels.astype(np.int64).tolist()
    if isinstance(labels, str):
        raise TypeError("labels must be a sequence of ints; convert text with charset().str_to_labels")
    return [int(x) for x in labels]


@dataclass
class EditCounts:
    """Edit operations turning targets into predictions, summed over utterances.

    Attributes:
        insertions: predicted keys with no target counterpart.
        deletions: target keys missing from the prediction.
        substitutions: target keys predicted as another key.
        target_length: total number of target keys.
        utterances: number of (prediction, target) pairs added.
    """

    insertions: int = 0
    deletions: int = 0
    substitutions: int = 0
    target_length: int = 0
    utterances: int = 0

    @property
    def errors(self) -> int:
        """Levenshtein distance: insertions + deletions + substitutions."""
        return self.insertions + self.deletions + self.substitutions

    @property
    def cer(self) -> float:
        """errors / target_length (NaN for 0/0, inf for errors over an empty target)."""
        return _rate(self.errors, self.target_length)

    def rates(self) -> dict[str, float]:
        """``insertion_rate``, ``deletion_rate``, ``substitution_rate``: each count / target_length (sum: the CER)."""
        return {"insertion_rate": _rate(self.insertions, self.target_length),
                "deletion_rate": _rate(self.deletions, self.target_length),
                "substitution_rate": _rate(self.substitutions, self.target_length)}

    def __iadd__(self, other: "EditCounts") -> "EditCounts":
        self.insertions += other.insertions
        self.deletions += other.deletions
        self.substitutions += other.substitutions
        self.target_length += other.target_length
        self.utterances += other.utterances
        return self

    def to_dict(self) -> dict[str, Any]:
        """Counts plus ``errors``, ``cer`` and the three rates, JSON-ready."""
        return {**asdict(self), "errors": self.errors, "cer": self.cer, **self.rates()}


def _rate(count: int, length: int) -> float:
    """count / length; NaN for 0/0, inf for a count over an empty target."""
    if length == 0:
        return math.nan if count == 0 else math.inf
    return count / length


def edit_counts(pred_labels: Any, target_labels: Any) -> EditCounts:
    """Insertions, deletions and substitutions turning ``target_labels`` into ``pred_labels``.

    Args:
        pred_labels: (S_pred,) decoded labels (list, numpy or torch).
        target_labels: (S,) target labels.

    Returns:
        One utterance's :class:`EditCounts`.
    """
    return _count(_as_list(pred_labels), _as_list(target_labels))


def rendered_edit_counts(pred_labels: Any, target_labels: Any) -> EditCounts:
    """:func:`edit_counts` of the rendered texts (:meth:`~emgscale.data.charset.CharacterSet.render`), per character.

    Args:
        pred_labels: (S_pred,) decoded key labels.
        target_labels: (S,) target key labels.

    Returns:
        One utterance's :class:`EditCounts`, ``target_length`` the rendered target's characters.
    """
    cs = charset()
    return _count(cs.render(_as_list(pred_labels)), cs.render(_as_list(target_labels)))


def _count(pred: "Sequence[Any]", target: "Sequence[Any]") -> EditCounts:
    counts = EditCounts(target_length=len(target), utterances=1)
    for op in Levenshtein.editops(target, pred):
        if op.tag == "insert":
            counts.insertions += 1
        elif op.tag == "delete":
            counts.deletions += 1
        else:
            counts.substitutions += 1
    return counts


def edit_distance(pred_labels: Any, target_labels: Any) -> int:
    """Levenshtein distance between two label sequences (list, numpy or torch)."""
    return int(Levenshtein.distance(_as_list(pred_labels), _as_list(target_labels)))


class CERMeter:
    """Accumulates CER over a split, pooled and per session / per user.

    >>> m = CERMeter()
    >>> m.update([0, 1, 2], [0, 1, 3], session="s1", user="u1")
    >>> m.cer
    0.3333333333333333
    """

    def __init__(self) -> None:
        self.total = EditCounts()
        self.rendered = EditCounts()  # of the rendered texts (see the module docstring)
        self._sessions: dict[Hashable, EditCounts] = {}
        self._users: dict[Hashable, EditCounts] = {}
        self._rendered: dict[tuple[str, Hashable], EditCounts] = {}  # ("session" | "user", name)
        self._session_user: dict[Hashable, Hashable] = {}

    def update(self, pred_labels: Any, target_labels: Any, session: Hashable | None = None,
               user: Hashable | None = None) -> EditCounts:
        """Add one decoded utterance (a window or a whole session).

        Args:
            pred_labels: (S_pred,) decoded labels.
            target_labels: (S,) target labels.
            session: session name to attribute it to (optional; updates of one session add up).
            user: user id to attribute it to (optional).

        Returns:
            This utterance's counts.
        """
        c = edit_counts(pred_labels, target_labels)
        r = rendered_edit_counts(pred_labels, target_labels)
        self.total += c
        self.rendered += r
        if session is not None:
            self._sessions.setdefault(session, EditCounts()).__iadd__(c)
            self._rendered.setdefault(("session", session), EditCounts()).__iadd__(r)
            if user is not None:
                self._session_user[session] = user
        if user is not None:
            self._users.setdefault(user, EditCounts()).__iadd__(c)
            self._rendered.setdefault(("user", user), EditCounts()).__iadd__(r)
        return c

    def merge(self, other: "CERMeter") -> "CERMeter":
        """Add another meter's counts (e.g. from another worker); returns self."""
        self.total += other.total
        self.rendered += other.rendered
        for mine, theirs in ((self._sessions, other._sessions), (self._users, other._users),
                             (self._rendered, other._rendered)):
            for k, v in theirs.items():
                mine.setdefault(k, EditCounts()).__iadd__(v)
        self._session_user.update(other._session_user)
        return self

    @staticmethod
    def _with_rendered(c: EditCounts, r: EditCounts) -> dict[str, Any]:
        """Key counts, CER and rates, plus ``rendered_cer`` / ``rendered_errors`` / ``rendered_length``."""
        return {**c.to_dict(), "rendered_cer": r.cer, "rendered_errors": r.errors, "rendered_length": r.target_length}

    @property
    def cer(self) -> float:
        """Pooled CER: all errors / all target keys."""
        return self.total.cer

    @property
    def rendered_cer(self) -> float:
        """Pooled CER of the rendered texts: all their errors / all rendered target characters."""
        return self.rendered.cer

    def per_session(self) -> dict[Hashable, dict[str, Any]]:
        """``{session: {cer, errors, insertions, deletions, substitutions, target_length, utterances,
        insertion_rate, deletion_rate, substitution_rate, rendered_cer, rendered_errors, rendered_length, user}}``."""
        return {s: {**self._with_rendered(c, self._rendered[("session", s)]), "user": self._session_user.get(s)}
                for s, c in self._sessions.items()}

    def per_user(self) -> dict[Hashable, dict[str, Any]]:
        """``{user: {...}}`` with the keys of :meth:`per_session` (but ``user``), each pooled over that
        user's utterances."""
        return {u: self._with_rendered(c, self._rendered[("user", u)]) for u, c in self._users.items()}

    def summary(self) -> dict[str, Any]:
        """Pooled counts, CER, rates and rendered CER, the mean and spread of per-user CERs, and the number
        of sessions/users."""
        user_cers = [c.cer for c in self._users.values() if c.target_length > 0]
        return {
            **self._with_rendered(self.total, self.rendered),
            "num_sessions": len(self._sessions),
            "num_users": len(self._users),
            "mean_user_cer": float(np.mean(user_cers)) if user_cers else math.nan,
            "std_user_cer": float(np.std(user_cers)) if user_cers else math.nan,
        }


def cer(pred: Sequence[Any], target: Sequence[Any]) -> float:
    """Pooled CER of parallel lists of predicted and target label sequences."""
    m = CERMeter()
    for p, t in zip(pred, target, strict=True):
        m.update(p, t)
    return m.cer
