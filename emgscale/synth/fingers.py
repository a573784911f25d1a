"""A synthetic finger dataset in the course's format: 8 channels at 200 Hz, a label per row, as CSV.

Built on the keyboard corpus's signal model (:mod:`emgscale.synth.signal`): the same forearm sources,
motor units and spatial patterns, per-user anatomy (``sample_anatomy``) and per-session band placement,
contact, noise and mains (``sample_condition``). The armband is the right band's ring seen at 8 evenly
spaced electrodes (every other of the model's 16, so the session's placement still shifts it), rendered
at 2 kHz and brought to 200 Hz with the anti-aliased resampler a 200 Hz device's front end amounts to
(:func:`emgscale.data.device.resample`).

A session is a sequence of cued trials: rest for 1-2.5 s, then one finger (thumb, index, middle, ring,
little; shuffled so each comes equally often) flexed and held for 1-2.5 s. Labels follow the *cue*
(``rest`` = 0, then the fingers 1-5, :data:`~emgscale.data.tables.FINGER_CLASSES`); the muscles
follow it after a reaction time (median 250 ms onset, 200 ms offset, varying per trial) and with the
model's reach / press / hold / release bursts, so labels are imperfect at the edges, as in a real
cued recording. Each flexion recruits the finger's flexor and, weaker, its neighbours (enslavement,
per user), with a little co-contraction of its extensor and of the wrist.

Layout written: ``<out>/user<k>/session<j>.csv`` (``time_s, emg0..emg7, label``), ``<out>/split.yaml``
(per user: last session test, the one before val) and ``<out>/dataset.json`` (what it is).
Seeds: a user's anatomy from ``(seed, user)``, a session from ``(seed, user, session)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emgscale.common import atomic_write_json, print0
from emgscale.data.device import every_other, resample
from emgscale.data.tables import FINGER_CLASSES, make_split, write_split, write_table
from emgscale.synth.keyboard import KEY_SPACE, RIGHT
from emgscale.synth.signal import (EXT0, FCR, FCU, FLEX0, NUM_SOURCES, SAMPLE_RATE_HZ, Anatomy, sample_anatomy,
                                   sample_condition, synthesize_emg)

TAG_FINGER_USER, TAG_FINGER_SESSION = 0xF1_6E00_01, 0xF1_6E00_02
#: Right-hand keys whose motor programs the finger trials replace (the signal model looks programs up by key).
PROXY_KEYS = (KEY_SPACE, "j", "k", "l", ";")


@dataclass
class FingerSynthConfig:
    """The synthetic finger corpus.

    Attributes:
        out: output folder.
        users: people (each with their own anatomy and finger habits).
        sessions_per_user: recordings per person (the band is put on again for each).
        minutes: length of each session.
        seed: corpus seed.
        sample_rate_hz: the armband's rate.
        rest_s, hold_s: ranges of the rest before a cue and of the cued hold, in seconds.
        reaction_s: median delay of the movement's onset after the cue (its offset: 0.8 x this).
    """

    out: str = "data/fingers"
    users: int = 4
    sessions_per_user: int = 4
    minutes: float = 2.0
    seed: int = 0
    sample_rate_hz: float = 200.0
    rest_s: tuple[float, float] = (1.0, 2.5)
    hold_s: tuple[float, float] = (1.0, 2.5)
    reaction_s: float = 0.25


def finger_anatomy(seed: int, user: int) -> Anatomy:
    """User ``user``'s forearm with finger-flexion programs on the proxy keys."""
    rng = np.random.default_rng([TAG_FINGER_USER, seed, user])
    anatomy = sample_anatomy(rng, RIGHT)
    enslave, force = rng.uniform(0.1, 0.35), rng.uniform(0.45, 0.8)
    programs = dict(anatomy.programs)
    for f, key in enumerate(PROXY_KEYS):
        prog = np.zeros((4, NUM_SOURCES))
        reach, press, hold, release = prog
        reach[FLEX0 + f] = 0.25
        press[FLEX0 + f] = 1.0
        hold[FLEX0 + f] = force
        for g in (f - 1, f + 1):
            if 0 <= g <= 4:
                share = enslave * (0.5 if 0 in (f, g) else 1.0)  # the thumb moves more independently
                press[FLEX0 + g], hold[FLEX0 + g] = share, share * force
        hold[EXT0 + f] = 0.1 * force  # co-contraction that steadies the finger
        press[FCR] = press[FCU] = hold[FCR] = hold[FCU] = 0.05
        release[EXT0 + f] = 0.3
        programs[key] = (prog * rng.lognormal(0.0, 0.2, size=prog.shape)).astype(np.float32)
    return dataclasses.replace(anatomy, programs=programs)


def cue_schedule(rng: np.random.Generator, duration_s: float, cfg: FingerSynthConfig
                 ) -> list[tuple[float, float, int]]:
    """Cued trials ``(on_s, off_s, finger 0-4)`` of one session; each finger equally often (shuffled rounds)."""
    trials, t, bag = [], 0.0, []
    while True:
        t += rng.uniform(*cfg.rest_s)
        hold = rng.uniform(*cfg.hold_s)
        if t + hold + 1.0 > duration_s:
            return trials
        if not bag:
            bag = list(rng.permutation(5))
        trials.append((t, t + hold, int(bag.pop())))
        t += hold


def generate_session(cfg: FingerSynthConfig, user: int, session: int) -> tuple[np.ndarray, np.ndarray]:
    """One session: EMG (T, 8) float32 at ``cfg.sample_rate_hz`` and its labels (T,) int64."""
    anatomy = finger_anatomy(cfg.seed, user)
    rng = np.random.default_rng([TAG_FINGER_SESSION, cfg.seed, user, session])
    n_out = int(round(cfg.minutes * 60.0 * cfg.sample_rate_hz))
    n_src = int(np.ceil(n_out * SAMPLE_RATE_HZ / cfg.sample_rate_hz))
    duration_s = n_src / SAMPLE_RATE_HZ
    cond = sample_condition(rng, duration_s)
    trials = cue_schedule(rng, duration_s, cfg)
    strokes = []
    for on, off, finger in trials:
        start = on + cfg.reaction_s * rng.lognormal(0.0, 0.25)
        end = max(off + 0.8 * cfg.reaction_s * rng.lognormal(0.0, 0.3), start + 0.2)
        strokes.append({"key": PROXY_KEYS[finger], "start": start, "end": end})
    strokes.sort(key=lambda k: k["start"])
    emg = synthesize_emg(anatomy, cond, strokes, 0.0, n_src, rng)  # (n, 2, 16) at 2 kHz
    right = emg[:, RIGHT][:, every_other(emg.shape[2])]
    out = resample(right, SAMPLE_RATE_HZ, cfg.sample_rate_hz, axis=0)[:n_out]
    labels = np.zeros(len(out), dtype=np.int64)
    t = np.arange(len(out)) / cfg.sample_rate_hz
    for on, off, finger in trials:
        labels[(t >= on) & (t < off)] = finger + 1
    return out, labels


def generate_fingers(cfg: FingerSynthConfig) -> dict[str, Any]:
    """Write the corpus (see the module docstring); returns its description (also ``dataset.json``)."""
    if cfg.users < 1 or cfg.sessions_per_user < 1 or not cfg.minutes > 0:
        raise ValueError("users, sessions_per_user and minutes must be positive")
    out = Path(cfg.out)
    counts = np.zeros(len(FINGER_CLASSES), dtype=np.int64)
    for u in range(cfg.users):
        for s in range(cfg.sessions_per_user):
            emg, labels = generate_session(cfg, u, s)
            write_table(out / f"user{u}" / f"session{s}.csv", emg, labels, cfg.sample_rate_hz)
            counts += np.bincount(labels, minlength=len(FINGER_CLASSES))
        print0(f"[synth] fingers: user{u} written ({cfg.sessions_per_user} sessions)")
    if cfg.sessions_per_user >= 3:
        write_split(make_split(out), out / "split.yaml")
    info = {"synthetic": True, "users": cfg.users, "sessions_per_user": cfg.sessions_per_user,
            "minutes_per_session": cfg.minutes, "sample_rate_hz": cfg.sample_rate_hz, "channels": 8,
            "classes": list(FINGER_CLASSES), "class_rows": counts.tolist(), "seed": cfg.seed,
            "columns": "time_s, emg0..emg7, label"}
    atomic_write_json(out / "dataset.json", info)
    return info
