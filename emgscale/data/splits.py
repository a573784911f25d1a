"""Official split files, the data root and its ``metadata.csv``.

A split file is the YAML released with emg2qwerty (``config/user/*.yaml``)::

    # @package _global_
    user: user0
    dataset:
      train: [{user: 43037958, session: <name>}, ...]
      val: [...]
      test: [...]

The session file is ``<data_root>/<session>.hdf5``. Split files are read as released, from any path.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from emgscale.data.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
METADATA_CSV = "metadata.csv"


@dataclass(frozen=True)
class SessionRef:
    """One entry of a split: the user id (as a string, not zero-padded) and the session name."""

    user: str
    session: str


@dataclass
class Split:
    """A parsed split file.

    Attributes:
        name: the ``user:`` field (``generic``, ``user0``, ``single_user``, ...).
        sessions: ``{"train": [...], "val": [...], "test": [...]}`` lists of :class:`SessionRef`.
        path: the file it came from, if any.
    """

    name: str
    sessions: dict[str, list[SessionRef]] = field(default_factory=dict)
    path: str | None = None

    def __getitem__(self, part: str) -> list[SessionRef]:
        if part not in SPLIT_NAMES:
            raise KeyError(f"unknown split part {part!r}; expected one of {SPLIT_NAMES}")
        return self.sessions.get(part, [])

    def users(self, part: str | None = None) -> list[str]:
        """Sorted distinct users of one part, or of all parts."""
        parts = SPLIT_NAMES if part is None else (part,)
        return sorted({r.user for p in parts for r in self[p]}, key=_user_key)

    def resolve(self, data_root: "str | Path", part: str) -> list[Path]:
        """Session files of ``part`` under ``data_root``.

        Raises:
            DataError: naming the split file and listing every session whose file is missing.
        """
        root = Path(data_root)
        paths = [root / f"{r.session}.hdf5" for r in self[part]]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise DataError(
                self.path or self.name,
                f"{len(missing)} of {len(paths)} '{part}' sessions missing under {root}:\n  {shown}",
            )
        return paths

    def to_yaml(self) -> str:
        """The split in the official layout (with the Hydra package line)."""
        body = {
            "user": self.name,
            "dataset": {
                p: [{"user": _user_value(r.user), "session": r.session} for r in self[p]] for p in SPLIT_NAMES
            },
        }
        return "# @package _global_\n" + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def _user_key(user: str) -> tuple[int, Any]:
    return (0, int(user)) if user.isdigit() else (1, user)


def _user_value(user: str) -> Any:
    return int(user) if user.isdigit() else user


def normalize_user(user: Any) -> str:
    """A user id as a canonical string: ints and zero-padded digit strings give the same id."""
    s = str(user).strip()
    return str(int(s)) if s.isdigit() else s


def load_split(path: "str | Path") -> Split:
    """Parse an official split YAML file.

    Raises:
        DataError: the file is missing, not YAML, or lacks ``dataset`` / entries' ``session``.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "no such split file") from None
    except yaml.YAMLError as e:
        raise DataError(path, f"not valid YAML ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("dataset"), dict):
        raise DataError(path, "not a split file: expected a mapping with 'dataset: {train, val, test}'")
    unknown = set(doc["dataset"]) - set(SPLIT_NAMES)
    if unknown:
        raise DataError(path, f"unknown split parts {sorted(unknown)}; expected {list(SPLIT_NAMES)}")
    sessions: dict[str, list[SessionRef]] = {}
    for part in SPLIT_NAMES:
        entries = doc["dataset"].get(part) or []
        refs = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or "session" not in e:
                raise DataError(path, f"dataset.{part}[{i}] has no 'session': {e!r}")
            refs.append(SessionRef(normalize_user(e.get("user", "")), str(e["session"])))
        sessions[part] = refs
    return Split(name=str(doc.get("user", path.stem)), sessions=sessions, path=str(path))


def save_split(split: Split, path: "str | Path") -> None:
    """Write ``split`` in the official layout, atomically."""
    from emgscale.common import atomic_write_text

    atomic_write_text(path, split.to_yaml())


@dataclass(frozen=True)
class MetadataRow:
    """One row of ``metadata.csv`` (extra columns are kept in ``extra``)."""

    user: str
    session: str
    condition: str
    duration_mins: float
    num_keystrokes: int
    num_prompts: int
    quality_check_tags: list[str]
    extra: dict[str, str] = field(default_factory=dict)


METADATA_COLUMNS = ("user", "session", "condition", "duration_mins", "num_keystrokes", "num_prompts",
                    "quality_check_tags")


def read_metadata(path: "str | Path") -> list[MetadataRow]:
    """Read a ``metadata.csv`` (a data root's, or the real dataset's).

    Raises:
        DataError: the file is missing, lacks a required column, or a row does not parse.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METADATA_CSV
    try:
        fh = path.open(newline="")
    except FileNotFoundError:
        raise DataError(path, "no such metadata file") from None
    rows = []
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("user", "session", "duration_mins") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(path, f"missing columns {missing} (has {reader.fieldnames})")
        for lineno, r in enumerate(reader, start=2):
            try:
                tags = yaml.safe_load(r.get("quality_check_tags") or "[]") or []
                rows.append(MetadataRow(
                    user=normalize_user(r["user"]),
                    session=r["session"],
                    condition=r.get("condition") or "",
                    duration_mins=float(r["duration_mins"]),
                    num_keystrokes=int(float(r.get("num_keystrokes") or 0)),
                    num_prompts=int(float(r.get("num_prompts") or 0)),
                    quality_check_tags=[str(t) for t in tags],
                    extra={k: v for k, v in r.items() if k not in METADATA_COLUMNS},
                ))
            except (ValueError, yaml.YAMLError) as e:
                raise DataError(path, f"line {lineno} does not parse ({e})") from None
    return rows


def write_metadata(rows: Iterable[MetadataRow], path: "str | Path") -> None:
    """Write rows as ``metadata.csv`` with the official columns, atomically."""
    import io

    from emgscale.common import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METADATA_COLUMNS)
    for r in rows:
        w.writerow([r.user, r.session, r.condition, r.duration_mins, r.num_keystrokes, r.num_prompts,
                    "[" + ", ".join(r.quality_check_tags) + "]"])
    atomic_write_text(path, buf.getvalue())


def session_files(data_root: "str | Path") -> list[Path]:
    """All ``*.hdf5`` session files directly under ``data_root``, sorted."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(root, "data root is not a directory")
    return sorted(root.glob("*.hdf5"))
