"""Dataset statistics: per-session summaries of a session file, a data root or a split.

Library side of ``python -m emgscale.data info``; like the reference's dataset-statistics script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emgscale.data.errors import DataError
from emgscale.data.scale import sampled_scale, scale_warning
from emgscale.data.session import EMGSession
from emgscale.data.source import open_session
from emgscale.data.splits import SPLIT_NAMES, load_split, session_files


@dataclass
class InfoReport:
    """Summaries of the sessions found, bad files met, and per-part totals when a split was given."""

    sessions: list[dict[str, Any]] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)
    totals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "bad": self.bad, "totals": self.totals}


def _summarise(path: Path, labels: bool, values: bool, bids_metadata: "str | Path | None" = None) -> dict[str, Any]:
    with open_session(path, bids_metadata) as s:
        if values:
            s.scan_values()  # one streaming pass: NaN/inf EMG, timestamps that go backwards
        row = s.info().to_dict()
        row.update(_scale(s) if values else {"rms_per_band": None, "scale": None, "scale_warning": None})
        if labels:
            row["labels"] = s.ground_truth().text
    return row


def _scale(s: EMGSession) -> dict[str, Any]:
    """The session's signal scale in the file's units, from up to a minute of evenly spread EMG:
    RMS per band, the per-channel scale the front end's rule uses, and its one-line warning (or None).
    Not with ``check_values=False`` (``--quick``: no EMG is read)."""
    pieces: list[np.ndarray] = []

    def read(a: int, b: int) -> np.ndarray:
        pieces.append(s.emg(a, b))
        return pieces[-1]

    scale = sampled_scale(read, len(s), s.sample_rate_hz)
    x = np.concatenate(pieces).astype(np.float64) if pieces else np.zeros((0, 2, 16))
    rms = [float(np.sqrt(np.mean(x[:, b] ** 2))) if len(x) else 0.0 for b in range(x.shape[1])]
    return {"rms_per_band": rms, "scale": scale, "scale_warning": scale_warning(scale, where=str(s.path))}


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "sessions": len(rows),
        "users": len({r["user"] for r in rows}),
        "hours": sum(r["duration_s"] for r in rows) / 3600.0,
        "keystrokes": sum(r["num_keystrokes"] for r in rows),
        "label_chars": sum(r["label_length"] for r in rows),
    }


def dataset_info(path: "str | Path", split: "str | Path | None" = None, labels: bool = False,
                 skip_bad: bool = False, check_values: bool = True,
                 bids_metadata: "str | Path | None" = None) -> InfoReport:
    """Summarise a session file, every session under a data root, or the sessions of a split.

    Args:
        path: a ``.hdf5`` session file, a BIDS recording's ``.vhdr``, or a data root folder (of HDF5 files,
            or a BIDS copy).
        split: an official split YAML; ``path`` must then be the data root.
        labels: include each session's label text.
        skip_bad: report bad files in ``InfoReport.bad`` and go on, instead of raising.
        check_values: read every file once, in chunks, and check the EMG is finite and the timestamps
            never go backwards (False: attributes, structure and lengths only).
        bids_metadata: the ``metadata.csv`` a BIDS copy was made from, when its root has none.

    Raises:
        DataError: a bad file (unless ``skip_bad``), or sessions of the split missing from the root.
    """
    path = Path(path)
    report = InfoReport()
    if split is not None:
        sp = load_split(split)
        parts = {part: sp.resolve(path, part, bids_metadata) for part in SPLIT_NAMES}
    elif path.is_dir():
        parts = {"all": session_files(path)}
    elif path.exists():
        parts = {"all": [path]}
    else:
        raise DataError(path, "no such session file or data root")
    for part, files in parts.items():
        rows = []
        for f in files:
            try:
                row = _summarise(f, labels, check_values, bids_metadata)
            except DataError as e:
                if not skip_bad:
                    raise
                report.bad.append({"path": e.path, "problem": e.problem})
                continue
            row["part"] = part
            rows.append(row)
        report.sessions.extend(rows)
        report.totals[part] = _totals(rows)
    return report


def format_report(report: InfoReport, labels: bool = False) -> str:
    """A human-readable table of the report."""
    lines = [f"{'user':>10}  {'condition':<12} {'part':<5} {'min':>7} {'samples':>10} {'keys':>6} {'label':>6} "
             f"{'RMS L/R (file units)':>21}  session"]
    warnings = []
    for r in report.sessions:
        rms = "/".join(f"{v:.3g}" for v in r["rms_per_band"]) if r.get("rms_per_band") else "-"  # --quick
        lines.append(f"{r['user']:>10}  {r['condition']:<12} {r['part']:<5} {r['duration_s'] / 60:7.2f} "
                     f"{r['num_samples']:10d} {r['num_keystrokes']:6d} {r['label_length']:6d} {rms:>21}  "
                     f"{r['session']}")
        if labels:
            lines.append(f"{'':>12}{r['labels']!r}")
        if r.get("scale_warning"):
            warnings.append(f"WARNING {r['scale_warning']}")
    lines.append("")
    for part, t in report.totals.items():
        lines.append(f"[{part}] {t['sessions']} sessions, {t['users']} users, {t['hours']:.2f} h, "
                     f"{t['keystrokes']} keystrokes, {t['label_chars']} label characters")
    for b in report.bad:
        lines.append(f"BAD {b['path']}: {b['problem']}")
    if warnings:  # one line, however many sessions share the problem
        more = f" (and {len(warnings) - 1} more sessions)" if len(warnings) > 1 else ""
        lines.append(warnings[0] + more)
    return "\n".join(lines)
