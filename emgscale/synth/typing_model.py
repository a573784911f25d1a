"""A synthetic touch typist: prompts -> key presses and releases with realistic timing and errors.

Each user has a :class:`TypistProfile` (speed, rhythm, error habits, which shift and which thumb they
use); each session scales the speed a little. Timing of a key depends on the previous key: hand
alternation is fast, the same finger on another key is slow, number-row and shifted keys cost extra,
and there are pauses at word and sentence boundaries, occasional hesitations and a reading pause
before each prompt. A capital or shifted symbol is preceded by a shift press held across it: ``Key.shift``
(left) for right-hand characters; for left-hand characters the right shift (``Key.shift_r``, which
the reference labels drop) with a per-user probability. Typos strike a neighbouring key (or double
strike, or swap two letters); usually the typist notices after a few more keys, pauses and corrects
with ``Key.backspace``. ``Key.enter`` ends each prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from emgscale.data.charset import BACKSPACE, ENTER, SHIFT
from emgscale.synth.keyboard import (
    KEY_BACKSPACE, KEY_ENTER, KEY_SHIFT, KEY_SHIFT_R, KEY_SPACE, LEFT, RIGHT, key_for_char, key_place, neighbours,
)

MIN_PRESS_GAP_S = 0.02  # two presses are never closer than this


@dataclass(frozen=True)
class TypistProfile:
    """How one user types (drawn once per user by :func:`sample_typist`).

    Attributes:
        iki_s: median interval between two presses inside a word, seconds.
        iki_sigma: log-normal spread of intervals.
        hold_s: median time a key is held down, seconds.
        typo_rate: chance per lower-case letter of a typo.
        notice_keys_mean: mean number of further keys typed before a typo is noticed.
        uncorrected_prob: share of typos never corrected.
        shift_r_prob: chance of using the right shift for a left-hand capital.
        space_hand: thumb on the space bar (``LEFT`` 0 / ``RIGHT`` 1).
        read_s: median pause to read a new prompt before the first key, seconds.
        word_pause_s: median extra pause before a word, seconds.
        sentence_pause_s: median extra pause after sentence-ending punctuation, seconds.
        hesitation_prob: chance per word of a long hesitation (0.4-1.5 s).
    """

    iki_s: float = 0.17
    iki_sigma: float = 0.35
    hold_s: float = 0.10
    typo_rate: float = 0.015
    notice_keys_mean: float = 0.8
    uncorrected_prob: float = 0.1
    shift_r_prob: float = 0.5
    space_hand: int = RIGHT
    read_s: float = 0.8
    word_pause_s: float = 0.06
    sentence_pause_s: float = 0.35
    hesitation_prob: float = 0.02


def sample_typist(rng: np.random.Generator) -> TypistProfile:
    """Draw a user's typing profile (about 35-85 words per minute with reading pauses, 0.3-4 % typos)."""
    return TypistProfile(
        iki_s=float(np.clip(rng.lognormal(np.log(0.165), 0.25), 0.10, 0.32)),
        iki_sigma=float(rng.uniform(0.28, 0.45)),
        hold_s=float(rng.uniform(0.075, 0.13)),
        typo_rate=float(np.exp(rng.uniform(np.log(0.003), np.log(0.04)))),
        notice_keys_mean=float(rng.uniform(0.3, 1.5)),
        uncorrected_prob=float(rng.uniform(0.0, 0.25)),
        shift_r_prob=float(rng.choice([0.0, rng.uniform(0.2, 0.9), 1.0], p=[0.3, 0.4, 0.3])),
        space_hand=int(RIGHT if rng.random() < 0.8 else LEFT),
        read_s=float(rng.uniform(0.5, 1.4)),
        word_pause_s=float(rng.uniform(0.02, 0.12)),
        sentence_pause_s=float(rng.uniform(0.15, 0.6)),
        hesitation_prob=float(rng.uniform(0.005, 0.04)),
    )


@dataclass
class TypedSession:
    """The outcome of typing prompts for a stretch of time.

    Attributes:
        keystrokes: ``{"key", "start", "end"}`` objects sorted by ``start`` (unix seconds).
        prompts: ``{"name": "text_prompt", "start", "end", "payload": {"text"}}`` objects.
        label_text: the text the reference label semantics give for all keystrokes (typos,
            ``⌫``, ``⇧`` for left shift only, ``⏎``), built independently of the label code.
    """

    keystrokes: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    label_text: str = ""


class _Typist:
    """Types one prompt at a time; keeps the clock and the previous key."""

    def __init__(self, profile: TypistProfile, rng: np.random.Generator, speed: float, t0: float) -> None:
        self.p, self.rng, self.speed = profile, rng, speed
        self.t = t0  # press time of the previous key
        self.prev_key: str | None = None
        self.events: list[tuple[str, float, float, str]] = []  # key, press, release, label glyph

    def _hold(self, key: str) -> float:
        h = self.p.hold_s * self.rng.lognormal(0.0, 0.2) * (0.9 if key == KEY_SPACE else 1.0)
        return float(max(h, 0.03))

    def _interval(self, key: str) -> float:
        p, rng = self.p, self.rng
        dt = p.iki_s * self.speed * rng.lognormal(0.0, p.iki_sigma)
        cur = key_place(key, p.space_hand)
        if self.prev_key is not None:
            prev = key_place(self.prev_key, p.space_hand)
            if key == self.prev_key:
                dt *= 1.15
            elif prev.hand == cur.hand and prev.finger == cur.finger:
                dt *= 1.45
            elif prev.hand != cur.hand:
                dt *= 0.8
            if self.prev_key == KEY_SPACE:
                dt += p.word_pause_s * rng.lognormal(0.0, 0.5)
                if rng.random() < p.hesitation_prob:
                    dt += rng.uniform(0.4, 1.5)
        if key == KEY_SPACE:
            dt *= 0.9
        if cur.dy <= -2:
            dt *= 1.25
        return float(max(dt, MIN_PRESS_GAP_S + 0.015))

    def press(self, key: str, glyph: str, extra_s: float = 0.0, gap_s: float | None = None) -> None:
        """Press ``key`` after the usual interval (or ``gap_s``) plus ``extra_s``; shift it when needed."""
        base_key, shifted = (key, False) if key.startswith("Key.") else key_for_char(key)
        dt = (self._interval(base_key) if gap_s is None else gap_s) + extra_s
        if shifted:
            dt += self.rng.uniform(0.06, 0.14) * self.speed
        t_press = self.t + dt
        hold = self._hold(base_key)
        if shifted:
            right_hand = key_place(base_key).hand == RIGHT
            shift_key = KEY_SHIFT if right_hand or self.rng.random() >= self.p.shift_r_prob else KEY_SHIFT_R
            lead = min(self.rng.uniform(0.05, 0.12), dt - MIN_PRESS_GAP_S)
            self.events.append((shift_key, t_press - lead, t_press + hold + self.rng.uniform(0.02, 0.08),
                                SHIFT if shift_key == KEY_SHIFT else ""))
        self.events.append((base_key, t_press, t_press + hold, glyph))
        self.t, self.prev_key = t_press, base_key

    def type_char(self, c: str, extra_s: float = 0.0) -> None:
        key, _ = key_for_char(c)
        self.press(c if key != KEY_SPACE else KEY_SPACE, c, extra_s)

    def type_prompt(self, text: str) -> None:
        """Type ``text`` then Enter, with typos and their corrections."""
        p, rng = self.p, self.rng
        i, retyping_at, pause_at = 0, -1, -1
        while i < len(text):
            c = text[i]
            extra = p.sentence_pause_s * rng.lognormal(0.0, 0.4) if i == pause_at else 0.0
            if c in ".!?" and i + 2 < len(text) and text[i + 1] == " ":
                pause_at = i + 2  # think before the next sentence's first letter
            if i != retyping_at and c.islower() and neighbours(c) and rng.random() < p.typo_rate:
                wrong, covered = self._wrong_sequence(text, i)
                for w in wrong:
                    self.type_char(w, extra)
                    extra = 0.0
                if rng.random() < p.uncorrected_prob:
                    i += covered
                    continue
                k = min(int(rng.poisson(p.notice_keys_mean)), len(text) - i - covered)
                for c2 in text[i + covered:i + covered + k]:
                    self.type_char(c2)
                for j in range(len(wrong) + k):
                    gap = rng.uniform(0.25, 0.7) if j == 0 else rng.uniform(0.08, 0.15) * self.speed
                    self.press(KEY_BACKSPACE, BACKSPACE, gap_s=gap)
                retyping_at = i
                continue
            self.type_char(c, extra)
            i += 1
        self.press(KEY_ENTER, ENTER, extra_s=0.3 * p.iki_s)

    def _wrong_sequence(self, text: str, i: int) -> tuple[list[str], int]:
        """The keys struck instead of ``text[i]`` and how many characters of ``text`` they stand for."""
        c, rng = text[i], self.rng
        near = neighbours(c)
        r = rng.random()
        if r < 0.15 and i + 1 < len(text) and text[i + 1].isalpha() and text[i + 1] != c:
            return [text[i + 1], c], 2  # transposition: "teh"
        if r < 0.3:
            return [near[rng.integers(len(near))], c], 1  # double strike: neighbour, then the letter
        return [near[rng.integers(len(near))]], 1  # substitution


def type_session(
    prompts: Sequence[str],
    profile: TypistProfile,
    rng: np.random.Generator,
    start_s: float,
    end_s: float,
    speed: float = 1.0,
) -> TypedSession:
    """Type prompts one after another until the recording ends (the last one may be cut short).

    Args:
        prompts: texts to type, in order (the caller picks them; cycled if the session outlasts them).
        profile: the typist.
        rng: random source (consumed deterministically).
        start_s, end_s: unix seconds of the recording's first and last sample.
        speed: session factor on every interval (above 1 is slower).

    Returns:
        The keystrokes, prompt records and expected label text. Every press and release lies in
        ``(start_s, end_s)``.
    """
    if not prompts:
        raise ValueError("no prompts to type")
    if end_s <= start_s:
        raise ValueError(f"end_s {end_s} must be after start_s {start_s}")
    out = TypedSession()
    all_events: list[tuple[str, float, float, str]] = []
    shown = start_s + rng.uniform(0.3, 1.0)
    idx = 0
    while True:
        text = prompts[idx % len(prompts)]
        typist = _Typist(profile, rng, speed, shown + profile.read_s * rng.lognormal(0.0, 0.3))
        typist.prev_key = None
        typist.type_prompt(text)
        events = typist.events
        stop_s = end_s - 0.2
        finished = max(e[2] for e in events) <= stop_s
        if not finished:  # the recording ends mid-prompt: keep the keys released before it does
            n_kept = 0
            while n_kept < len(events) and events[n_kept][2] <= stop_s:
                n_kept += 1
            events = events[:n_kept]
            if not events:
                break
        last = max(e[2] for e in events)
        all_events.extend(events)
        out.prompts.append({"name": "text_prompt", "start": shown, "end": last, "payload": {"text": text}})
        if not finished:
            break
        shown = last + rng.uniform(0.15, 0.5)
        idx += 1
    # Presses are generated in time order; the stable sort only guards that invariant.
    all_events.sort(key=lambda e: e[1])
    out.keystrokes = [{"key": k, "start": a, "end": b} for k, a, b, _ in all_events]
    out.label_text = "".join(g for *_, g in all_events)
    return out
