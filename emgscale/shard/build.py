"""``shard_corpus(cfg)``: sessions -> WebDataset shards + manifest, in parallel, resumable.

1. Select the sessions (split file and filters) and open each one for its attributes and length.
2. Plan every shard deterministically (:mod:`emgscale.shard.plan`).
3. Write the shards with independent tasks: in this process (``workers=1``), in local processes
   (``workers=N``) or as Ray tasks (``ray_address``); shards already complete are kept.
4. A session that fails while being read is reported; with ``skip_bad`` it is recorded in
   ``OUT/.state/bad.json``, its group is re-planned without it and rewritten, otherwise the run stops
   with a :class:`DataError` naming the file (finished shards stay for the next run).
5. Delete shards of these parts that the plan no longer has, and write ``OUT/manifest.json``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import emgscale
from emgscale.common import DirLock, atomic_write_json, exit_with_parent, git_commit, progress
from emgscale.config import check_values
from emgscale.data.errors import DataError
from emgscale.shard.manifest import MANIFEST, Manifest, load_manifest, now_utc, summarize_parts
from emgscale.shard.plan import (SessionEntry, ShardConfig, ShardPlan, Skipped, check_unique_keys, file_signature,
                                 inspect_session, plan_part, select_sessions, to_jsonable)
from emgscale.shard.writer import STATE_DIR, TMP_SUFFIX, ShardResult, ShardTask, sidecar_path, write_shard

BAD_FILE = "bad.json"
_PART_ORDER = {"train": 0, "val": 1, "test": 2}
_SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}\.tar$")


def shard_corpus(cfg: ShardConfig) -> Manifest:
    """Write the shards of ``cfg`` and return their manifest.

    Args:
        cfg: the settings (see :class:`ShardConfig`).

    Returns:
        The :class:`Manifest` also written to ``cfg.out/manifest.json``.

    Raises:
        DataError: a bad session without ``skip_bad`` (naming the file), or an unusable split/data root.
        ValueError: inconsistent settings.
    """
    if not cfg.data_root or not cfg.out:
        raise ValueError("data_root and out are required")
    check_shard_config(cfg)
    with DirLock(cfg.out, "shard writer"):  # one writer per output folder
        return _shard_corpus(cfg)


def check_shard_config(cfg: ShardConfig) -> None:
    """Check the settings before any work: ranges, choices, the data root and split files.

    Raises:
        ConfigError: naming the first bad setting and its value.
    """
    check_values(cfg, {"data_root": "dir", "split": "file", "bids_metadata": "file", "dtype": ("float16", "float32"),
                       "val_mode": ("windows", "session"), "test_mode": ("windows", "session"),
                       "parts": lambda v: None if v and set(v) <= set(_PART_ORDER) else "must be train, val and/or test",
                       "window.window_samples": ">=1", "window.stride_samples": ">=1",
                       "train_windows_per_record": ">=1", "shard_size_mb": ">0", "max_samples_per_shard": ">=1",
                       "group_shards": ">=1", "workers": ">=1", "min_float16_snr_db": "any"})


def _shard_corpus(cfg: ShardConfig) -> Manifest:
    out = Path(cfg.out)
    for part in cfg.parts:
        for tmp in (out / part).glob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)  # left by a killed run
    refs = select_sessions(cfg)
    jobs = [(cfg, part, u, s, p) for part, rs in refs.items() for (u, s, p) in rs]
    entries: list[SessionEntry] = []
    skipped: list[Skipped] = []
    with _Runner(cfg) as runner:
        for res in progress(runner.map(_inspect, jobs), total=len(jobs), desc="open sessions", unit="session",
                            enabled=None if cfg.progress else False):
            (entries if isinstance(res, SessionEntry) else skipped).append(res)
        errors = [s for s in skipped if s.error]
        if errors and not cfg.skip_bad:
            raise DataError(errors[0].path, errors[0].reason + "  (use --skip-bad to leave bad sessions out)")
        for s in errors:
            print(f"[shard] skipping bad session {s.path}: {s.reason}", file=sys.stderr, flush=True)
        entries.sort(key=lambda e: (e.part, e.session))
        check_unique_keys(entries)
        bad = _load_bad(out) if cfg.skip_bad else {}
        known = {e.path for e in entries}
        late_bad = {p: b for p, b in bad.items() if p in known}
        plans = _plan(cfg, entries, late_bad)
        results: dict[str, ShardResult] = {}
        while True:
            todo = [p for p in plans if p.name not in results or results[p.name].plan_hash != p.plan_hash]
            new_bad = _run(cfg, runner, todo, entries, results)
            if not new_bad:
                break
            for path, problem in new_bad:
                e = next(e for e in entries if e.path == path)
                print(f"[shard] skipping bad session {path}: {problem}", file=sys.stderr, flush=True)
                late_bad[path] = {"session": e.session, "user": e.user, "part": e.part, "reason": problem,
                                  **file_signature(path)}
            atomic_write_json(out / STATE_DIR / BAD_FILE, {**bad, **late_bad})
            plans = _plan(cfg, entries, late_bad)
    _remove_stale(out, cfg.parts, {p.name for p in plans})
    manifest = _manifest(cfg, plans, results, entries, skipped, late_bad)
    manifest.save(out)
    return manifest


def _inspect(job: tuple[ShardConfig, str, str, str, Path]) -> SessionEntry | Skipped:
    return inspect_session(*job)


def _plan(cfg: ShardConfig, entries: list[SessionEntry], late_bad: dict[str, Any]) -> list[ShardPlan]:
    excluded = {e.session for e in entries if e.path in late_bad}
    return [p for part in cfg.parts for p in plan_part(cfg, part, [e for e in entries if e.part == part], excluded)]


def _run(cfg: ShardConfig, runner: "_Runner", plans: list[ShardPlan], entries: list[SessionEntry],
         results: dict[str, ShardResult]) -> list[tuple[str, str]]:
    """Run the tasks of ``plans``; returns newly found bad sessions (raises at once without skip_bad)."""
    paths = {e.session: e.path for e in entries}
    tasks = [ShardTask(str(Path(cfg.out).resolve()), p.name, p.part, p.kind, p.plan_hash, cfg.record_spec(),
                       tuple((paths[r.session], r.first_window, r.num_windows) for r in p.records),
                       cfg.bids_metadata) for p in plans]
    pending = Counter(s for p in plans for s in {r.session for r in p.records})
    total_sessions, t0, written = len(pending), time.monotonic(), [0]
    new_bad: list[tuple[str, str]] = []

    def postfix() -> dict[str, Any]:
        done = sum(1 for v in pending.values() if v == 0)
        return {"sessions": f"{done}/{total_sessions}",
                "MB/s": f"{written[0] / 2**20 / max(time.monotonic() - t0, 1e-9):.1f}"}

    for res in progress(runner.map(write_shard, tasks), total=len(tasks), desc="write shards", unit="shard",
                        enabled=None if cfg.progress else False, postfix=postfix):
        if res.bad:
            if not cfg.skip_bad:
                path, problem = res.bad[0]
                raise DataError(path, problem + "  (use --skip-bad to leave bad sessions out)")
            new_bad.extend(b for b in res.bad if b not in new_bad)
            continue
        results[res.name] = res
        if not res.reused:
            written[0] += res.entry["bytes"]
        for s in set(res.entry["sessions"]):
            pending[s] -= 1
    return new_bad


def _remove_stale(out: Path, parts: Iterable[str], keep: set[str]) -> None:
    for part in parts:
        for f in sorted((out / part).glob(f"{part}-*.tar")):
            name = f"{part}/{f.name}"
            if _SHARD_NAME.match(f.name) and name not in keep:
                print(f"[shard] removing {name}: not in the current plan", file=sys.stderr, flush=True)
                f.unlink()
                sidecar_path(out, name).unlink(missing_ok=True)


def _load_bad(out: Path) -> dict[str, Any]:
    """Sessions found bad by an earlier run, still the same file (size and mtime)."""
    try:
        bad = json.loads((out / STATE_DIR / BAD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    keep = {}
    for path, b in bad.items():
        try:
            sig = file_signature(path)
        except OSError:
            continue
        if sig == {"size": b.get("size"), "mtime_ns": b.get("mtime_ns")}:
            keep[path] = b
    return keep


def _manifest(cfg: ShardConfig, plans: list[ShardPlan], results: dict[str, ShardResult], entries: list[SessionEntry],
              skipped: list[Skipped], late_bad: dict[str, Any]) -> Manifest:
    shards = [results[p.name].entry for p in plans]
    used = {(sh["part"], s) for sh in shards for s in sh["sessions"]}
    sessions: dict[str, dict[str, Any]] = {part: {} for part in cfg.parts}
    for e in entries:
        if (e.part, e.session) in used:
            sessions[e.part][e.session] = {"user": e.user, "num_rows": e.num_rows, "sample_rate_hz": e.sample_rate_hz,
                                           "start_time_s": e.start_time_s, "num_windows": e.num_windows}
    skip = [{k: v for k, v in to_jsonable(s).items()} for s in skipped]
    skip += [{"path": p, "session": b["session"], "user": b["user"], "part": b["part"], "reason": b["reason"],
              "error": True} for p, b in sorted(late_bad.items())]
    source = {"data_root": str(cfg.data_root), "split": cfg.split, "users": cfg.users, "sessions": cfg.sessions}
    if cfg.split:
        from emgscale.data.splits import load_split

        source["split_name"] = load_split(cfg.split).name
    manifest = Manifest(settings=cfg.content_settings(), parts={}, sessions=sessions, shards=shards, skipped=skip,
                        source=source, created=now_utc(), emgscale_version=emgscale.__version__,
                        git_commit=git_commit())
    previous = Path(cfg.out) / MANIFEST
    if previous.is_file():  # keep other parts written by an earlier run with the same settings
        try:
            old = load_manifest(previous)
        except DataError:
            old = None
        if old is not None:
            others = [s for s in old.shards if s["part"] not in cfg.parts]
            if others and old.settings == manifest.settings:
                manifest.shards = sorted(others + manifest.shards, key=lambda s: (_PART_ORDER[s["part"]], s["name"]))
                manifest.sessions.update({k: v for k, v in old.sessions.items() if k not in cfg.parts})
                manifest.skipped += [s for s in old.skipped if s["part"] not in cfg.parts]
            elif others:
                print(f"[shard] dropping parts {sorted({s['part'] for s in others})} of the old manifest: written "
                      "with other settings", file=sys.stderr, flush=True)
    manifest.parts = summarize_parts(manifest.shards, manifest.sessions)
    return manifest


class _Runner:
    """Runs picklable tasks in this process, in a local process pool, or as Ray tasks; yields results
    as they finish."""

    def __init__(self, cfg: ShardConfig) -> None:
        self.cfg = cfg
        self.pool: ProcessPoolExecutor | None = None
        self.ray: Any = None
        self.started_ray = False

    def __enter__(self) -> "_Runner":
        if self.cfg.ray_address:
            try:
                import ray
            except ImportError:
                raise ImportError("--ray-address needs Ray: pip install 'emgscale[ray]'") from None
            from emgscale.cluster import connect

            self.ray = ray
            self.started_ray = not ray.is_initialized()
            connect(self.cfg.ray_address)  # says which cluster; another user's only when its address is given
        elif self.cfg.workers > 1:
            # Workers end with this process, however it ends (a SIGKILLed writer leaves none running).
            self.pool = ProcessPoolExecutor(max_workers=self.cfg.workers, mp_context=get_context("spawn"),
                                            initializer=exit_with_parent, initargs=(os.getpid(),))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.started_ray:
            from emgscale.cluster import shutdown

            shutdown()

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        if self.ray is not None:
            remote = self.ray.remote(num_cpus=1, max_retries=2)(fn)
            refs = [remote.remote(x) for x in items]
            while refs:
                done, refs = self.ray.wait(refs, num_returns=1)
                yield self.ray.get(done[0])
        elif self.pool is not None:
            futures = [self.pool.submit(fn, x) for x in items]
            try:
                for f in as_completed(futures):
                    yield f.result()
            finally:
                for f in futures:
                    f.cancel()
        else:
            for x in items:
                yield fn(x)


def default_workers() -> int:
    """A sensible ``--workers`` default: the CPUs this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
