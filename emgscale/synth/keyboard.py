"""US QWERTY geometry and the standard touch-typing finger assignment.

The synthetic typist uses it for key names, shift and typo neighbours; the EMG model uses it to turn a
key into a reach (how far the finger travels from its home key, in key widths) and a finger.

Coordinates: ``x`` grows to the right in key widths (row stagger included), rows are 0 (numbers) to
3 (bottom). For a key struck by finger ``f`` of hand ``h``, ``dx_inner`` is the lateral reach toward the
body midline from ``f``'s home key (positive = toward the thumb side, i.e. radial deviation) and ``dy`` the
vertical reach (negative = away from the body, up to the number row at -2; positive = toward the body).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

LEFT, RIGHT = 0, 1
THUMB, INDEX, MIDDLE, RING, PINKY = range(5)
FINGER_NAMES = ("thumb", "index", "middle", "ring", "pinky")

KEY_SPACE, KEY_ENTER, KEY_BACKSPACE = "Key.space", "Key.enter", "Key.backspace"
KEY_SHIFT, KEY_SHIFT_R = "Key.shift", "Key.shift_r"

# (row, x of the first key, unshifted characters, shifted characters)
_ROWS = (
    (0, 0.0, "`1234567890-=", "~!@#$%^&*()_+"),
    (1, 1.5, "qwertyuiop[]\\", "QWERTYUIOP{}|"),
    (2, 1.75, "asdfghjkl;'", 'ASDFGHJKL:"'),
    (3, 2.25, "zxcvbnm,./", "ZXCVBNM<>?"),
)
# Finger of each column of each row (touch typing): L = left, R = right; p r m i = pinky ring middle index.
_FINGERS = (
    "Lp Lp Lr Lm Li Li Ri Ri Rm Rr Rp Rp Rp",
    "Lp Lr Lm Li Li Ri Ri Rm Rr Rp Rp Rp Rp",
    "Lp Lr Lm Li Li Ri Ri Rm Rr Rp Rp",
    "Lp Lr Lm Li Li Ri Ri Rm Rr Rp",
)
_FINGER_CODE = {"p": PINKY, "r": RING, "m": MIDDLE, "i": INDEX}
# Home keys (home row x) of each (hand, finger).
_HOME_X = {
    (LEFT, PINKY): 1.75, (LEFT, RING): 2.75, (LEFT, MIDDLE): 3.75, (LEFT, INDEX): 4.75,
    (RIGHT, INDEX): 7.75, (RIGHT, MIDDLE): 8.75, (RIGHT, RING): 9.75, (RIGHT, PINKY): 10.75,
}


@dataclass(frozen=True)
class KeyPlace:
    """Where a key is and which finger strikes it.

    Attributes:
        hand: ``LEFT`` (0) or ``RIGHT`` (1).
        finger: ``THUMB`` (0) .. ``PINKY`` (4).
        dx_inner: lateral reach from the finger's home key, toward the midline, in key widths.
        dy: vertical reach from the home row in rows (-2 number row, +1 bottom row, +2 space bar).
    """

    hand: int
    finger: int
    dx_inner: float
    dy: float


def _place(hand: int, finger: int, x: float, row: int) -> KeyPlace:
    home = _HOME_X[(hand, finger)]
    dx = (x - home) if hand == LEFT else (home - x)
    return KeyPlace(hand, finger, round(dx, 3), float(row - 2))


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, KeyPlace], dict[str, tuple[str, bool]], dict[str, tuple[float, int]], dict[str, str]]:
    places: dict[str, KeyPlace] = {}
    physical: dict[str, str] = {}
    char_keys: dict[str, tuple[str, bool]] = {}
    positions: dict[str, tuple[float, int]] = {}
    for (row, x0, lower, upper), fingers in zip(_ROWS, _FINGERS):
        codes = fingers.split()
        for col, (lo, up) in enumerate(zip(lower, upper)):
            code = codes[col]
            hand = LEFT if code[0] == "L" else RIGHT
            place = _place(hand, _FINGER_CODE[code[1]], x0 + col, row)
            places[lo] = places[up] = place
            physical[lo] = physical[up] = lo
            char_keys[lo] = (lo, False)
            char_keys[up] = (up, True)
            positions[lo] = (x0 + col, row)
    places[KEY_BACKSPACE] = _place(RIGHT, PINKY, 13.5, 0)
    places[KEY_ENTER] = _place(RIGHT, PINKY, 12.5, 2)
    places[KEY_SHIFT] = _place(LEFT, PINKY, 0.75, 3)
    places[KEY_SHIFT_R] = _place(RIGHT, PINKY, 12.5, 3)
    places[KEY_SPACE] = KeyPlace(RIGHT, THUMB, 0.0, 2.0)
    char_keys[" "] = (KEY_SPACE, False)
    for special in (KEY_BACKSPACE, KEY_ENTER, KEY_SHIFT, KEY_SHIFT_R, KEY_SPACE):
        physical[special] = special
    return places, char_keys, positions, physical


def key_place(key: str, space_hand: int = RIGHT) -> KeyPlace:
    """Hand, finger and reach of a key name as stored in ``keystrokes`` (``a``, ``A``, ``!``, ``Key.space``).

    Args:
        key: pynput-style key name.
        space_hand: the thumb that presses the space bar (a habit that varies between typists).

    Raises:
        ValueError: the key is not on the US QWERTY layout modelled here.
    """
    places = _tables()[0]
    if key not in places:
        raise ValueError(f"key {key!r} is not on the modelled QWERTY layout")
    place = places[key]
    if key == KEY_SPACE and space_hand != place.hand:
        place = KeyPlace(space_hand, THUMB, place.dx_inner, place.dy)
    return place


def all_keys() -> list[str]:
    """Every key name the model knows (printable characters, both cases, and the special keys)."""
    return list(_tables()[0])


def physical_keys() -> list[str]:
    """One name per physical key: the unshifted character, or the ``Key.*`` name."""
    return sorted(set(_tables()[3].values()))


def physical_key(key: str) -> str:
    """The physical key a key name is typed on (``A`` and ``a`` -> ``a``; ``!`` -> ``1``).

    Raises:
        ValueError: the key is not on the modelled layout.
    """
    try:
        return _tables()[3][key]
    except KeyError:
        raise ValueError(f"key {key!r} is not on the modelled QWERTY layout") from None


def typable(char: str) -> bool:
    """True when ``char`` can be typed on the layout (printable ASCII or space)."""
    return char in _tables()[1]


def key_for_char(char: str) -> tuple[str, bool]:
    """The key name stored for typing ``char`` and whether shift is held for it.

    Raises:
        ValueError: ``char`` cannot be typed on the layout.
    """
    try:
        return _tables()[1][char]
    except KeyError:
        raise ValueError(f"character {char!r} cannot be typed on the modelled QWERTY layout") from None


@lru_cache(maxsize=None)
def neighbours(char: str) -> tuple[str, ...]:
    """Lower-case letters physically adjacent to the letter ``char`` (typo candidates); () for non-letters."""
    c = char.lower()
    positions = _tables()[2]
    if not c.isalpha() or c not in positions:
        return ()
    x, row = positions[c]
    out = []
    for other, (ox, orow) in positions.items():
        if other != c and other.isalpha() and abs(orow - row) <= 1 and abs(ox - x) <= (1.0 if orow == row else 0.8):
            out.append(other)
    return tuple(sorted(out))
