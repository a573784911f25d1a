"""Shared pytest fixtures: tiny corpora in the exact emg2qwerty format.

``tiny_corpus`` gives 3 users x 4 sessions of 6 s (2 train, 1 val, 1 test per user), a
``metadata.csv`` and an official-format split file; ``corpus_factory(**kw)`` makes others
(see :func:`make_tiny_corpus` for the knobs). Sessions are random EMG at a microvolt-like scale,
timestamps in unix seconds at 2 kHz with small irregularities, and keystrokes sorted by press time
(including out-of-vocabulary keys, which the labels drop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from emgscale.data.splits import MetadataRow, SessionRef, Split, save_split, write_metadata
from emgscale.data.writer import write_session_file

SAMPLE_RATE_HZ = 2000.0
KEYS = [*"abcdefghijklmnopqrstuvwxyz", "A", ",", "Key.space", "Key.space", "Key.backspace", "Key.shift",
        "Key.enter", "Key.shift_r", "Key.tab"]


@dataclass
class TinyCorpus:
    """A data root with session files, ``metadata.csv`` and one split file.

    Attributes:
        root: the data root.
        split_path: the split YAML (``user: tiny``).
        split: the parsed split.
        users: user ids.
        sessions: ``{user: [session names]}`` in recording order.
        num_rows: ``{session: rows}``.
    """

    root: Path
    split_path: Path
    split: Split
    users: list[str]
    sessions: dict[str, list[str]] = field(default_factory=dict)
    num_rows: dict[str, int] = field(default_factory=dict)

    def path(self, session: str) -> Path:
        return self.root / f"{session}.hdf5"

    def all_sessions(self) -> list[str]:
        return [s for u in self.users for s in self.sessions[u]]


def write_tiny_session(path: Path, *, user: str, session: str, seconds: float, seed: int,
                       t0: float = 1_600_000_000.0, keys_per_s: float = 4.0) -> int:
    """Write one random session; returns its number of rows."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE_HZ))
    envelope = 3.0 + 40.0 * (rng.random((n // 200 + 1, 1, 16)) ** 4)  # quiet floor, typing bursts
    emg = rng.normal(size=(n, 2, 16)) * np.repeat(envelope, 200, axis=0)[:n]
    time = t0 + np.arange(n) / SAMPLE_RATE_HZ + rng.uniform(0, 2e-5, n)
    time = np.maximum.accumulate(time)
    count = rng.poisson(keys_per_s * seconds)
    starts = np.sort(rng.uniform(time[0], time[-1], count))
    keystrokes = [{"key": str(rng.choice(KEYS)), "start": float(s), "end": float(s) + 0.08} for s in starts]
    write_session_file(path, emg.astype(np.float32), time, session_name=session, user=user, keystrokes=keystrokes)
    return n


def make_tiny_corpus(root: Path, users: tuple[str, ...] = ("43037958", "89335547", "9456349"),
                     sessions_per_user: int = 4, seconds: float = 6.0, seed: int = 0,
                     split_name: str = "tiny") -> TinyCorpus:
    """Write a corpus: per user, sessions ``0..n-3`` train, ``n-2`` val, ``n-1`` test (all train if n < 3).

    Args:
        root: the data root to create.
        users: user ids.
        sessions_per_user: sessions per user.
        seconds: length of each session (a float, or varied per session when negative: |seconds| +- 30 %).
        seed: randomness of EMG, keys and names.
        split_name: the split's ``user:`` field.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    corpus = TinyCorpus(root, root / f"{split_name}.yaml", Split(split_name), list(users))
    parts: dict[str, list[SessionRef]] = {"train": [], "val": [], "test": []}
    rows = []
    for ui, user in enumerate(users):
        corpus.sessions[user] = []
        for si in range(sessions_per_user):
            t0 = 1_600_000_000.0 + ui * 10_000_000 + si * 86_400
            uuid = "".join(rng.choice(list("0123456789abcdef"), 8))
            name = f"2021-06-{si + 1:02d}-{int(t0)}-keystrokes-dca-study@1-{uuid}"
            secs = abs(seconds) * (rng.uniform(0.7, 1.3) if seconds < 0 else 1.0)
            n = write_tiny_session(root / f"{name}.hdf5", user=user, session=name, seconds=secs,
                                   seed=seed * 1000 + ui * 100 + si, t0=t0)
            corpus.sessions[user].append(name)
            corpus.num_rows[name] = n
            part = "train" if sessions_per_user < 3 or si < sessions_per_user - 2 else (
                "val" if si == sessions_per_user - 2 else "test")
            parts[part].append(SessionRef(user, name))
            rows.append(MetadataRow(user, name, "on_keyboard", (n - 1) / SAMPLE_RATE_HZ / 60, 0, 0, []))
    corpus.split.sessions = parts
    save_split(corpus.split, corpus.split_path)
    write_metadata(rows, root / "metadata.csv")
    return corpus


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> TinyCorpus:
    """3 users x 4 sessions of 6 s with metadata.csv and a train/val/test split."""
    return make_tiny_corpus(tmp_path / "data")


@pytest.fixture
def corpus_factory(tmp_path: Path) -> Callable[..., TinyCorpus]:
    """``corpus_factory(name="c1", **make_tiny_corpus kwargs)`` -> a fresh corpus under tmp_path/name."""
    def make(name: str = "corpus", **kw) -> TinyCorpus:
        return make_tiny_corpus(tmp_path / name, **kw)
    return make


@pytest.fixture(autouse=True)
def bench_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The benchmark cache of this test: ``$EMGSCALE_CACHE`` = ``<tmp_path>/cache`` (never the user's real
    ``~/.cache/emgscale/bench``); a module may override this fixture to share one cache among its tests."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMGSCALE_CACHE", str(cache))
    return cache
