"""Deterministic shard plans: which records of which sessions go into which shard.

The plan is a pure function of the content settings and the sessions, computed from each session's
attributes and row count only (no EMG is read), so any worker can write any shard on its own and a
rerun finds the same shards.

* Sessions of a part are ordered — ``train`` by a seeded hash of the session name (so users
  interleave), ``val``/``test`` by user then name — and packed into *groups* of about
  ``group_shards`` shards' worth of data.
* Within a ``train`` group, the records of all its sessions are put in a seeded random order, then
  cut into shards of at most ``shard_size_mb`` / ``max_samples_per_shard``. Each training shard thus
  mixes records of a dozen or more sessions and users, which the loader's shuffle buffer alone
  could not achieve. ``val``/``test`` groups keep records in order.
* A session found bad while writing (a DataError on reading its rows, with ``skip_bad``) is dropped
  from its group only; the group is re-cut and rewritten, the other groups and the shard numbering
  stay as they are (a group may then leave unused shard numbers).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from emgscale.data.errors import DataError
from emgscale.data.window_spec import WindowSpec, training_windows
from emgscale.data.session import ON_KEYBOARD
from emgscale.data.source import data_bytes, open_session
from emgscale.data.splits import SPLIT_NAMES, DataRoot, load_split, normalize_user
from emgscale.shard.records import (KIND_SESSION, KIND_TRAIN, KIND_WINDOW, RECORD_FORMAT_VERSION, RecordSpec,
                                    estimate_record_bytes, sample_key)

EVAL_MODES = ("windows", "session")


@dataclass
class ShardConfig:
    """Settings of ``python -m emgscale.shard`` (content settings first, then how to run).

    Attributes:
        data_root: folder of ``<session>.hdf5`` files (and ``metadata.csv``), or a BIDS copy of them.
        bids_metadata: the ``metadata.csv`` a BIDS ``data_root`` was made from, when the root has none.
        out: output folder (``OUT/<part>/<part>-NNNNNN.tar``, ``OUT/manifest.json``).
        split: an official split YAML; without it, all sessions under ``data_root`` (after the
            ``users``/``sessions`` filters) go into the one part named in ``parts``.
        users, sessions: keep only these users / session names.
        parts: which parts of the split to write.
        window: the windowing (:class:`~emgscale.data.windows.WindowSpec`: 8000 / = window / 1800 / 200
            as the reference); training records hold the rows every jittered window can read.
        train_windows_per_record: training windows per record (context stored once per record).
        val_mode, test_mode: ``windows`` (one sample per window) or ``session`` (one per session).
        dtype: EMG storage, ``float16`` (default: half the bytes, SNR > 60 dB, see sharding/README.md)
            or ``float32``.
        min_float16_snr_db: records whose float16 round trip is worse are stored as float32.
        shard_size_mb, max_samples_per_shard: shard bounds (a single larger record gets its own shard).
        group_shards: shards per shuffling group of the ``train`` part.
        seed: seeds the session order and the record order within groups.
        workers: local writer processes; ray_address: write with Ray tasks on that cluster instead.
        skip_bad: report bad sessions and go on; otherwise the first one stops the run.
        progress: show progress.
    """

    data_root: str = ""
    out: str = ""
    split: str | None = None
    bids_metadata: str | None = None
    users: list[str] | None = None
    sessions: list[str] | None = None
    parts: list[str] = field(default_factory=lambda: list(SPLIT_NAMES))
    window: WindowSpec = field(default_factory=training_windows)
    train_windows_per_record: int = 8
    val_mode: str = "windows"
    test_mode: str = "session"
    dtype: str = "float16"
    min_float16_snr_db: float = 60.0
    shard_size_mb: float = 256.0
    max_samples_per_shard: int = 10_000
    group_shards: int = 16
    seed: int = 0
    workers: int = 1
    ray_address: str | None = None
    skip_bad: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for mode in (self.val_mode, self.test_mode):
            if mode not in EVAL_MODES:
                raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")
        bad = [p for p in self.parts if p not in SPLIT_NAMES]
        if bad or not self.parts:
            raise ValueError(f"parts must be a non-empty subset of {list(SPLIT_NAMES)}, got {self.parts}")
        if self.shard_size_mb <= 0 or self.max_samples_per_shard < 1 or self.group_shards < 1 or self.workers < 1:
            raise ValueError("shard_size_mb, max_samples_per_shard, group_shards and workers must be positive")
        self.record_spec()  # validates the windowing and dtype

    def record_spec(self) -> RecordSpec:
        return RecordSpec(self.window, self.train_windows_per_record, self.dtype, self.min_float16_snr_db)

    def kind_of(self, part: str) -> str:
        if part == "train":
            return KIND_TRAIN
        mode = self.val_mode if part == "val" else self.test_mode
        return KIND_WINDOW if mode == "windows" else KIND_SESSION

    def content_settings(self) -> dict[str, Any]:
        """The settings a shard's bytes depend on (and nothing else)."""
        keys = ("train_windows_per_record", "val_mode", "test_mode", "dtype", "min_float16_snr_db", "shard_size_mb",
                "max_samples_per_shard", "group_shards", "seed")
        w = self.window
        window = {"window_samples": w.window_samples, "stride_samples": w.stride_samples,
                  "pad_left_samples": w.pad_left_samples, "pad_right_samples": w.pad_right_samples,
                  **({} if w.jitter else {"jitter": False})}  # flat, as manifests have always stored it
        return {"record_format_version": RECORD_FORMAT_VERSION, **window, **{k: getattr(self, k) for k in keys}}


@dataclass(frozen=True)
class SessionEntry:
    """A session that opened fine, as planned (no EMG read)."""

    path: str
    session: str
    user: str
    part: str
    num_rows: int
    sample_rate_hz: float
    start_time_s: float
    file_bytes: int
    num_windows: int


@dataclass(frozen=True)
class Skipped:
    """A session left out, and why (``error``: a bad file rather than, say, a session too short)."""

    path: str
    session: str
    user: str
    part: str
    reason: str
    error: bool = True


@dataclass(frozen=True)
class RecordRef:
    """One planned record: ``num_windows`` windows from ``first_window`` of a session (kind per part)."""

    session: str
    first_window: int
    num_windows: int


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its name, records (in order) and a hash of everything it depends on."""

    name: str
    part: str
    index: int
    group: int
    kind: str
    records: tuple[RecordRef, ...]
    plan_hash: str


# ----------------------------------------------------------------------------- which sessions
def select_sessions(cfg: ShardConfig) -> dict[str, list[tuple[str, str, Path]]]:
    """``{part: [(user, session, path), ...]}`` from the split (or the data root) and the filters.

    Raises:
        DataError: the split file or data root is unusable.
        ValueError: no split and more than one part requested.
    """
    root = Path(cfg.data_root).absolute()  # tasks may run with another working directory (Ray)
    users = {normalize_user(u) for u in cfg.users} if cfg.users else None
    names = set(cfg.sessions) if cfg.sessions else None
    out: dict[str, list[tuple[str, str, Path]]] = {}
    if cfg.split:
        split = load_split(cfg.split)
        for part in cfg.parts:
            paths = DataRoot(root, cfg.bids_metadata).paths([r.session for r in split[part]], cfg.split)
            out[part] = [(r.user, r.session, p) for r, p in zip(split[part], paths)]
    else:
        if len(cfg.parts) != 1:
            raise ValueError(f"without --split, name exactly one part to write (--parts train), got {cfg.parts}")
        found = DataRoot(root, cfg.bids_metadata).sessions()
        if not found:
            raise DataError(root, "holds no session (*.hdf5 files, or a BIDS copy's recordings): nothing to shard")
        refs = []
        for user, name, p in found:  # user "": not in metadata.csv
            if not user and users is not None:
                try:
                    with open_session(p, cfg.bids_metadata) as s:
                        user = normalize_user(s.user)
                except DataError:
                    user = ""  # reported when the session is inspected
            refs.append((user or "", name, p))
        out[cfg.parts[0]] = refs
    for part, refs in out.items():
        out[part] = [r for r in refs if (users is None or normalize_user(r[0]) in users)
                     and (names is None or r[1] in names)]
    if not any(out.values()):
        source = f"the split {cfg.split}" if cfg.split else f"the data root {root}"
        raise DataError(cfg.split or root, f"no session of {source} is selected for {', '.join(cfg.parts)}"
                        + (" (check --users / --sessions)" if users is not None or names is not None else ""))
    return out


def inspect_session(cfg: ShardConfig, part: str, user: str, session: str, path: Path) -> SessionEntry | Skipped:
    """Open a session (attributes and two timestamps only) and decide whether it can be sharded."""
    try:
        with open_session(path, cfg.bids_metadata) as s:
            n = len(s)
            if s.condition != ON_KEYBOARD:
                raise DataError(path, f"condition is {s.condition!r}; shards need 'on_keyboard' sessions")
            entry = SessionEntry(str(path), s.session_name, normalize_user(s.user or user), part, n, s.sample_rate_hz,
                                 s.start_time, data_bytes(s),
                                 _count_windows(cfg, part, n))
    except DataError as e:
        return Skipped(str(path), session, user, part, e.problem)
    if entry.num_windows == 0:
        return Skipped(str(path), session, entry.user, part,
                       f"shorter than one window ({n} rows < {cfg.window.window_samples})", error=False)
    return entry


def _count_windows(cfg: ShardConfig, part: str, num_rows: int) -> int:
    spec = cfg.window
    return (1 if num_rows > 0 else 0) if cfg.kind_of(part) == KIND_SESSION else spec.num_windows(num_rows)


# ----------------------------------------------------------------------------- planning
def _seeded_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def _records(cfg: ShardConfig, kind: str, entry: SessionEntry) -> list[RecordRef]:
    if kind == KIND_SESSION:
        return [RecordRef(entry.session, 0, 1)]
    step = cfg.train_windows_per_record if kind == KIND_TRAIN else 1
    return [RecordRef(entry.session, i, min(step, entry.num_windows - i)) for i in range(0, entry.num_windows, step)]


def _cut(cfg: ShardConfig, kind: str, records: list[RecordRef], rows: dict[str, int]) -> list[list[RecordRef]]:
    spec, limit = cfg.record_spec(), cfg.shard_size_mb * 2**20
    shards: list[list[RecordRef]] = []
    size = 0.0
    for r in records:
        b = estimate_record_bytes(spec, kind, rows[r.session], r.first_window, r.num_windows)
        if not shards or (size + b > limit and shards[-1]) or len(shards[-1]) >= cfg.max_samples_per_shard:
            shards.append([])
            size = 0.0
        shards[-1].append(r)
        size += b
    return shards


def plan_part(cfg: ShardConfig, part: str, entries: list[SessionEntry], excluded: Iterable[str] = ()) -> list[ShardPlan]:
    """The shards of one part.

    Args:
        cfg: the settings.
        part: ``train``, ``val`` or ``test``.
        entries: the part's sessions that opened fine.
        excluded: names of sessions found bad while writing; dropped from their group only.

    Returns:
        The shard plans in shard order (numbering may skip values when ``excluded`` is not empty).
    """
    kind, spec, excluded = cfg.kind_of(part), cfg.record_spec(), set(excluded)
    if kind == KIND_TRAIN:
        entries = sorted(entries, key=lambda e: _seeded_key(cfg.seed, e.session))
    else:
        entries = sorted(entries, key=lambda e: (_user_order(e.user), e.session))
    rows = {e.session: e.num_rows for e in entries}
    info = {e.session: (e.num_rows, e.file_bytes) for e in entries}
    group_limit = cfg.group_shards * cfg.shard_size_mb * 2**20
    groups: list[list[SessionEntry]] = [[]]
    size = 0.0
    for e in entries:
        if groups[-1] and size >= group_limit:
            groups.append([])
            size = 0.0
        groups[-1].append(e)
        size += sum(estimate_record_bytes(spec, kind, e.num_rows, r.first_window, r.num_windows)
                    for r in _records(cfg, kind, e))
    plans: list[ShardPlan] = []
    base = 0
    settings = json.dumps(cfg.content_settings(), sort_keys=True)
    for g, members in enumerate(groups):
        if not members:
            continue
        def ordered(keep: list[SessionEntry]) -> list[RecordRef]:
            recs = [r for e in keep for r in _records(cfg, kind, e)]
            if kind == KIND_TRAIN:
                seed = int(_seeded_key(cfg.seed, "|".join(e.session for e in members))[:16], 16)
                recs = [recs[i] for i in np.random.default_rng(seed).permutation(len(recs))]
            return recs
        planned = len(_cut(cfg, kind, ordered(members), rows))
        kept = [e for e in members if e.session not in excluded]
        for k, recs in enumerate(_cut(cfg, kind, ordered(kept), rows) if kept else []):
            name = f"{part}/{part}-{base + k:06d}.tar"
            body = json.dumps([name, settings, [(r.session, *info[r.session], r.first_window, r.num_windows)
                                                for r in recs]])
            plans.append(ShardPlan(name, part, base + k, g, kind, tuple(recs), hashlib.sha256(body.encode()).hexdigest()))
        base += planned
    return plans


def _user_order(user: str) -> tuple[int, Any]:
    return (0, int(user)) if user.isdigit() else (1, user)


def check_unique_keys(entries: list[SessionEntry]) -> None:
    """Two sessions whose sanitised keys collide would make ambiguous tar keys.

    Raises:
        DataError: naming both sessions.
    """
    seen: dict[str, str] = {}
    for e in entries:
        k = sample_key(e.user, e.session, 0)
        if k in seen and seen[k] != e.session:
            raise DataError(e.path, f"session name collides with {seen[k]!r} once made a tar key ({k})")
        seen[k] = e.session


def file_signature(path: "str | os.PathLike[str]") -> dict[str, int]:
    """Size and modification time of a file (to recognise a session already found bad)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def to_jsonable(obj: Any) -> Any:
    """dataclass -> dict for sidecar and manifest files."""
    return asdict(obj)
