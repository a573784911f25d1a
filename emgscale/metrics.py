"""Character error rate exactly as the paper: Levenshtein distance between decoded and target key
label sequences (backspace, shift and enter are characters like any other), errors summed over a
split and divided by the total target length — pooled, per session and per user.

Edit distances come from rapidfuzz (``Levenshtein.editops`` on label sequences), which also splits
each distance into insertions (extra predicted keys), deletions (missed target keys) and substitutions.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein


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
        if self.target_length == 0:
            return math.nan if self.errors == 0 else math.inf
        return self.errors / self.target_length

    def __iadd__(self, other: "EditCounts") -> "EditCounts":
        self.insertions += other.insertions
        self.deletions += other.deletions
        self.substitutions += other.substitutions
        self.target_length += other.target_length
        self.utterances += other.utterances
        return self

    def to_dict(self) -> dict[str, Any]:
        """Counts plus ``errors`` and ``cer``, JSON-ready."""
        return {**asdict(self), "errors": self.errors, "cer": self.cer}


def edit_counts(pred_labels: Any, target_labels: Any) -> EditCounts:
    """Insertions, deletions and substitutions turning ``target_labels`` into ``pred_labels``.

    Args:
        pred_labels: (S_pred,) decoded labels (list, numpy or torch).
        target_labels: (S,) target labels.

    Returns:
        One utterance's :class:`EditCounts`.
    """
    pred, target = _as_list(pred_labels), _as_list(target_labels)
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
        self._sessions: dict[Hashable, EditCounts] = {}
        self._users: dict[Hashable, EditCounts] = {}
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
        self.total += c
        if session is not None:
            self._sessions.setdefault(session, EditCounts()).__iadd__(c)
            if user is not None:
                self._session_user[session] = user
        if user is not None:
            self._users.setdefault(user, EditCounts()).__iadd__(c)
        return c

    def merge(self, other: "CERMeter") -> "CERMeter":
        """Add another meter's counts (e.g. from another worker); returns self."""
        self.total += other.total
        for mine, theirs in ((self._sessions, other._sessions), (self._users, other._users)):
            for k, v in theirs.items():
                mine.setdefault(k, EditCounts()).__iadd__(v)
        self._session_user.update(other._session_user)
        return self

    @property
    def cer(self) -> float:
        """Pooled CER: all errors / all target keys."""
        return self.total.cer

    def per_session(self) -> dict[Hashable, dict[str, Any]]:
        """``{session: {cer, errors, insertions, deletions, substitutions, target_length, utterances, user}}``."""
        return {s: {**c.to_dict(), "user": self._session_user.get(s)} for s, c in self._sessions.items()}

    def per_user(self) -> dict[Hashable, dict[str, Any]]:
        """``{user: {cer, errors, insertions, deletions, substitutions, target_length, utterances}}``,
        each pooled over that user's utterances."""
        return {u: c.to_dict() for u, c in self._users.items()}

    def summary(self) -> dict[str, Any]:
        """Pooled counts and CER, the mean and spread of per-user CERs, and the number of sessions/users."""
        user_cers = [c.cer for c in self._users.values() if c.target_length > 0]
        return {
            **self.total.to_dict(),
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
