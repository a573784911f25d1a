"""benchmarks/bench_suite.py: where a whole benchmark's time goes, from the cache's DONE.json files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bench_suite", REPO / "benchmarks" / "bench_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _done(cache: Path, kind: str, name: str, **fields) -> None:
    (cache / kind / name).mkdir(parents=True)
    (cache / kind / name / "DONE.json").write_text(json.dumps({"kind": kind, **fields}))


def test_report_splits_time_by_suite_kind_and_training_part(tmp_path):
    """Steps go to the suite during which they finished and to their kind (runs by what they train); the
    runs' time splits into the loop's parts plus the rest; reused steps are not counted."""
    bs = _script()
    cache, out = tmp_path / "cache", tmp_path / "out"
    timings = {"ray_start_s": 6.0, "pipeline_build_s": 12.0, "data_wait_s": 6.0, "step_s": 240.0,
               "validation_s": 24.0, "checkpoint_s": 6.0}
    _done(cache, "corpus", "c", wall_s=60.0, finished_at=110.0)
    _done(cache, "shards", "s", wall_s=30.0, finished_at=120.0)
    _done(cache, "runs", "g", wall_s=300.0, finished_at=500.0, label={"split": "generic", "finetune": False},
          timings=timings)
    _done(cache, "eval", "e", wall_s=120.0, finished_at=700.0)
    _done(cache, "runs", "u", wall_s=60.0, finished_at=1100.0, label={"split": "user0", "finetune": True})
    _done(cache, "lm", "old", wall_s=5.0, finished_at=50.0)  # made by an earlier run: reused
    for name, wall in (("zero_shot", 900.0), ("personalized", 300.0)):
        (out / name).mkdir(parents=True)
        (out / name / "results.json").write_text(json.dumps({"wall_s": wall}))
    r = bs.build_report(cache, out, {"zero_shot": 100.0, "personalized": 1000.0}, since=100.0, end=1300.0,
                        wall_s=1200.0)
    assert r["wall_min"] == pytest.approx(20.0) and r["process_min"] == pytest.approx(9.5) and r["reused_steps"] == 1
    z, p = r["suites"]["zero_shot"], r["suites"]["personalized"]
    assert z["wall_min"] == pytest.approx(15.0) and z["process_min"] == pytest.approx(8.5)
    assert z["training_step_min"] == pytest.approx(4.0) and z["overhead_share"] == pytest.approx(1 - 4.0 / 8.5)
    assert set(z["kinds"]) == {"corpus", "shards", "generic runs", "evaluation"}
    assert p["kinds"] == {"per-user fine-tunes": {"steps": 1, "process_min": 1.0}}
    assert r["kinds"]["generic runs"]["steps"] == 1 and r["kinds"]["lm"]["steps"] == 0
    runs = r["runs"]
    assert runs["runs"] == 2 and runs["runs_with_timings"] == 1
    assert runs["timings_min"]["step_s"] == pytest.approx(4.0) and runs["timings_min"]["other_s"] == pytest.approx(0.1)
    assert runs["overhead_share"] == pytest.approx(1 - 240.0 / 300.0)
    text = bs.format_report(r, jobs=2)
    assert "process minutes sum to more than the wall time" in text and "| zero_shot | 15.0 | 8.5 | 4.0 | 53 % |" in text
    assert "| step | 4.0 | 80 % |" in text and "1 steps were reused" in text


def test_report_without_the_loops_timings_says_so(tmp_path):
    """Runs whose DONE.json has no timings (a loop without the breakdown) are counted, with a line saying so."""
    bs = _script()
    _done(tmp_path / "cache", "runs", "u", wall_s=60.0, finished_at=10.0, label={"split": "user1"})
    r = bs.build_report(tmp_path / "cache", tmp_path / "out", None, wall_s=60.0)
    assert r["kinds"]["per-user runs"]["steps"] == 1 and r["runs"]["overhead_share"] is None
    assert "no run has TrainResult.timings" in bs.format_report(r)


@pytest.mark.slow  # ~2-3 min: the demo's suites end to end at the tiny budget, 2 runs at a time
def test_bench_suite_runs_the_benchmark_and_writes_its_summary(tmp_path):
    """bench_suite.py at --budget tiny runs the benchmark (its suites side by side) from a fresh cache and writes
    a summary that has every suite, the steps each made and the training runs."""
    summary = _script().main(["--budget", "tiny", "--jobs", "2", "--out", str(tmp_path), "--benchmark", "demo"])
    assert set(summary["suites"]) == {"zero_shot", "personalized"} and summary["reused_steps"] == 0
    assert summary["kinds"]["corpus"]["steps"] == 1 and summary["kinds"]["generic runs"]["steps"] == 1
    assert summary["kinds"]["per-user runs"]["steps"] >= 1 and summary["kinds"]["evaluation"]["steps"] >= 1
    assert summary["wall_min"] > 0 and (tmp_path / "bench_suite.json").is_file()
    assert (tmp_path / "zero_shot" / "results.json").is_file() and (tmp_path / "bench_suite.log").stat().st_size
    # --jobs 2: the suites ran side by side, and every training run and evaluation names the suite that made it
    assert "side by side" in (tmp_path / "bench_suite.log").read_text()
    assert all(s["process_min"] > 0 for s in summary["suites"].values())
    made = [json.loads(p.read_text()) for p in Path(summary["cache"]).glob("*/*/DONE.json")]
    assert {d.get("suite") for d in made if d["kind"] in ("runs", "eval")} == {"zero_shot", "personalized"}
