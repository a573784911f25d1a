"""``verify_shards(OUT)``: check every shard against the manifest, naming each bad one."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webdataset.tariterators import base_plus_ext

from emgscale.common import progress
from emgscale.data.errors import DataError
from emgscale.shard.manifest import load_manifest
from emgscale.shard.records import decode_record
from emgscale.shard.writer import file_sha256


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_shards`.

    Attributes:
        checked: number of shards checked.
        problems: ``(shard name, problem)`` for each missing, truncated or corrupt shard.
        extra: ``.tar`` files in the part folders that the manifest does not list (a warning only).
    """

    checked: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"{name}: {problem}" for name, problem in self.problems]
        lines += [f"{name}: warning: not in the manifest (ignored by loaders)" for name in self.extra]
        lines.append(f"{self.checked} shards checked, {len(self.problems)} bad")
        return "\n".join(lines)


def _count_records(path: Path) -> int:
    """Distinct sample keys in a tar, each record's values checked as every reader checks them
    (:func:`emgscale.shard.records.decode_record`: the one value rule of :mod:`emgscale.data.values`).

    Raises:
        DataError: a record that does not decode or holds bad values (naming the shard and the key).
        tarfile.TarError, OSError, EOFError: a truncated or corrupt archive.
    """
    keys: list[str] = []
    sample: dict[str, Any] = {}

    def check() -> None:
        if sample:
            decode_record({"__url__": str(path), **sample})

    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isreg():
                data = tar.extractfile(member).read()  # reads through the data: detects a short file
                key, ext = base_plus_ext(member.name)
                if key is not None and (not keys or keys[-1] != key):
                    check()
                    keys.append(key)
                    sample = {"__key__": key}
                if key is not None:
                    sample[ext] = data
    check()
    return len(keys)


def check_shard(root: Path, entry: dict[str, Any], hash_check: bool = True) -> str | None:
    """The problem with one shard, or None when it matches its manifest entry."""
    path = root / entry["name"]
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{'truncated' if size < entry['bytes'] else 'wrong size'}: {size} bytes, manifest says {entry['bytes']}"
    if hash_check and file_sha256(path) != entry["sha256"]:
        return "corrupt: sha256 differs from the manifest"
    try:
        n = _count_records(path)
    except DataError as e:
        return e.problem
    except (tarfile.TarError, OSError, EOFError) as e:
        return f"unreadable tar ({type(e).__name__}: {e})"
    if n != entry["num_records"]:
        return f"holds {n} samples, manifest says {entry['num_records']}"
    return None


def verify_shards(out: "str | Path", hash_check: bool = True, show_progress: bool = True) -> VerifyReport:
    """Check each shard of ``out/manifest.json``: present, size, sha256, readable tar, sample count.

    Args:
        out: the shard folder.
        hash_check: also compare sha256 (reads every byte; off: size, tar and counts only).
        show_progress: print progress.

    Raises:
        DataError: when the manifest itself is missing or invalid.
    """
    root = Path(out)
    manifest = load_manifest(root)
    report = VerifyReport()
    for entry in progress(manifest.shards, total=len(manifest.shards), desc="verify", unit="shard",
                          enabled=None if show_progress else False):
        report.checked += 1
        problem = check_shard(root, entry, hash_check)
        if problem:
            report.problems.append((entry["name"], problem))
    listed = {e["name"] for e in manifest.shards}
    for part in {e["part"] for e in manifest.shards}:
        for f in sorted((root / part).glob("*.tar")):
            if f"{part}/{f.name}" not in listed:
                report.extra.append(f"{part}/{f.name}")
    return report


__all__ = ["DataError", "VerifyReport", "check_shard", "verify_shards"]
