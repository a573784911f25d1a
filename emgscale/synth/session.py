"""One synthetic session, in memory or on disk: user model + typing + EMG, seeded independently.

Seeds: a user's anatomy and typing habits come from ``(seed, user)``, a session's condition, text,
keystrokes and EMG from ``(seed, user, session index)``. Sessions can therefore be generated in any
order, in parallel, or alone, and always give the same bytes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from emgscale.data.splits import MetadataRow
from emgscale.data.writer import write_session_file
from emgscale.synth.signal import SAMPLE_RATE_HZ, Anatomy, sample_anatomy, sample_condition, synthesize_emg
from emgscale.synth.text import prompts_from_file
from emgscale.synth.typing_model import TypistProfile, sample_typist, type_session

CONDITION = "on_keyboard"
CONTACT_ARTIFACT_TAG = "contact artifact"
# Domain tags keep the random streams of users, sessions, planning and splits apart.
TAG_USER, TAG_SESSION, TAG_PLAN, TAG_SPLIT = 0x5E55_0001, 0x5E55_0002, 0x5E55_0003, 0x5E55_0004


def user_number(user: str) -> int:
    """A user id as a non-negative int for seeding (digits as they are, other ids via CRC32)."""
    return int(user) if user.isdigit() else zlib.crc32(user.encode("utf-8"))


@dataclass(frozen=True)
class SessionPlan:
    """Everything that fixes one session before any signal is drawn.

    Attributes:
        user: user id (digits, not zero-padded).
        session: session name (the file stem).
        session_index: index of the session among its user's sessions (part of its seed).
        start_s: unix time of the first sample.
        duration_s: length of the recording.
        quality_check_tags: tags for ``metadata.csv``; ``contact artifact`` also adds electrode pops.
    """

    user: str
    session: str
    session_index: int
    start_s: float
    duration_s: float
    quality_check_tags: tuple[str, ...] = ()


@dataclass
class UserModel:
    """A synthetic user: typing habits and forearm anatomy."""

    user: str
    typist: TypistProfile
    anatomy: Anatomy


@dataclass
class SyntheticSession:
    """A generated session in memory.

    Attributes:
        plan: what was asked for.
        emg: float32 ``(T, 2, 16)``; time: float64 ``(T,)`` unix seconds.
        keystrokes, prompts: the JSON-ready lists stored in the file.
        label_text: the label the reference semantics give for the whole session (built independently).
    """

    plan: SessionPlan
    emg: np.ndarray
    time: np.ndarray
    keystrokes: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    label_text: str = ""


@lru_cache(maxsize=8)
def make_user(seed: int, user: str) -> UserModel:
    """The user model of ``user`` under ``seed`` (the same for all of that user's sessions)."""
    rng = np.random.default_rng([TAG_USER, seed, user_number(user)])
    typist = sample_typist(rng)
    return UserModel(user=user, typist=typist, anatomy=sample_anatomy(rng, typist.space_hand))


def generate_session(plan: SessionPlan, seed: int, text: "str | None" = None) -> SyntheticSession:
    """Generate one session in memory.

    Args:
        plan: user, name, timing and tags of the session.
        seed: corpus seed.
        text: prompt text file; None for the text shipped with the package.

    Returns:
        The session: EMG, timestamps, keystrokes, prompts and expected label text.
    """
    if plan.duration_s <= 2.0:
        raise ValueError(f"session {plan.session}: duration_s must be > 2 s, got {plan.duration_s}")
    user = make_user(seed, plan.user)
    rng = np.random.default_rng([TAG_SESSION, seed, user_number(plan.user), plan.session_index])
    num_samples = int(round(plan.duration_s * SAMPLE_RATE_HZ))
    duration_s = num_samples / SAMPLE_RATE_HZ
    cond = sample_condition(rng, duration_s, contact_artifacts=CONTACT_ARTIFACT_TAG in plan.quality_check_tags)
    speed = float(rng.lognormal(0.0, 0.08))
    prompts = prompts_from_file(text)
    first = int(rng.integers(len(prompts)))
    ordered = prompts[first:] + prompts[:first]
    end_s = plan.start_s + (num_samples - 1) / SAMPLE_RATE_HZ
    typed = type_session(ordered, user.typist, rng, plan.start_s, end_s, speed=speed)
    emg = synthesize_emg(user.anatomy, cond, typed.keystrokes, plan.start_s, num_samples, rng)
    time = plan.start_s + np.arange(num_samples, dtype=np.float64) / SAMPLE_RATE_HZ
    prompts_json = [{**p, "payload": {"text": p["payload"]["text"].replace("\n", "\u23ce")}} for p in typed.prompts]
    return SyntheticSession(plan=plan, emg=emg, time=time, keystrokes=typed.keystrokes, prompts=prompts_json,
                            label_text=typed.label_text)


def write_session(session: SyntheticSession, out_dir: "str | Path") -> tuple[MetadataRow, int]:
    """Write ``<out_dir>/<session>.hdf5`` in the official layout.

    Returns:
        The session's ``metadata.csv`` row and the file size in bytes.
    """
    plan = session.plan
    path = write_session_file(
        Path(out_dir) / f"{plan.session}.hdf5", session.emg, session.time, session_name=plan.session,
        user=plan.user, keystrokes=session.keystrokes, prompts=session.prompts, condition=CONDITION,
    )
    duration_mins = float(session.time[-1] - session.time[0]) / 60.0
    row = MetadataRow(user=plan.user, session=plan.session, condition=CONDITION, duration_mins=duration_mins,
                      num_keystrokes=len(session.keystrokes), num_prompts=len(session.prompts),
                      quality_check_tags=list(plan.quality_check_tags))
    return row, path.stat().st_size


def generate_and_write(plan: SessionPlan, seed: int, text: "str | None", out_dir: str) -> tuple[MetadataRow, int, int]:
    """Generate and write one session (the unit of work of a corpus; runs in worker processes).

    Returns:
        The metadata row, the file size in bytes and the number of samples.
    """
    session = generate_session(plan, seed, text)
    row, size = write_session(session, out_dir)
    return row, size, len(session.time)
