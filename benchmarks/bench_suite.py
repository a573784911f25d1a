"""Where a whole benchmark's wall time goes: per suite, per step kind, and inside the training runs.

    python benchmarks/bench_suite.py [--budget small] [--jobs 2] [--out runs/bench_suite] [--cache DIR]
                                     [--benchmark all]

Runs ``python -m emgscale.bench all --budget B --jobs J --out OUT --cache CACHE`` as a subprocess (its
output goes to the console and ``OUT/bench_suite.log``), by default from a fresh, empty cache
(``OUT/cache.XXXX``, left there to inspect or delete), then reads what it left:

* every step's ``DONE.json`` in the cache (:func:`emgscale.bench.steps.cached`: ``kind``, ``wall_s``,
  ``finished_at``; a training run's also its ``label``, ``steps`` and the loop's ``timings``),
* each suite's ``OUT/<suite>/results.json`` (``wall_s``),
* the time each suite started (its ``[bench] <suite> (budget ...)`` line, stamped as it was printed),

and prints the total wall minutes; per suite its wall minutes and where they went; per step kind
(corpus, shards, LM, generic runs, per-user runs, per-user fine-tunes, evaluation with the LM grid, other)
the minutes its steps took; and, for training runs, the split of their time into Ray start, pipeline
builds, data wait, training steps, validation, checkpoints and the rest (the loop's ``TrainResult.timings``,
where the loop gives them). With ``--jobs 2`` runs overlap: per-step minutes are process time and sum to
more than the wall time; both are printed, and how busy the J places were. ``all`` and ``demo`` with
``--jobs > 1`` run their suites side by side (:mod:`emgscale.bench.together`): each step's ``DONE.json``
names the suite that made it, and the suites' wall minutes overlap. The summary also goes to ``OUT/bench_suite.json``.
A cache that already holds steps reuses them: only steps made by this run (finished after it started)
are counted; the others are listed as reused.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emgscale.bench.eta import read_json  # noqa: E402
from emgscale.bench.steps import DONE  # noqa: E402
from emgscale.common import atomic_write_json, hardware  # noqa: E402

#: The loop's time breakdown of a run (``TrainResult.timings``), in the order printed.
TIMING_PARTS = ("ray_start_s", "pipeline_build_s", "data_wait_s", "step_s", "validation_s", "checkpoint_s")
#: Step kinds in the order printed (training runs split by what they train).
KINDS = ("corpus", "shards", "lm", "generic runs", "per-user runs", "per-user fine-tunes", "evaluation", "other")
_SUITE_LINE = re.compile(r"^\[bench\] (\w+) \(budget ")


def step_kind(done: dict[str, Any]) -> str:
    """A step's row in the report: its cache kind, training runs by what they train (generic split, a
    fine-tune, or a per-user model), ``eval`` as evaluation (greedy and the LM grid)."""
    kind = done.get("kind") or "other"
    if kind == "runs":
        label = done.get("label") or {}
        return ("generic runs" if label.get("split") == "generic" else
                "per-user fine-tunes" if label.get("finetune") else "per-user runs")
    if kind in ("eval", "fingers_eval"):
        return "evaluation"
    if kind in ("corpus", "fingers_corpus"):
        return "corpus"
    return kind if kind in KINDS else "other"


def _cell() -> dict[str, Any]:
    return {"steps": 0, "process_min": 0.0}


def build_report(cache: Path, out: Path, suite_starts: dict[str, float] | None = None,
                 since: float = 0.0, end: float | None = None, wall_s: float | None = None) -> dict[str, Any]:
    """The summary of one benchmark run from its cache and results folder.

    Args:
        cache: the benchmark cache (every ``<kind>/<hash>/DONE.json`` in it is read).
        out: the results folder (``<suite>/results.json``).
        suite_starts: unix time each suite started, in order; a step whose ``DONE.json`` names no ``suite``
            (suites run one after another) is given to the suite during which it finished; None: only the
            steps that name their suite are split by suite.
        since: unix time the run started: steps finished before it were reused, not made.
        end: unix time the run ended (default: now).
        wall_s: the whole run's wall seconds (default: the suites' ``wall_s`` summed).

    Returns:
        ``{"wall_min", "process_min", "suites": {name: {"wall_min", "kinds", "training_step_min",
        "overhead_share"}}, "kinds": {kind: {"steps", "process_min"}}, "runs": {"timings_min",
        "runs_with_timings", "runs", "overhead_share"}, "reused_steps"}``.
    """
    end = time.time() if end is None else end
    starts = sorted((suite_starts or {}).items(), key=lambda kv: kv[1])
    suites: dict[str, dict[str, Any]] = {}
    named = [n for n, _ in starts]  # then suites whose start line was not seen (their results.json is there)
    for name in [*named, *sorted(p.parent.name for p in Path(out).glob("*/results.json") if p.parent.name not in named)]:
        res = read_json(Path(out) / name / "results.json")
        suites[name] = {"wall_min": float(res.get("wall_s", 0.0)) / 60, "kinds": {}, "training_step_min": 0.0,
                        "process_min": 0.0}
    kinds = {k: _cell() for k in KINDS}
    timings = {k: 0.0 for k in (*TIMING_PARTS, "other_s")}
    runs = timed = reused = 0
    run_min = 0.0
    for marker in sorted(Path(cache).glob(f"*/*/{DONE}")):
        done = read_json(marker)
        if float(done.get("finished_at", 0.0)) < since or "wall_s" not in done:
            reused += 1
            continue
        kind, minutes = step_kind(done), float(done["wall_s"]) / 60
        kinds[kind]["steps"] += 1
        kinds[kind]["process_min"] += minutes
        suite = done.get("suite") or next((n for n, t in reversed(starts)
                                           if float(done.get("finished_at", end)) >= t), None)
        step_min = 0.0
        if done.get("kind") == "runs":
            runs += 1
            run_min += minutes
            t = done.get("timings") or {}
            if t:
                timed += 1
                parts = {k: float(t.get(k, 0.0)) for k in TIMING_PARTS}
                for k, v in parts.items():
                    timings[k] += v
                timings["other_s"] += max(0.0, float(done["wall_s"]) - sum(parts.values()))
                step_min = parts["step_s"] / 60
        if suite in suites:
            cell = suites[suite]["kinds"].setdefault(kind, _cell())
            cell["steps"] += 1
            cell["process_min"] += minutes
            suites[suite]["process_min"] += minutes
            suites[suite]["training_step_min"] += step_min
    for s in suites.values():
        s["overhead_share"] = 1 - s["training_step_min"] / s["process_min"] if s["process_min"] and timed else None
    total_timed = sum(timings.values())
    process_min = sum(c["process_min"] for c in kinds.values())
    return {"wall_min": (wall_s if wall_s is not None else sum(s["wall_min"] * 60 for s in suites.values())) / 60,
            "process_min": process_min, "suites": suites, "kinds": kinds,
            "runs": {"runs": runs, "runs_with_timings": timed, "process_min": run_min,
                     "timings_min": {k: v / 60 for k, v in timings.items()},
                     "overhead_share": 1 - timings["step_s"] / total_timed if total_timed else None},
            "reused_steps": reused}


def _pct(x: float | None) -> str:
    return f"{100 * x:.0f} %" if x is not None else "n/a"


def format_report(r: dict[str, Any], jobs: int = 1) -> str:
    """The report as text: total, per suite, per step kind, inside the training runs."""
    busy = r["process_min"] / (r["wall_min"] * jobs) if r["wall_min"] else 0.0
    lines = [f"total wall {r['wall_min']:.1f} min; steps made {r['process_min']:.1f} process-min"
             + (f" (--jobs {jobs}: runs overlap, so process minutes sum to more than the wall time; the {jobs} "
                f"places were busy {100 * busy:.0f} % of the wall time; suites that run side by side overlap, "
                "so their wall minutes do too)" if jobs > 1 else ""),
             "", "| suite | wall min | steps' process min | of which training steps | overhead |", "|---|---|---|---|---|"]
    for name, s in r["suites"].items():
        lines.append(f"| {name} | {s['wall_min']:.1f} | {s['process_min']:.1f} | {s['training_step_min']:.1f} | "
                     f"{_pct(s['overhead_share'])} |")
    lines += ["", "| step kind | steps | process min |", "|---|---|---|"]
    lines += [f"| {k} | {c['steps']} | {c['process_min']:.1f} |" for k, c in r["kinds"].items() if c["steps"]]
    runs = r["runs"]
    lines += ["", f"training runs: {runs['runs']} made, {runs['process_min']:.1f} process-min; "
                  f"{runs['runs_with_timings']} with the loop's time breakdown"]
    if runs["runs_with_timings"]:
        total = sum(runs["timings_min"].values()) or 1.0
        lines += ["| part | min | share |", "|---|---|---|"]
        lines += [f"| {k.removesuffix('_s').replace('_', ' ')} | {v:.1f} | {100 * v / total:.0f} % |"
                  for k, v in runs["timings_min"].items()]
        lines.append(f"overhead (everything but training steps): {_pct(runs['overhead_share'])}")
    else:
        lines.append("(no run has TrainResult.timings: the loop of this tree gives no breakdown)")
    if r["reused_steps"]:
        lines.append(f"{r['reused_steps']} steps were reused from the cache, not made (not counted)")
    return "\n".join(lines)


def run_suite(args: list[str], log: Path) -> tuple[dict[str, float], float, float]:
    """Run ``python -m emgscale.bench ARGS``, echoing and logging its output; returns the unix time each
    suite started, and the run's start and end."""
    starts: dict[str, float] = {}
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}  # each suite's first line stamped when it is printed, not when a buffer fills
    with open(log, "w") as fh, subprocess.Popen([sys.executable, "-m", "emgscale.bench", *args], env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                bufsize=1) as p:  # this tree's emgscale, wherever it is run from
        for line in p.stdout:
            sys.stdout.write(line)
            fh.write(line)
            m = _SUITE_LINE.match(line)
            if m and m.group(1) not in starts:
                starts[m.group(1)] = time.time()
    if p.returncode != 0:
        raise SystemExit(f"python -m emgscale.bench {' '.join(args)} failed (exit {p.returncode}); see {log}")
    return starts, t0, time.time()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", default="small", help="tiny | small | paper (default small)")
    p.add_argument("--jobs", type=int, default=2, help="training runs side by side (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_suite", help="results folder")
    p.add_argument("--cache", type=Path, help="benchmark cache (default: a fresh empty OUT/cache.XXXX)")
    p.add_argument("--benchmark", default="all", help="what to run (default all; e.g. demo, zero_shot)")
    a = p.parse_args(argv)
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    cache = a.cache.resolve() if a.cache else Path(tempfile.mkdtemp(prefix="cache.", dir=a.out))
    starts, t0, t1 = run_suite([a.benchmark, "--budget", a.budget, "--jobs", str(a.jobs), "--out", str(a.out),
                                "--cache", str(cache)], a.out / "bench_suite.log")
    report = build_report(cache, a.out, starts, since=t0, end=t1, wall_s=t1 - t0)
    print(f"\n[bench_suite] {a.benchmark} --budget {a.budget} --jobs {a.jobs}, cache {cache}")
    print(format_report(report, a.jobs))
    summary = {"benchmark": a.benchmark, "budget": a.budget, "jobs": a.jobs, "cache": str(cache),
               "hardware": hardware(), **report}
    atomic_write_json(a.out / "bench_suite.json", summary)
    print(f"[bench_suite] summary: {a.out / 'bench_suite.json'}")
    return summary


if __name__ == "__main__":
    main()
