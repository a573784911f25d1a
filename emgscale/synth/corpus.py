"""A whole synthetic corpus: plan users and sessions, generate them (in parallel), write the
official ``metadata.csv`` and split files.

Held-out users are chosen the way the reference ``generate_splits.py`` does: among users without
quality-check tags, those with the most sessions first (ties broken by the seed). Each held-out user
gets a personalized split ``userN.yaml`` (test and val sessions sampled, the rest train); ``generic.yaml``
trains and validates on every other user with enough sessions and tests on the union of the held-out
users' test sessions; ``single_user.yaml`` takes the non-held-out user with the most sessions (as the
course split does) with one val and one test session.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from emgscale.common import atomic_write_json, format_seconds, progress
from emgscale.data.splits import MetadataRow, SessionRef, Split, read_metadata, save_split, write_metadata
from emgscale.synth.session import (
    CONTACT_ARTIFACT_TAG, TAG_PLAN, TAG_SPLIT, SessionPlan, generate_and_write,
)
from emgscale.synth.signal import SAMPLE_RATE_HZ
from emgscale.synth.text import prompts_from_file

SPLITS_DIR = "splits"
SUMMARY_FILE = "synth_summary.json"
_FIRST_DAY_S = dt.datetime(2021, 4, 1, tzinfo=dt.timezone.utc).timestamp()


@dataclass
class SynthConfig:
    """Size and shape of a synthetic corpus (defaults: a small corpus of 6 users x 6 one-minute sessions).

    Attributes:
        out: output data root (session files, ``metadata.csv``, ``splits/``).
        users, sessions_per_user: corpus size (ignored with ``layout``).
        minutes: mean session length in minutes. Without a layout each session lasts 0.8-1.2 x this;
            with a layout each lasts ``minutes x (its duration / the layout's mean duration)``.
        seed: the corpus seed; every byte of output is a function of it and the other fields.
        heldout_users: users held out for the personalized/zero-shot splits; None = 8 with a
            layout, else 2; 0 = none.
        workers: processes generating sessions in parallel.
        text: prompt text file; None = the public-domain text shipped under ``emgscale/data/text``.
        layout: a real ``metadata.csv`` (or data root) whose users, sessions per user, relative
            session lengths and quality-check tags to copy.
        layout_names: with a layout, keep its user ids and session names (so the official split
            files resolve against the corpus); False = fresh ids and names.
        val_sessions_per_user, test_sessions_per_user, min_train_sessions_per_user: split sizes, as in
            the reference (2, 2, 2); users with fewer sessions are left out of a split.
        contact_artifact_prob: without a layout, the chance a session has electrode pops (it is then
            tagged ``contact artifact`` and its user cannot be held out).
    """

    out: str = "data/synth"
    users: int = 6
    sessions_per_user: int = 6
    minutes: float = 1.0
    seed: int = 0
    heldout_users: int | None = None
    workers: int = 1
    text: str | None = None
    layout: str | None = None
    layout_names: bool = True
    val_sessions_per_user: int = 2
    test_sessions_per_user: int = 2
    min_train_sessions_per_user: int = 2
    contact_artifact_prob: float = 0.03

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        checks = [
            ("users", self.users >= 1), ("sessions_per_user", self.sessions_per_user >= 1),
            ("minutes", self.minutes * 60.0 > 2.0), ("workers", self.workers >= 1), ("seed", self.seed >= 0),
            ("heldout_users", self.heldout_users is None or self.heldout_users >= 0),
            ("val_sessions_per_user", self.val_sessions_per_user >= 1),
            ("test_sessions_per_user", self.test_sessions_per_user >= 1),
            ("min_train_sessions_per_user", self.min_train_sessions_per_user >= 1),
            ("contact_artifact_prob", 0.0 <= self.contact_artifact_prob <= 1.0),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"SynthConfig.{name} out of range: {getattr(self, name)!r}")

    def num_heldout(self) -> int:
        """Held-out users asked for (resolving the None default)."""
        if self.heldout_users is not None:
            return self.heldout_users
        return 8 if self.layout else 2


@dataclass
class CorpusSummary:
    """What :func:`generate_corpus` wrote.

    Attributes:
        out: data root; users, sessions, hours: corpus size; bytes_on_disk: session files' total size;
        num_keystrokes: over all sessions; heldout_users: in ``userN`` order; single_user: the
        ``single_user.yaml`` subject (None when no user has 3 sessions); splits: name -> part ->
        session count; wall_s: generation time.
    """

    out: str
    users: int
    sessions: int
    hours: float
    bytes_on_disk: int
    num_keystrokes: int
    heldout_users: list[str]
    single_user: str | None
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON."""
        return dict(self.__dict__)

    def format(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"wrote {self.sessions} sessions of {self.users} users to {self.out}: {self.hours:.3f} h of EMG, "
            f"{self.bytes_on_disk / 1e6:.1f} MB, {self.num_keystrokes} keystrokes "
            f"in {format_seconds(self.wall_s)} ({self.hours * 3600 / max(self.wall_s, 1e-9):.0f}x real time)",
            f"held-out users: {', '.join(self.heldout_users) or 'none'}; single user: {self.single_user}",
        ]
        for name, parts in self.splits.items():
            lines.append(f"  {SPLITS_DIR}/{name}.yaml: " + ", ".join(f"{p} {n}" for p, n in parts.items()))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- planning
def _session_name(start_s: float, user_uuid: str) -> str:
    day = dt.datetime.fromtimestamp(start_s, tz=dt.timezone.utc).strftime("%Y-%m-%d")
    return f"{day}-{int(start_s)}-keystrokes-dca-study@1-{user_uuid}"


def _schedule(rng: np.random.Generator, durations_s: list[float]) -> list[float]:
    """Start times of one user's sessions: 1-4 a day, days a few apart, from a random day in 2021."""
    t = _FIRST_DAY_S + rng.integers(0, 150) * 86400 + rng.uniform(13, 20) * 3600
    starts, today = [], 0
    for d in durations_s:
        if today >= rng.integers(1, 5):
            t = (t // 86400 + rng.integers(1, 8)) * 86400 + rng.uniform(13, 20) * 3600
            today = 0
        starts.append(float(round(t, 3)))
        t += d + rng.uniform(2, 15) * 60
        today += 1
    return starts


def _parse_start(session: str) -> float | None:
    parts = session.split("-")
    return float(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None


def plan_corpus(cfg: SynthConfig) -> list[SessionPlan]:
    """Users, session names, start times, durations and tags of the corpus (no signal drawn).

    Raises:
        ValueError: bad config, or a layout with duplicate session names.
        DataError: the layout file is missing or malformed.
    """
    cfg.check()
    rng = np.random.default_rng([TAG_PLAN, cfg.seed])
    if cfg.layout:
        rows = read_metadata(cfg.layout)
        if not rows:
            raise ValueError(f"layout {cfg.layout} has no sessions")
        by_user: dict[str, list[MetadataRow]] = {}
        for r in rows:
            by_user.setdefault(r.user, []).append(r)
        mean_mins = float(np.mean([r.duration_mins for r in rows]))
        users = [(u, [(r.duration_mins / mean_mins, tuple(r.quality_check_tags), r.session) for r in rs])
                 for u, rs in by_user.items()]
    else:
        users = [(None, [(float(rng.uniform(0.8, 1.2)),
                          (CONTACT_ARTIFACT_TAG,) if rng.random() < cfg.contact_artifact_prob else (), None)
                         for _ in range(cfg.sessions_per_user)]) for _ in range(cfg.users)]
    plans: list[SessionPlan] = []
    taken: set[str] = set()
    for layout_user, sessions in users:
        user_id = layout_user if (layout_user is not None and cfg.layout_names) else None
        while user_id is None or user_id in taken:
            user_id = str(int(rng.integers(10_000_000, 100_000_000)))
        taken.add(user_id)
        user_uuid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        durations = [max(cfg.minutes * 60.0 * rel, 2.5) for rel, _, _ in sessions]
        starts = _schedule(rng, durations)
        for i, ((_, tags, name), dur, start) in enumerate(zip(sessions, durations, starts)):
            if cfg.layout_names and name is not None:
                start = _parse_start(name) or start
            else:
                name = _session_name(start, user_uuid)
            plans.append(SessionPlan(user_id, name, i, start, round(dur, 3), tags))
    names = [p.session for p in plans]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:3]
        raise ValueError(f"duplicate session names in the plan: {dup}")
    return plans


# ----------------------------------------------------------------------------- splits
def make_splits(plans: list[SessionPlan], cfg: SynthConfig) -> tuple[dict[str, Split], list[str], str | None]:
    """The official-style split files for a planned corpus.

    Returns:
        ``{name: Split}`` for ``generic``, ``user0``.., ``single_user``; the held-out users in order;
        the single-user subject (None when no user has 3 sessions).

    Raises:
        ValueError: fewer users qualify as held-out than asked for.
    """
    rng = np.random.default_rng([TAG_SPLIT, cfg.seed])
    by_user: dict[str, list[SessionPlan]] = {}
    for p in plans:
        by_user.setdefault(p.user, []).append(p)
    n_val, n_test, n_train = cfg.val_sessions_per_user, cfg.test_sessions_per_user, cfg.min_train_sessions_per_user
    clean = [u for u, ps in by_user.items() if not any(p.quality_check_tags for p in ps)
             and len(ps) >= n_val + n_test + n_train]
    n_heldout = cfg.num_heldout()
    if len(clean) < n_heldout:
        raise ValueError(
            f"{n_heldout} held-out users asked for, but only {len(clean)} users have no quality-check tags and "
            f">= {n_val + n_test + n_train} sessions; lower --heldout-users or add users/sessions")
    tiebreak = {u: r for u, r in zip(clean, rng.permutation(len(clean)))}
    heldout = sorted(clean, key=lambda u: (-len(by_user[u]), tiebreak[u]))[:n_heldout]

    def pick(ps: list[SessionPlan], k: int) -> tuple[list[SessionPlan], list[SessionPlan]]:
        chosen = set(rng.choice(len(ps), size=k, replace=False).tolist())
        return [p for i, p in enumerate(ps) if i in chosen], [p for i, p in enumerate(ps) if i not in chosen]

    def refs(ps: list[SessionPlan]) -> list[SessionRef]:
        return [SessionRef(p.user, p.session) for p in ps]

    splits: dict[str, Split] = {}
    generic_test: list[SessionPlan] = []
    for i, u in enumerate(heldout):
        test, rest = pick(by_user[u], n_test)
        val, train = pick(rest, n_val)
        generic_test += test
        splits[f"user{i}"] = Split(f"user{i}", {"train": refs(train), "val": refs(val), "test": refs(test)})
    generic = {"train": [], "val": [], "test": refs(generic_test)}
    for u, ps in by_user.items():
        if u in heldout or len(ps) < n_val + n_train:
            continue
        val, train = pick(ps, n_val)
        generic["train"] += refs(train)
        generic["val"] += refs(val)
    splits = {"generic": Split("generic", generic), **splits}
    others = [u for u in by_user if u not in heldout and len(by_user[u]) >= 3]
    pool = others or [u for u in by_user if len(by_user[u]) >= 3]
    single = None
    if pool:
        order = rng.permutation(len(pool))
        single = sorted(zip(pool, order), key=lambda x: (-len(by_user[x[0]]), x[1]))[0][0]
        test, rest = pick(by_user[single], 1)
        val, train = pick(rest, 1)
        splits["single_user"] = Split("single_user", {"train": refs(train), "val": refs(val), "test": refs(test)})
    return splits, heldout, single


# ----------------------------------------------------------------------------- generation
@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Worker processes inherit one BLAS/OpenMP thread each (set before they import numpy)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: "1" for k in names})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(plans: list[SessionPlan], cfg: SynthConfig) -> Iterator[tuple[MetadataRow, int, int]]:
    if cfg.workers == 1:
        for p in plans:
            yield generate_and_write(p, cfg.seed, cfg.text, cfg.out)
        return
    with _single_threaded_children(), ProcessPoolExecutor(
            max_workers=cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Longest first keeps workers busy to the end; results are re-ordered by the caller.
        order = sorted(range(len(plans)), key=lambda i: -plans[i].duration_s)
        futures = [pool.submit(generate_and_write, plans[i], cfg.seed, cfg.text, cfg.out) for i in order]
        for f in futures:
            yield f.result()


def generate_corpus(cfg: SynthConfig) -> CorpusSummary:
    """Generate a synthetic corpus in the official emg2qwerty layout.

    Writes ``<out>/<session>.hdf5`` for every session, ``<out>/metadata.csv``, ``<out>/splits/*.yaml``
    and ``<out>/synth_summary.json`` (the config and this summary). Splits are planned before any EMG
    is drawn, so an impossible request fails at once. Re-running the same config overwrites the same
    files; a directory holding other session files is refused.

    Args:
        cfg: corpus size, seed and options.

    Returns:
        What was written.

    Raises:
        ValueError: a bad config, too few users to hold out, or ``out`` holding other session files.
    """
    t0 = time.monotonic()
    plans = plan_corpus(cfg)
    splits, heldout, single = make_splits(plans, cfg)
    prompts_from_file(cfg.text)  # fail fast on a bad text file
    out = Path(cfg.out)
    planned = {f"{p.session}.hdf5" for p in plans}
    stale = sorted(p.name for p in out.glob("*.hdf5") if p.name not in planned) if out.is_dir() else []
    if stale:
        raise ValueError(f"{out} holds {len(stale)} session files this corpus would not write (e.g. {stale[0]}); "
                         "use an empty directory so two corpora do not mix")
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, MetadataRow] = {}
    total_bytes = total_samples = 0

    def postfix() -> dict[str, str]:
        return {"EMG": f"{total_samples / SAMPLE_RATE_HZ / 3600:.2f} h"}

    for row, size, samples in progress(_run(plans, cfg), total=len(plans), desc="synth", unit="session",
                                       postfix=postfix):
        rows[row.session] = row
        total_bytes += size
        total_samples += samples
    ordered = [rows[p.session] for p in plans]
    write_metadata(ordered, out / "metadata.csv")
    for name, split in splits.items():
        save_split(split, out / SPLITS_DIR / f"{name}.yaml")
    summary = CorpusSummary(
        out=str(out), users=len({p.user for p in plans}), sessions=len(plans),
        hours=sum(r.duration_mins for r in ordered) / 60.0, bytes_on_disk=total_bytes,
        num_keystrokes=sum(r.num_keystrokes for r in ordered), heldout_users=heldout, single_user=single,
        splits={n: {part: len(s[part]) for part in ("train", "val", "test")} for n, s in splits.items()},
        wall_s=time.monotonic() - t0,
    )
    from emgscale.config import to_dict

    atomic_write_json(out / SUMMARY_FILE, {"config": to_dict(cfg), "summary": summary.to_dict()})
    return summary


def ensure_corpus(cfg: SynthConfig) -> Path:
    """``cfg.out``, generated unless a finished corpus of exactly this config is already there.

    The summary file is written last, so a corpus whose generation was killed is generated again.
    """
    import json

    from emgscale.config import to_dict

    summary = Path(cfg.out) / SUMMARY_FILE
    if summary.is_file() and json.loads(summary.read_text()).get("config") == json.loads(json.dumps(to_dict(cfg))):
        return Path(cfg.out)
    generate_corpus(cfg)
    return Path(cfg.out)
