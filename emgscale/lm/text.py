"""How text becomes character-LM tokens — one convention shared by the LM builder and the decoders.

* Every in-vocabulary character of the emg2qwerty charset is one token (case kept: ``A`` and ``a`` are
  different tokens, as they are different labels).
* Space is the token ``<sp>`` (:data:`SPACE_TOKEN`): KenLM splits on whitespace, and ``<sp>`` is not a
  character of the charset, so it can never collide with a typed key.
* Enter / a line break is a sentence boundary: each non-empty line of training text is one KenLM
  sentence (``<s> ... </s>``), and in the decoder an enter scores ``</s>`` and starts a new sentence.
* Backspace is an edit, not a token: in training text it deletes the previous character; in the
  decoder it pops the last character's LM state (``ab⌫c`` is scored as ``ac``).
* Shift (``⇧``) is not a token: it types no character (the shifted character that follows is its
  own label), so it leaves the LM context untouched and gets neither LM score nor insertion bonus; in
  training text it folds into the next character (``⇧a`` -> ``A``). Training text is rendered by the
  one rule of :func:`emgscale.data.charset.render_text`. The
  reference decoder instead treated it, like every key outside its lowercase-letters LM, as a word
  boundary; with a full-charset LM that would cut the context before every capital letter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from emgscale.data.charset import BACKSPACE, ENTER, SHIFT, SPACE, CharacterSet, charset, render_text

SPACE_TOKEN = "<sp>"
"""LM token of the space key."""
SENTENCE_END = "</s>"
"""KenLM's end-of-sentence token; the LM token of the enter key."""

_WHITESPACE = re.compile(r"[^\S\n\r]+")  # whitespace other than line breaks


def text_to_lm_sentences(text: str, cs: CharacterSet | None = None) -> Iterator[str]:
    """Turn raw text into KenLM training sentences, one per non-empty line.

    Each line is cleaned with the charset's ``clean_str`` (``é`` -> ``e``; untypeable characters
    dropped) after any run of whitespace becomes one space; leading and trailing spaces are dropped;
    the line is rendered (:func:`~emgscale.data.charset.render_text`: backspaces delete the previous
    character, a shift folds into the next); every character becomes a token.

    Args:
        text: any text; ``\\n``, ``\\r`` and ``⏎`` end sentences.
        cs: the character set (default: the emg2qwerty charset).

    Returns:
        An iterator of space-separated token lines, e.g. ``"H i <sp> t h e r e"``.
    """
    cs = cs or charset()
    for raw in re.split(r"[\n\r\u23ce]", text):
        tokens: list[str] = []
        for c in render_text(cs.clean_str(_WHITESPACE.sub(" ", raw))):
            if c == SPACE:
                if tokens and tokens[-1] != SPACE_TOKEN:
                    tokens.append(SPACE_TOKEN)
            else:
                tokens.append(c)
        while tokens and tokens[-1] == SPACE_TOKEN:
            tokens.pop()
        if tokens:
            yield " ".join(tokens)


def lines_to_lm_sentences(lines: Iterable[str], cs: CharacterSet | None = None) -> Iterator[str]:
    """:func:`text_to_lm_sentences` over an iterable of lines (e.g. an open file), streaming."""
    cs = cs or charset()
    for line in lines:
        yield from text_to_lm_sentences(line, cs)


def label_lm_tokens(cs: CharacterSet | None = None) -> list[str]:
    """The LM token of each key label, for the decoders.

    Args:
        cs: the character set (default: the emg2qwerty charset).

    Returns:
        A list of ``len(cs)`` strings (98): the character itself for printable keys, ``<sp>`` for
        space, ``</s>`` for enter, and ``""`` for backspace and shift (not LM tokens).
    """
    cs = cs or charset()
    out = []
    for c in cs.chars:
        if c == SPACE:
            out.append(SPACE_TOKEN)
        elif c == ENTER:
            out.append(SENTENCE_END)
        elif c in (BACKSPACE, SHIFT):
            out.append("")
        else:
            out.append(c)
    return out
