"""The emg2qwerty character set: the same 98 keys in the same order as the reference, plus the CTC blank.

Class labels are interchangeable with the reference implementation's: ``a``-``z`` are 0-25, ``A``-``Z``
26-51, digits 52-61, ``string.punctuation`` 62-93, then backspace (94, ``⌫``), enter (95, ``⏎``),
space (96, ``" "``) and shift (97, ``⇧``). The blank is 98, so models emit 99 classes.

Keys are pynput-style names as stored in the HDF5 ``keystrokes`` JSON (a printable character is the
bare character; special keys are ``Key.<name>``). Text uses the unicode glyphs above.

:func:`render_text` turns typed keys into the text a user would see (backspaces applied, shift folded
into the next key): the one rendering rule, used by the rendered-text CER (:mod:`emgscale.metrics`) and
the LM's training text (:mod:`emgscale.lm.text`).
"""

from __future__ import annotations

import string
from functools import lru_cache

import numpy as np
from unidecode import unidecode

KEY_BACKSPACE, KEY_ENTER, KEY_SPACE, KEY_SHIFT = "Key.backspace", "Key.enter", "Key.space", "Key.shift"
BACKSPACE, ENTER, SPACE, SHIFT = "\u232b", "\u23ce", " ", "\u21e7"

# Special keys and the glyph that stands for each in text. Only the first four are in the vocabulary.
_SPECIAL_KEY_TO_CHAR = {
    KEY_BACKSPACE: BACKSPACE,
    KEY_ENTER: ENTER,
    KEY_SPACE: SPACE,
    KEY_SHIFT: SHIFT,
}
_UNICHAR_TO_KEY = {
    **{c: k for k, c in _SPECIAL_KEY_TO_CHAR.items()},
    "\u21e5": "Key.tab",  # ⇥
    "\u2303": "Key.ctrl",  # ⌃
    "\u2318": "Key.cmd",  # ⌘
    "\u2191": "Key.shift_l",  # ↑
    "\u21e1": "Key.shift_r",  # ⇡
}
#: What shift makes of a key on a US keyboard (letters: their capital; other keys unchanged).
_SHIFTED = dict(zip("`1234567890-=[]\\;',./", '~!@#$%^&*()_+{}|:"<>?'))


def render_text(keys: str) -> str:
    """The text a user sees after typing ``keys`` (charset glyphs): backspaces applied, shift folded in.

    A backspace deletes the last visible character (nothing at the start); a shift applies to the next
    key, whatever it is: a letter becomes its capital, a digit or punctuation key its US-keyboard shifted
    character (``1`` -> ``!``), an already shifted character stays; a shift before a backspace, space or
    enter, or at the end, shows nothing. Enter is a line break (``\\n``).

    >>> render_text("ab\u232bc \u21e7d\u21e71")
    'ac D!'

    Args:
        keys: typed keys as text (e.g. :meth:`CharacterSet.labels_to_str` of labels).

    Returns:
        The rendered text.
    """
    out: list[str] = []
    shift = False
    for c in keys:
        if c == SHIFT:
            shift = True
            continue
        if c == BACKSPACE:
            if out:
                out.pop()
        elif c == ENTER:
            out.append("\n")
        else:
            out.append((_SHIFTED.get(c, c.upper()) if shift else c))
        shift = False
    return "".join(out)


# Substitutions applied before anything else when normalising text.
_STR_SUBSTITUTIONS = {
    "\n": ENTER,
    "\r": ENTER,
    "\b": BACKSPACE,
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2014": "-",
}


class CharacterSet:
    """Maps between keys, characters and class labels in the reference order.

    Attributes:
        keys: the 98 pynput key names, in label order.
        chars: the 98 unicode characters, in label order.
        blank: the CTC blank label (98).
        num_classes: classes a model emits, blank included (99).
    """

    def __init__(self) -> None:
        printable = list(string.ascii_letters) + list(string.digits) + list(string.punctuation)
        self.keys: list[str] = printable + [KEY_BACKSPACE, KEY_ENTER, KEY_SPACE, KEY_SHIFT]
        self.chars: list[str] = printable + [BACKSPACE, ENTER, SPACE, SHIFT]
        self._key_to_label = {k: i for i, k in enumerate(self.keys)}
        self._char_to_label = {c: i for i, c in enumerate(self.chars)}
        self._key_to_char = dict(zip(self.keys, self.chars))
        self.blank: int = len(self.keys)
        self.num_classes: int = len(self.keys) + 1
        self.backspace_label: int = self._char_to_label[BACKSPACE]
        self.space_label: int = self._char_to_label[SPACE]

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, item: str) -> bool:
        return item in self._key_to_label or item in self._char_to_label

    def normalize_str(self, text: str) -> str:
        """Apply the reference substitutions, then replace an unknown character by its unidecode form
        when that form is a single known character (``é`` -> ``e``). Other unknown characters stay."""
        out = []
        for c in text:
            c = _STR_SUBSTITUTIONS.get(c, c)
            if c not in self._char_to_label:
                ascii_form = unidecode(c)
                if len(ascii_form) == 1 and ascii_form in self._char_to_label:
                    c = ascii_form
            out.append(c)
        return "".join(out)

    def clean_str(self, text: str) -> str:
        """Normalise ``text`` and drop every character that is still out of vocabulary."""
        return "".join(c for c in self.normalize_str(text) if c in self._char_to_label)

    def key_to_char(self, key: str) -> str | None:
        """Normalise a pynput key name to its in-vocabulary character, or None when it is dropped.

        A name in the vocabulary is kept; a single character is normalised (``"\\n"`` -> enter,
        ``"é"`` -> ``e``, ``"⇧"`` -> shift); any other ``Key.*`` name (``Key.shift_r``, ``Key.tab``, ...)
        and any other unknown name is out of vocabulary.
        """
        if key in self._key_to_label:
            return self._key_to_char[key]
        if len(key) == 1:
            c = self.normalize_str(key)
            mapped = _UNICHAR_TO_KEY.get(c)
            if mapped is not None:
                return self._key_to_char.get(mapped)
            if c in self._char_to_label:
                return c
        return None

    def str_to_labels(self, text: str) -> list[int]:
        """Class labels of ``text`` after cleaning (unknown characters are dropped)."""
        return [self._char_to_label[c] for c in self.clean_str(text)]

    def labels_to_str(self, labels: "list[int] | np.ndarray") -> str:
        """Text of a label sequence; the blank is not allowed here."""
        try:
            return "".join(self.chars[int(i)] for i in labels)
        except IndexError as e:
            raise ValueError(f"label out of range 0..{len(self.chars) - 1} in {list(labels)[:20]}") from e

    def render(self, labels: "list[int] | np.ndarray") -> str:
        """The text a user sees after typing ``labels`` (:func:`render_text`: ``ab⌫c`` -> ``ac``)."""
        return render_text(self.labels_to_str(labels))

    def char_to_label(self, char: str) -> int:
        """Label of one in-vocabulary character."""
        try:
            return self._char_to_label[char]
        except KeyError as e:
            raise ValueError(f"character {char!r} is not in the emg2qwerty charset") from e


@lru_cache(maxsize=1)
def charset() -> CharacterSet:
    """The shared :class:`CharacterSet` instance."""
    return CharacterSet()
