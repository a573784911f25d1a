"""Writing one shard: the unit of work a local process or a Ray task runs.

A shard is written to a temporary file beside its final name, hashed while it is written, renamed
when complete, and then described by a small *sidecar* record (``OUT/.state/<part>-NNNNNN.json``:
the plan hash, sample count, bytes, sha256, users, sessions). The sidecars are the incremental
manifest: a killed run keeps every finished shard, and a rerun skips a shard whose file matches its
sidecar (same plan hash, size and sha256).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from emgscale.common import atomic_path, atomic_write_json
from emgscale.data.errors import DataError
from emgscale.data.session import EMGSession
from emgscale.data.source import open_session
from emgscale.shard.records import RecordSpec, build_record

STATE_DIR = ".state"
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to write one shard (picklable, no open files).

    Attributes:
        out: output root; the shard goes to ``out/name``.
        name: ``<part>/<part>-NNNNNN.tar``.
        part, kind: split part and record kind.
        plan_hash: hash of the shard's settings and records.
        spec: record settings.
        records: ``(session_path, first_window, num_windows)`` in write order.
        bids_metadata: the ``metadata.csv`` a BIDS data root was made from, when the root has none.
    """

    out: str
    name: str
    part: str
    kind: str
    plan_hash: str
    spec: RecordSpec
    records: tuple[tuple[str, int, int], ...]
    bids_metadata: str | None = None


@dataclass
class ShardResult:
    """What a worker reports back.

    Attributes:
        entry: the shard's manifest entry (None when a bad session stopped it).
        bad: ``(path, problem)`` of sessions that raised DataError (the shard was then not written).
        reused: the shard was already complete and was kept.
        seconds: time spent.
    """

    name: str
    plan_hash: str
    entry: dict[str, Any] | None
    bad: list[tuple[str, str]] = field(default_factory=list)
    reused: bool = False
    seconds: float = 0.0


class _HashingFile:
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.sha, self.bytes = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def sidecar_path(out: "str | Path", name: str) -> Path:
    return Path(out) / STATE_DIR / (Path(name).stem + ".json")


def file_sha256(path: "str | Path", chunk_bytes: int = 1 << 22) -> str:
    """sha256 of a file, read in 4 MiB chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            sha.update(block)
    return sha.hexdigest()


def read_sidecar(out: "str | Path", name: str) -> dict[str, Any] | None:
    try:
        return json.loads(sidecar_path(out, name).read_text())
    except (OSError, ValueError):
        return None


def is_complete(out: "str | Path", name: str, plan_hash: str) -> dict[str, Any] | None:
    """The sidecar entry when ``out/name`` is a finished shard of this plan (size and sha256 match)."""
    side = read_sidecar(out, name)
    path = Path(out) / name
    if not side or side.get("plan_hash") != plan_hash or not path.is_file():
        return None
    entry = side["entry"]
    if path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
        return None
    return entry


def write_shard(task: ShardTask) -> ShardResult:
    """Write one shard unless an identical one is already there.

    Reads each record's rows from its session (files are kept open for the shard's duration, one
    record in memory at a time), writes them in plan order through ``webdataset.TarWriter`` with
    fixed tar metadata (so the bytes depend on the content only), renames the finished file into
    place and writes its sidecar. A :class:`DataError` from a session ends the task without writing
    the shard and is reported in :attr:`ShardResult.bad`.
    """
    t0 = time.monotonic()
    entry = is_complete(task.out, task.name, task.plan_hash)
    if entry is not None:
        return ShardResult(task.name, task.plan_hash, entry, reused=True, seconds=time.monotonic() - t0)
    final = Path(task.out) / task.name
    sessions: dict[str, EMGSession] = {}
    users: set[str] = set()
    names: set[str] = set()
    windows = rows = fallback = 0
    current = ""
    try:
        with atomic_path(final, suffix=TMP_SUFFIX) as tmp, open(tmp, "wb") as raw:
            out = _HashingFile(raw)
            with wds.TarWriter(out, encoder=False, mtime=0.0, user="emgscale", group="emgscale", mode=0o444) as tar:
                for path, first, count in task.records:
                    current = path
                    if path not in sessions:
                        sessions[path] = open_session(path, task.bids_metadata)
                    members, stats = build_record(sessions[path], task.spec, task.kind, first, count)
                    tar.write(members)
                    meta = json.loads(members["json"])
                    users.add(str(meta["user"]))
                    names.add(str(meta["session"]))
                    windows += stats["windows"]
                    rows += stats["rows"]
                    fallback += stats["float32_fallback"]
            raw.flush()
            entry = {"name": task.name, "part": task.part, "kind": task.kind, "num_records": len(task.records),
                     "num_windows": windows, "emg_rows": rows, "float32_records": fallback, "bytes": out.bytes,
                     "sha256": out.sha.hexdigest(), "users": sorted(users), "sessions": sorted(names)}
    except DataError as e:
        return ShardResult(task.name, task.plan_hash, None, bad=[(e.path or current, e.problem)],
                           seconds=time.monotonic() - t0)
    finally:
        for s in sessions.values():
            s.close()
    atomic_write_json(sidecar_path(task.out, task.name), {"plan_hash": task.plan_hash, "entry": entry})
    return ShardResult(task.name, task.plan_hash, entry, seconds=time.monotonic() - t0)
