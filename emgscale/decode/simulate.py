"""Realistic-looking CTC emissions made from text, for decoder tests and benchmarks.

Simulates a confident but imperfect acoustic model at the emg2qwerty frame rate (125 Hz): each key is
a short peak (1-2 frames) between long blank stretches; a fraction of keys is confused with a QWERTY
neighbour (the true key close behind), some are dropped (the peak is weak and blank wins), and a few
spurious peaks are inserted. The LM can fix many of these, greedy decoding cannot.
"""

from __future__ import annotations

import numpy as np

from emgscale.data.charset import charset

_ROWS = ["1234567890-=", "qwertyuiop[]\\", "asdfghjkl;'", "zxcvbnm,./"]


def _neighbours() -> dict[int, list[int]]:
    cs = charset()
    pos = {c: (r, i) for r, row in enumerate(_ROWS) for i, c in enumerate(row)}
    out: dict[int, list[int]] = {}
    for c, (r, i) in pos.items():
        near = [d for d, (r2, i2) in pos.items() if d != c and abs(r2 - r) <= 1 and abs(i2 - i) <= 1]
        out[cs.char_to_label(c)] = [cs.char_to_label(d) for d in near]
        if c.isalpha():  # the capital shares the position
            out[cs.char_to_label(c.upper())] = [cs.char_to_label(d.upper()) for d in near if d.isalpha()]
    return out


def add_typos(labels: "list[int] | np.ndarray", rng: np.random.Generator, rate: float = 0.03) -> list[int]:
    """Typing with corrected typos, as emg2qwerty labels record it: before a key, with probability
    ``rate``, a neighbouring key is typed and then deleted with backspace (``c z ⌫ a t``)."""
    cs = charset()
    near = _neighbours()
    out: list[int] = []
    for lab in list(labels):
        if rng.random() < rate and near.get(int(lab)):
            out += [int(rng.choice(near[int(lab)])), cs.backspace_label]
        out.append(int(lab))
    return out


def _segments(labels, rng, gap_frames, confusion_rate, deletion_rate, insertion_rate, margin_nats, noise):
    """Per key: logits of its blank gap, then of its 1-2 frame peak."""
    cs = charset()
    C, blank = cs.num_classes, cs.blank
    near = _neighbours()
    for lab in labels:
        lab = int(lab)
        gap = int(rng.integers(*gap_frames))
        g = rng.normal(0.0, noise, size=(gap, C)).astype(np.float32)
        g[:, blank] += 10.0
        if rng.random() < insertion_rate and gap > 2:
            g[gap // 2, int(rng.integers(0, blank))] += 12.0
        width = int(rng.integers(1, 3))
        k = rng.normal(0.0, noise, size=(width, C)).astype(np.float32)
        k[:, blank] += 4.0
        u = rng.random()
        if u < confusion_rate and near.get(lab):
            wrong = int(rng.choice(near[lab]))
            k[:, wrong] += 10.0
            k[:, lab] += 10.0 - float(rng.uniform(*margin_nats))
        elif u < confusion_rate + deletion_rate:
            k[:, lab] += 3.0
        else:
            k[:, lab] += 10.0
        yield g, k


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)


def _blank_logits(frames: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    cs = charset()
    g = rng.normal(0.0, noise, size=(frames, cs.num_classes)).astype(np.float32)
    g[:, cs.blank] += 10.0
    return g


def simulate_emissions(labels: "list[int] | np.ndarray", rng: np.random.Generator, *,
                       gap_frames: tuple[int, int] = (8, 30), confusion_rate: float = 0.15,
                       deletion_rate: float = 0.03, insertion_rate: float = 0.02,
                       margin_nats: tuple[float, float] = (0.0, 2.5), noise: float = 1.0) -> np.ndarray:
    """CTC log-probs (T, 99) whose greedy decoding is ``labels`` with simulated errors.

    Args:
        labels: the key labels actually typed (no blank).
        rng: random generator (the emissions are a function of it and the arguments).
        gap_frames: blank frames before each key, uniform in [low, high).
        confusion_rate: fraction of keys whose peak is a neighbouring key, the true key
            ``margin_nats`` behind.
        deletion_rate: fraction of keys whose peak loses to blank.
        insertion_rate: fraction of gaps with a spurious key peak.
        margin_nats: range of the log-prob gap between the wrong and the true key.
        noise: standard deviation of the logit noise on every class.

    Returns:
        (T, 99) float32 log-probabilities (rows log-sum-exp to 0).
    """
    parts = [x for seg in _segments(labels, rng, gap_frames, confusion_rate, deletion_rate, insertion_rate,
                                    margin_nats, noise) for x in seg]
    parts.append(_blank_logits(int(rng.integers(*gap_frames)), rng, noise))
    return _log_softmax(np.concatenate(parts, axis=0))


def simulate_frames(labels: "list[int] | np.ndarray", num_frames: int, rng: np.random.Generator,
                    **kwargs: object) -> tuple[np.ndarray, list[int]]:
    """Exactly ``num_frames`` frames of simulated emissions for a prefix of ``labels``.

    Keys are added while they fit; the rest is blank. Takes :func:`simulate_emissions`'s keyword
    arguments.

    Returns:
        ``(log_probs (num_frames, 99), the labels typed in them)``.
    """
    opts = dict(gap_frames=(8, 30), confusion_rate=0.15, deletion_rate=0.03, insertion_rate=0.02,
                margin_nats=(0.0, 2.5), noise=1.0)
    opts.update(kwargs)
    parts, used, n = [], [], 0
    for lab, (g, k) in zip(labels, _segments(labels, rng, **opts)):  # type: ignore[arg-type]
        if n + len(g) + len(k) > num_frames:
            break
        parts += [g, k]
        used.append(int(lab))
        n += len(g) + len(k)
    parts.append(_blank_logits(num_frames - n, rng, float(opts["noise"])))  # type: ignore[arg-type]
    return _log_softmax(np.concatenate(parts, axis=0)), used
