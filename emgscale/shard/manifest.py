"""``OUT/manifest.json``: what a shard folder holds.

Layout (``format: emgscale-shards``, ``format_version: 1``)::

    {
      "format": "emgscale-shards", "format_version": 1,
      "emgscale_version": "0.1.0", "git_commit": "...", "created": "2025-...Z",
      "settings": {window_samples, stride_samples, pad_*, train_windows_per_record, val_mode, test_mode,
                   dtype, min_float16_snr_db, shard_size_mb, max_samples_per_shard, group_shards, seed, ...},
      "source": {"data_root": ..., "split": ..., "split_name": ..., "users": ..., "sessions": ...},
      "parts": {"train": {"kind", "num_shards", "num_records", "num_windows", "num_sessions", "num_users",
                          "emg_hours", "bytes"}, ...},
      "sessions": {"train": {"<name>": {"user", "num_rows", "sample_rate_hz", "start_time_s", "num_windows"}}, ...},
      "shards": [{"name": "train/train-000000.tar", "part", "kind", "num_records", "num_windows",
                  "emg_rows", "float32_records", "bytes", "sha256", "users", "sessions"}, ...],
      "skipped": [{"path", "session", "user", "part", "reason"}, ...]
    }

``emg_hours`` counts each session once (its rows / sample rate), not the context stored twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emgscale.data.errors import DataError

MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "emgscale-shards", 1
# Fields that change on every run and are not part of what the shards hold.
VOLATILE = ("created", "git_commit", "emgscale_version")


@dataclass
class Manifest:
    """A parsed manifest (see the module docstring for the fields)."""

    settings: dict[str, Any]
    parts: dict[str, dict[str, Any]]
    sessions: dict[str, dict[str, dict[str, Any]]]
    shards: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    emgscale_version: str = ""
    git_commit: str | None = None
    format_version: int = FORMAT_VERSION
    location: str = ""  # where it was read from (not saved)

    def shards_of(self, part: str) -> list[dict[str, Any]]:
        """Shard entries of one part, in shard order."""
        return [s for s in self.shards if s["part"] == part]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": self.format_version, "emgscale_version": self.emgscale_version,
                "git_commit": self.git_commit, "created": self.created, "settings": self.settings,
                "source": self.source, "parts": self.parts, "sessions": self.sessions, "shards": self.shards,
                "skipped": self.skipped}

    def content(self) -> dict[str, Any]:
        """The manifest without run-specific fields (two runs with the same result compare equal)."""
        d = self.to_dict()
        for k in VOLATILE:
            d.pop(k, None)
        return d

    def save(self, out: "str | Path") -> Path:
        """Write ``out/manifest.json`` atomically."""
        from emgscale.common import atomic_write_json

        path = Path(out) / MANIFEST
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], location: str = "") -> "Manifest":
        if d.get("format") != FORMAT:
            raise DataError(location or "manifest", f"not an emgscale shard manifest (format {d.get('format')!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise DataError(location or "manifest", f"manifest format {d['format_version']} is newer than this "
                            f"emgscale understands ({FORMAT_VERSION}); upgrade emgscale")
        return cls(settings=d["settings"], parts=d["parts"], sessions=d["sessions"], shards=d["shards"],
                   skipped=d.get("skipped", []), source=d.get("source", {}), created=d.get("created", ""),
                   emgscale_version=d.get("emgscale_version", ""), git_commit=d.get("git_commit"),
                   format_version=int(d["format_version"]), location=location)


#: A shard or manifest name: relative, no ``..``, nothing a shell would interpret.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


def shard_url(base: str, name: str) -> str:
    """URL of ``name`` (``train/train-000000.tar``, ``manifest.json``) under a shard location.

    ``base`` is a local folder, a URL prefix (``https://host/shards``) or a template containing
    ``{name}`` (``pipe:aws s3 cp s3://bucket/shards/{name} -``).

    Raises:
        DataError: ``name`` (read from a manifest) is not a plain relative path (:data:`_SAFE_NAME`).
    """
    if not _SAFE_NAME.fullmatch(name):  # a name read from a manifest may reach a pipe: command line
        raise DataError(base, f"shard name {name[:80]!r} is not a relative path of letters, digits, '.', '_' "
                              "and '-' (refused: a manifest is data, and its names can reach a shell command)")
    if "{name}" in base:
        return base.replace("{name}", name)
    if base.startswith("pipe:") or "://" in base:
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def load_manifest(location: "str | Path") -> Manifest:
    """Read a manifest from a shard folder, a ``manifest.json`` path, or any URL WebDataset opens
    (``pipe:aws s3 cp s3://bucket/shards/manifest.json -``, ``https://...``).

    Raises:
        DataError: missing, unreadable or not a manifest.
    """
    loc = str(location)
    remote = loc.startswith("pipe:") or "://" in loc
    if not remote:
        path = Path(loc)
        if path.is_dir():
            path = path / MANIFEST
        try:
            text = path.read_text()
        except OSError as e:
            raise DataError(path, f"cannot read shard manifest ({e.strerror or e})") from None
        loc = str(path)
    else:
        from webdataset.gopen import gopen

        try:
            with gopen(loc, "rb") as fh:
                text = fh.read().decode("utf-8")
        except Exception as e:  # noqa: BLE001 - any transport error
            raise DataError(loc, f"cannot fetch shard manifest ({e})") from None
    try:
        return Manifest.from_dict(json.loads(text), loc)
    except (ValueError, KeyError) as e:
        raise DataError(loc, f"not a valid shard manifest ({e})") from None


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def summarize_parts(shards: list[dict[str, Any]],
                    sessions: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per-part totals from shard entries and session records."""
    parts: dict[str, dict[str, Any]] = {}
    for s in shards:
        p = parts.setdefault(s["part"], {"kind": s["kind"], "num_shards": 0, "num_records": 0, "num_windows": 0,
                                         "bytes": 0, "float32_records": 0})
        p["num_shards"] += 1
        for k in ("num_records", "num_windows", "bytes", "float32_records"):
            p[k] += s[k]
    for name, p in parts.items():
        members = list(sessions.get(name, {}).values())
        p["num_sessions"] = len(members)
        p["num_users"] = len({v["user"] for v in members})
        p["emg_hours"] = round(sum(v["num_rows"] / v["sample_rate_hz"] for v in members) / 3600.0, 6)
        p["gb"] = round(p["bytes"] / 1e9, 3)
    return parts
