"""Expected shard sizes from a ``metadata.csv`` (session durations), before any EMG is read.

``python -m emgscale.shard estimate --metadata metadata.csv [--split generic.yaml] [shard options]``
prints, per part, the hours of EMG, windows, records and the bytes at float16 and float32, computed
with the same record layout the writer uses (planning estimate: exact rows, ~4 KB per record of
headers and labels, 10 KiB of padding per shard).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from emgscale.data.splits import load_split, normalize_user, read_metadata
from emgscale.shard.plan import SessionEntry, ShardConfig, _count_windows, _cut, _records
from emgscale.shard.records import estimate_record_bytes


def estimate_sizes(metadata: "str | Path", cfg: ShardConfig, sample_rate_hz: float = 2000.0) -> dict[str, dict[str, Any]]:
    """Per-part totals for the sessions ``cfg`` selects, with durations from ``metadata``.

    Args:
        metadata: a ``metadata.csv`` (the real one lists every session's ``duration_mins``).
        cfg: shard settings; ``split``, ``users``, ``sessions`` and ``parts`` select sessions as in
            :func:`emgscale.shard.shard_corpus` (``data_root`` and ``out`` are not used).
        sample_rate_hz: rows per second.

    Returns:
        ``{part: {"sessions", "users", "emg_hours", "windows", "records", "gb_float16", "gb_float32",
        "shards_float16", "shards_float32"}}``.
    """
    rows = read_metadata(metadata)
    by_name = {r.session: r for r in rows}
    users = {normalize_user(u) for u in cfg.users} if cfg.users else None
    if cfg.split:
        split = load_split(cfg.split)
        parts = {p: [r.session for r in split[p]] for p in cfg.parts}
    else:
        if len(cfg.parts) != 1:
            raise ValueError(f"without a split, name exactly one part, got {cfg.parts}")
        parts = {cfg.parts[0]: [r.session for r in rows]}
    out: dict[str, dict[str, Any]] = {}
    for part, names in parts.items():
        kind = cfg.kind_of(part)
        entries = []
        for name in names:
            r = by_name.get(name)
            if r is None or (users is not None and r.user not in users) or (cfg.sessions and name not in cfg.sessions):
                continue
            n = int(round(r.duration_mins * 60 * sample_rate_hz)) + 1
            entries.append(SessionEntry("", name, r.user, part, n, sample_rate_hz, 0.0, 0, _count_windows(cfg, part, n)))
        summary: dict[str, Any] = {"sessions": len(entries), "users": len({e.user for e in entries}),
                                   "emg_hours": sum(e.num_rows for e in entries) / sample_rate_hz / 3600,
                                   "windows": sum(e.num_windows for e in entries)}
        for dtype in ("float16", "float32"):
            spec = replace(cfg, dtype=dtype).record_spec()
            recs = [(e, r) for e in entries if e.num_windows for r in _records(cfg, kind, e)]
            total = sum(estimate_record_bytes(spec, kind, e.num_rows, r.first_window, r.num_windows) for e, r in recs)
            shards = len(_cut(replace(cfg, dtype=dtype), kind, [r for _, r in recs],
                              {e.session: e.num_rows for e in entries}))
            summary["records"] = len(recs)
            summary[f"gb_{dtype}"] = (total + shards * 10240) / 1e9  # a tar ends padded to 10 KiB
            summary[f"shards_{dtype}"] = shards
        out[part] = summary
    return out


def format_estimate(est: dict[str, dict[str, Any]]) -> str:
    """A table of :func:`estimate_sizes`."""
    lines = [f"{'part':<6} {'sessions':>8} {'users':>5} {'EMG h':>7} {'windows':>8} {'records':>8} "
             f"{'GB f16':>7} {'GB f32':>7} {'~shards f16':>11}"]
    for part, s in est.items():
        lines.append(f"{part:<6} {s['sessions']:>8} {s['users']:>5} {s['emg_hours']:>7.1f} {s['windows']:>8} "
                     f"{s['records']:>8} {s['gb_float16']:>7.2f} {s['gb_float32']:>7.2f} {s['shards_float16']:>11}")
    return "\n".join(lines)
