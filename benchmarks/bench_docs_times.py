"""Time the commands whose durations README.md and docs/ state, as written, in a scratch folder.

Each command is taken from its document (the one code line that starts with the given prefix, its comment
left off) and run in order in one scratch working folder (so later commands find what earlier ones made),
with ``EMGSCALE_PROGRESS=0``. The printed table gives the document, the command, the duration the document
states next to it and the wall time measured now, with the load average before each command: state the
durations you publish from an idle machine (a load well under the core count).

Two commands are long by design and run shortened, which the table says:

* the README's first training command (20 epochs x 50 steps of TDS-small) runs one epoch
  (``run.max_epochs=1``): the README states the time of one epoch and the whole run's follows from it;
* ``fingers train`` runs as written (300 steps).

    python benchmarks/bench_docs_times.py                 # every command, ~10 min on 2 idle cores
    python benchmarks/bench_docs_times.py --only synth,shard --json results/docs_times.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (name, document, line prefix, extra arguments, what was changed). Order matters: later lines use earlier outputs.
COMMANDS: list[tuple[str, str, str, str, str]] = [
    ("synth", "README.md", "python -m emgscale.synth --out data/synth", "", ""),
    ("info", "README.md", "python -m emgscale.data info data/synth --split", "", ""),
    ("shard", "README.md", "python -m emgscale.shard --data-root data/synth --split", "", ""),
    ("verify", "README.md", "python -m emgscale.shard verify shards/generic", "", ""),
    ("train", "README.md", "python -m emgscale.train configs/single_user.yaml configs/models/tds_small.yaml",
     "run.max_epochs=1", "one epoch of the 20"),
    ("lm", "README.md", "python -m emgscale.lm build", "", ""),
    ("eval", "README.md", "python -m emgscale.eval runs/single_user/checkpoints/best.pt", "", ""),
    ("to_bids", "README.md", "python -m emgscale.data to-bids data/synth data/synth-bids", "", ""),
    ("finger_synth", "docs/fingers.md", "python -m emgscale.synth fingers --out data/fingers", "", ""),
    ("finger_split", "docs/fingers.md", "python -m emgscale.fingers split data/fingers", "", ""),
    ("finger_train", "docs/fingers.md", "python -m emgscale.fingers train data/fingers run.threads=2", "", ""),
]


def doc_line(doc: str, prefix: str) -> tuple[str, str]:
    """The one code line of ``doc`` starting with ``prefix``: (command, its comment)."""
    found = [line.strip() for line in (ROOT / doc).read_text().splitlines() if line.strip().startswith(prefix)]
    if len(found) != 1:
        raise SystemExit(f"{doc}: {len(found)} lines start with {prefix!r} (expected 1)")
    cmd, _, comment = found[0].partition("  #")
    return cmd.strip(), comment.strip()


def stated(comment: str) -> str:
    """The duration a comment states (``~40 s``, ``2-5 min``), or ''."""
    m = re.search(r"~?\s*[0-9.]+(?:\s*[-–]\s*[0-9.]+)?\s*(?:s|min|h)\b[^,;)]*", comment)
    return m.group(0).strip() if m else ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma list of command names (default: all): " + ",".join(c[0] for c in COMMANDS))
    p.add_argument("--workdir", help="scratch folder (default: a new temporary one)")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    only = set(a.only.split(",")) if a.only else None
    work = Path(a.workdir or tempfile.mkdtemp(prefix="docs_times_"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "emgscale").exists():  # the lm line names emgscale/data/lm_text/*.txt
        (work / "emgscale").symlink_to(ROOT / "emgscale")
    env = {**os.environ, "EMGSCALE_PROGRESS": "0", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    rows = []
    print(f"# documented commands, run in {work} on {os.cpu_count()} cores")
    for name, doc, prefix, extra, change in COMMANDS:
        if only and name not in only:
            continue
        cmd, comment = doc_line(doc, prefix)
        full = re.sub(r"^python ", shlex.quote(sys.executable) + " ", cmd) + (f" {extra}" if extra else "")
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "-c", full], cwd=work, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode:
            print(f"{name}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", file=sys.stderr)
        rows.append({"name": name, "doc": doc, "command": cmd + (f" {extra}" if extra else ""), "changed": change,
                     "stated": stated(comment), "wall_s": round(wall, 1), "load_before": round(load, 2),
                     "exit": proc.returncode})
        r = rows[-1]
        print(f"{name:13s} {wall:7.1f} s  (stated: {r['stated'] or '-'}; load {load:.1f}"
              f"{'; ' + change if change else ''}{'; FAILED' if proc.returncode else ''})", flush=True)
    print("\n| document | command | stated | measured | load before |\n|---|---|---|--:|--:|")
    for r in rows:
        note = f" ({r['changed']})" if r["changed"] else ""
        print(f"| {r['doc']} | `{r['command']}`{note} | {r['stated'] or '–'} | {r['wall_s']:.0f} s | "
              f"{r['load_before']:.1f} |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 1 if any(r["exit"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
