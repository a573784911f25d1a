"""Prompt text: the shipped default (public-domain English) or any file, cut into typing prompts.

Prompts are a pure function of the text (no randomness), so every session of a corpus draws from the
same numbered list; each session starts at its own seeded offset.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from unidecode import unidecode

from emgscale.data.charset import charset
from emgscale.synth.keyboard import typable

PROMPT_MAX_CHARS = 48  # longer sentences are cut at clause, then word boundaries
PROMPT_MIN_CHARS = 12  # shorter pieces are merged with a neighbour from the same sentence

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")
_ITALICS = re.compile(r"(?<!\w)_([^_\n]+)_(?!\w)")
_UNTYPABLE = re.compile(r"[^ -~]")  # anything but printable ASCII


def default_text_files() -> list[Path]:
    """The ``*.txt`` files shipped under ``emgscale/data/text`` (sorted by name)."""
    root = resources.files("emgscale.data").joinpath("text")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".txt"))


def load_text(path: "str | Path | None" = None) -> str:
    """Read a UTF-8 text file, or the shipped default text when ``path`` is None.

    Raises:
        ValueError: the file does not exist or cannot be decoded as UTF-8.
    """
    if path is None:
        return "\n\n".join(p.read_text(encoding="utf-8") for p in default_text_files())
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"text file {p} does not exist") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"text file {p} is not UTF-8 ({e})") from None


def clean_prompt_text(text: str) -> str:
    """One line of typable text: whitespace collapsed, quotes/dashes normalised the reference way,
    accented letters transliterated, plain-text italics ``_word_`` unwrapped, the rest dropped."""
    text = _ITALICS.sub(r"\1", re.sub(r"\s+", " ", text))
    if _UNTYPABLE.search(text):
        text = _UNTYPABLE.sub(_fix_char, charset().normalize_str(text))
    return re.sub(r" {2,}", " ", text).strip()


def _fix_char(m: "re.Match[str]") -> str:
    return "".join(ch for ch in unidecode(m.group(0)) if typable(ch))


def _split_long(piece: str, max_chars: int) -> list[str]:
    """Cut at word boundaries into near-equal parts of at most ``max_chars`` (a single long word stays)."""
    words = piece.split(" ")
    n_parts = max(1, -(-len(piece) // max_chars))
    target = len(piece) / n_parts
    parts, cur = [], ""
    for w in words:
        if cur and (len(cur) + 1 + len(w) > max_chars or len(cur) >= target):
            parts.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        parts.append(cur)
    return parts


def _sentence_to_prompts(sentence: str, max_chars: int, min_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    for clause in _CLAUSE_END.split(sentence):
        pieces.extend(_split_long(clause, max_chars) if len(clause) > max_chars else [clause])
    merged: list[str] = []
    for p in pieces:
        if merged and (len(merged[-1]) < min_chars or len(p) < min_chars) and len(merged[-1]) + 1 + len(p) <= max_chars:
            merged[-1] = f"{merged[-1]} {p}"
        else:
            merged.append(p)
    return merged


def text_to_prompts(text: str, max_chars: int = PROMPT_MAX_CHARS, min_chars: int = PROMPT_MIN_CHARS) -> list[str]:
    """Cut text into prompts of a realistic length (whole short sentences, long ones cut at clauses).

    Paragraphs are separated by blank lines; line breaks inside a paragraph are spaces. A prompt has
    at least two letters.

    Args:
        text: any text.
        max_chars: longest prompt (a single longer word is kept whole).
        min_chars: pieces of a cut sentence shorter than this are merged with a neighbour.

    Returns:
        The prompts, in text order.
    """
    if max_chars < 8 or min_chars > max_chars:
        raise ValueError(f"need 8 <= max_chars and min_chars <= max_chars, got {max_chars}, {min_chars}")
    prompts = []
    for para in re.split(r"\n\s*\n", text.replace("\r", "")):
        para = clean_prompt_text(para)
        for sentence in _SENTENCE_END.split(para):
            for p in _sentence_to_prompts(sentence.strip(), max_chars, min_chars):
                p = p.strip()
                if sum(c.isalpha() for c in p) >= 2:
                    prompts.append(p)
    return prompts


@lru_cache(maxsize=4)
def prompts_from_file(path: "str | None" = None) -> tuple[str, ...]:
    """:func:`text_to_prompts` of :func:`load_text` (cached per path; None = the shipped default).

    Raises:
        ValueError: the text yields no prompt.
    """
    prompts = tuple(text_to_prompts(load_text(path)))
    if not prompts:
        raise ValueError(f"text {path or 'default'} yields no typable prompt")
    return prompts
