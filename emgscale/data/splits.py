"""Official split files, the data root and its ``metadata.csv``.

A split file is the YAML released with emg2qwerty (``config/user/*.yaml``)::

    # @package _global_
    user: user0
    dataset:
      train: [{user: 43037958, session: <name>}, ...]
      val: [...]
      test: [...]

The session file is ``<data_root>/<session>.hdf5``, or, when the data root is a BIDS copy made by
Meta's ``scripts/convert_to_bids.py`` (``sub-NN/ses-NN/eeg/*_eeg.vhdr``), the recording the converter
made of it: its rule numbers the users of ``metadata.csv`` in sorted order (``sub-01``, ``sub-02``, ...)
and each user's sessions in sorted order (``ses-01``, ...). :class:`DataRoot` applies that rule, with
the root's own ``metadata.csv`` or one given by the user; a split may also name a BIDS recording
directly (``sub-01_ses-02``). Split files are read as released, from any path.
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from emgscale.data.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
METADATA_CSV = "metadata.csv"
BIDS_DESCRIPTION = "dataset_description.json"


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

    def resolve(self, data_root: "str | Path", part: str, bids_metadata: "str | Path | None" = None) -> list[Path]:
        """Session files of ``part`` under ``data_root`` (an HDF5 folder or a BIDS copy, see :class:`DataRoot`).

        Raises:
            DataError: naming the split file and listing every session whose file is missing, or every
                session a BIDS copy cannot map (no ``metadata.csv`` naming it).
        """
        root = Path(data_root)
        paths = DataRoot(root, bids_metadata).paths([r.session for r in self[part]], self.path or self.name)
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
    """All ``*.hdf5`` session files directly under ``data_root``, sorted; or a BIDS copy's recordings
    (``.vhdr`` headers, sorted by subject and session)."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(root, "data root is not a directory")
    return bids_recordings(root) if is_bids_root(root) else sorted(root.glob("*.hdf5"))


# ----------------------------------------------------------------------------- BIDS copies
_ENTITY = re.compile(r"(?:^|_)(sub|ses)-([A-Za-z0-9]+)")


def is_bids_root(root: "str | Path") -> bool:
    """True for a BIDS dataset folder (``dataset_description.json`` or ``sub-*`` folders, no ``*.hdf5``)."""
    root = Path(root)
    if not root.is_dir() or any(root.glob("*.hdf5")):
        return False
    return (root / BIDS_DESCRIPTION).is_file() or any(p.is_dir() for p in root.glob("sub-*"))


def bids_name(recording: "str | Path") -> str:
    """``sub-01_ses-02`` (or ``sub-01`` without sessions) from a recording's file name."""
    ent = dict(_ENTITY.findall(Path(recording).name))
    if "sub" not in ent:
        raise DataError(recording, "not a BIDS file name (no sub-<label> entity)")
    return f"sub-{ent['sub']}" + (f"_ses-{ent['ses']}" if "ses" in ent else "")


def bids_root_of(recording: "str | Path") -> Path:
    """The BIDS root above a recording (the parent of its ``sub-*`` folder)."""
    path = Path(recording).absolute()
    for parent in path.parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    return path.parent


def bids_recordings(root: "str | Path") -> list[Path]:
    """The ``.vhdr`` recordings of a BIDS root (``sub-*/[ses-*/]<datatype>/``), sorted by subject and session.

    Raises:
        DataError: two recordings for the same subject and session (emgscale reads one per session).
    """
    root = Path(root)
    found = {p for pattern in ("sub-*/ses-*/*/*.vhdr", "sub-*/*/*.vhdr") for p in root.glob(pattern)}
    by_name: dict[str, Path] = {}
    for p in sorted(found):
        name = bids_name(p)
        if name in by_name:
            raise DataError(p, f"a second recording of {name} (first: {by_name[name]}); one per session is read")
        by_name[name] = p
    return [by_name[k] for k in sorted(by_name, key=_bids_key)]


def _bids_key(name: str) -> tuple[Any, ...]:
    return tuple(_user_key(v) for _, v in _ENTITY.findall(name))


def bids_names(rows: Sequence[MetadataRow]) -> dict[str, MetadataRow]:
    """``{"sub-01_ses-01": row, ...}``: the names ``convert_to_bids.py`` gives the sessions of ``metadata.csv``.

    The converter's rule: users sorted (as pandas sorts the ``user`` column: numerically when every id
    is a number), numbered from ``sub-01``; each user's sessions sorted by name, numbered from ``ses-01``.
    """
    by_user: dict[str, list[MetadataRow]] = {}
    for r in rows:
        by_user.setdefault(r.user, []).append(r)
    numeric = all(u.isdigit() for u in by_user)
    users = sorted(by_user, key=(lambda u: int(u)) if numeric else str)
    return {f"sub-{i + 1:02d}_ses-{j + 1:02d}": r for i, u in enumerate(users)
            for j, r in enumerate(sorted(by_user[u], key=lambda r: r.session))}


@functools.lru_cache(maxsize=16)
def _bids_names_of(path: str, size: int, mtime_ns: int) -> dict[str, MetadataRow]:
    return bids_names(read_metadata(path))


class DataRoot:
    """A folder of sessions: ``<session>.hdf5`` files, or a BIDS copy written by Meta's converter.

    Args:
        path: the folder.
        bids_metadata: for a BIDS copy without its own ``metadata.csv``, the ``metadata.csv`` it was made
            from (maps HDF5 session names and user ids to ``sub-NN/ses-NN``). Ignored for HDF5 roots.
    """

    def __init__(self, path: "str | Path", bids_metadata: "str | Path | None" = None) -> None:
        self.path = Path(path)
        self.is_bids = is_bids_root(self.path)
        own = self.path / METADATA_CSV
        given = Path(bids_metadata) if bids_metadata and self.is_bids else None
        self.metadata: Path | None = given or (own if own.is_file() else None)

    def bids_names(self) -> dict[str, MetadataRow]:
        """The converter's ``{sub-NN_ses-NN: metadata row}`` ({} without a metadata file)."""
        if self.metadata is None:
            return {}
        try:
            st = self.metadata.stat()
        except FileNotFoundError:
            raise DataError(self.metadata, "no such metadata file (data.bids_metadata / --bids-metadata)") from None
        return _bids_names_of(str(self.metadata), st.st_size, st.st_mtime_ns)

    def identity(self, recording: "str | Path") -> tuple[str, str, MetadataRow | None]:
        """``(user, session, metadata row)`` of a BIDS recording: the HDF5 names when the metadata maps it,
        else its BIDS names (``sub-01``, ``sub-01_ses-02``) and None."""
        name = bids_name(recording)
        row = self.bids_names().get(name)
        return (row.user, row.session, row) if row else (name.split("_")[0], name, None)

    def sessions(self) -> list[tuple[str, str, Path]]:
        """``(user, session, path)`` of every session under the root (user "" when no metadata names it)."""
        if self.is_bids:
            return [(*self.identity(p)[:2], p) for p in bids_recordings(self.path)]
        users = {r.session: r.user for r in read_metadata(self.metadata)} if self.metadata else {}
        return [(users.get(p.stem, ""), p.stem, p) for p in session_files(self.path)]

    def paths(self, sessions: Sequence[str], where: "str | Path | None" = None) -> list[Path]:
        """The file of each named session (which may not exist: callers report missing files).

        Raises:
            DataError: naming ``where`` (e.g. the split file) and every session a BIDS copy cannot map.
        """
        if not self.is_bids:
            return [self.path / f"{s}.hdf5" for s in sessions]
        recordings = {bids_name(p): p for p in bids_recordings(self.path)}
        by_session = {r.session: name for name, r in self.bids_names().items()}
        out, unmapped = [], []
        for s in sessions:
            name = s if _ENTITY.match(s) else by_session.get(s)
            if name is None:
                unmapped.append(s)
            else:
                sub, _, ses = name.partition("_")
                out.append(recordings.get(name, self.path / sub / ses / "eeg" / f"{name}_task-emg2qwerty_eeg.vhdr"))
        if unmapped:
            shown = "\n  ".join(unmapped[:20]) + (f"\n  ... and {len(unmapped) - 20} more" if len(unmapped) > 20 else "")
            why = (f"not in {self.metadata}" if self.metadata else
                   f"the BIDS copy has no {METADATA_CSV}; give the one it was made from (data.bids_metadata=, "
                   f"--bids-metadata)")
            raise DataError(where or self.path, f"{len(unmapped)} of {len(sessions)} sessions cannot be mapped to "
                                                f"a recording of the BIDS copy {self.path} ({why}):\n  {shown}")
        return out
