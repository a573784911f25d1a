"""What every decoder shares: input checking, batching, and how each label acts on the LM context."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from emgscale.data.charset import CharacterSet, charset
from emgscale.lm.text import label_lm_tokens

T = TypeVar("T")

#: How a KenLM binary file starts (``lm/binary_format.cc``); an ARPA file starts with ``\data\``.
KENLM_BINARY_MAGIC = b"mmap lm http://kheafield.com/code"
_GZIP_MAGIC = b"\x1f\x8b"


def check_lm_file(path: "str | Path") -> Path:
    """``path`` when it starts like a KenLM language model (binary, ARPA, or gzipped ARPA).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file, when it is not a KenLM model (a text file, random bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: language model not found")
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(KENLM_BINARY_MAGIC) or head.startswith(_GZIP_MAGIC) or head.lstrip().startswith(b"\\data\\"):
        return path
    raise ValueError(f"{path}: not a KenLM language model (neither a KenLM binary nor an ARPA file); "
                     "build one with python -m emgscale.lm build")


def load_lm_file(path: "str | Path", load: Callable[[str], T]) -> T:
    """``load(path)`` of a checked LM file (:func:`check_lm_file`), its failures as one ValueError naming it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a KenLM model, or truncated / corrupt (KenLM's first line of complaint).
    """
    path = check_lm_file(path)
    try:
        return load(str(path))
    except (RuntimeError, OSError, ValueError) as e:  # KenLM's FormatLoadException & co., a short read
        detail = str(e).strip().splitlines()
        raise ValueError(f"{path}: corrupt or truncated KenLM language model ({detail[-1] if detail else e})") from None


# What a label does to the LM context (the native extension uses the same codes).
SCORE, BOUNDARY, BACKSPACE, PASS, BLANK = 0, 1, 2, 3, 4


def label_actions(cs: CharacterSet | None = None) -> tuple[list[str], list[int]]:
    """LM token and action of every class label, the blank included (99 entries each).

    Printable keys and space are ``SCORE`` (their token is looked up in the LM; one the LM does not
    know becomes a ``BOUNDARY``), enter is a ``BOUNDARY`` (ends the sentence), backspace pops the
    last character (``BACKSPACE``), shift leaves the context alone (``PASS``).

    Returns:
        ``(tokens, actions)``, indexed by class label.
    """
    cs = cs or charset()
    tokens = label_lm_tokens(cs) + [""]
    actions = []
    for label, tok in enumerate(tokens):
        if label == cs.blank:
            actions.append(BLANK)
        elif label == cs.backspace_label:
            actions.append(BACKSPACE)
        elif tok == "":
            actions.append(PASS)
        elif tok == "</s>":
            actions.append(BOUNDARY)
        else:
            actions.append(SCORE)
    return tokens, actions


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def as_emissions(log_probs: Any, length: int | None, num_classes: int) -> np.ndarray:
    """Check one utterance's log-probs and return the first ``length`` frames as C-contiguous float32.

    Args:
        log_probs: (T, C) log-probabilities (numpy or torch), C == ``num_classes``.
        length: frames to decode (default all T).
        num_classes: expected C.

    Returns:
        (length, C) float32 array.
    """
    lp = _to_numpy(log_probs)
    if lp.ndim != 2 or lp.shape[1] != num_classes:
        raise ValueError(f"log_probs must have shape (T, {num_classes}), got {lp.shape}")
    if length is not None:
        if not 0 <= int(length) <= lp.shape[0]:
            raise ValueError(f"length {length} is outside 0..{lp.shape[0]}")
        lp = lp[: int(length)]
    lp = np.ascontiguousarray(lp, dtype=np.float32)
    if np.isnan(lp).any():
        raise ValueError("log_probs contains NaN")
    return lp


def as_batch(log_probs: Any, lengths: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Check a batch of log-probs and lengths.

    Args:
        log_probs: (B, T, C) log-probabilities (numpy or torch).
        lengths: (B,) valid frames per item (numpy, torch or a list); None means all T.

    Returns:
        ``(log_probs (B, T, C) float32 C-contiguous, lengths (B,) int64)``.
    """
    lp = _to_numpy(log_probs)
    if lp.ndim != 3 or lp.shape[2] != num_classes:
        raise ValueError(f"log_probs must have shape (B, T, {num_classes}), got {lp.shape}")
    B, T = lp.shape[:2]
    ln = np.full(B, T, dtype=np.int64) if lengths is None else _to_numpy(lengths).astype(np.int64).reshape(-1)
    if ln.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {ln.shape}")
    if B and (ln.min() < 0 or ln.max() > T):
        raise ValueError(f"lengths must be within 0..{T}, got {ln.tolist()}")
    lp = np.ascontiguousarray(lp, dtype=np.float32)
    if np.isnan(lp).any():
        raise ValueError("log_probs contains NaN")
    return lp, ln


class DecoderBase:
    """Default ``decode_batch`` / ``decode_many``: decode each item alone (decoders override them when
    they can do better)."""

    num_classes: int = charset().num_classes

    def decode(self, log_probs: Any, length: int | None = None) -> list[int]:  # pragma: no cover
        raise NotImplementedError

    def decode_batch(self, log_probs: Any, lengths: Any = None) -> list[list[int]]:
        """Decode a batch.

        Args:
            log_probs: (B, T, C) log-probabilities.
            lengths: (B,) valid frames per item (default all).

        Returns:
            B label lists (no blanks).
        """
        lp, ln = as_batch(log_probs, lengths, self.num_classes)
        return [self.decode(lp[b], int(ln[b])) for b in range(len(ln))]

    def decode_many(self, sessions: Any) -> list[list[int]]:
        """Decode whole utterances of any lengths (a list of (T_i, C) log-probs), one label list each.

        The native beam decoder overrides it to decode them on its ``num_threads`` threads.
        """
        return [self.decode(x) for x in sessions]
