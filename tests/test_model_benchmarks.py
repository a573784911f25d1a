"""The model benchmark scripts (benchmarks/bench_models.py, bench_precision.py) run and report what they say."""

from __future__ import annotations

from pathlib import Path

def test_benchmark_script_runs_on_tiny_settings(tmp_path: Path) -> None:
    """benchmarks/bench_models.py runs end to end and reports every field; its reference TDS has 5,293,315 params."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_models.py"
    spec = importlib.util.spec_from_file_location("bench_models", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    out = tmp_path / "rows.json"
    bench.main(["--configs", "tds_small,reference_tds", "--dtypes", "fp32", "--batch", "1", "--steps", "1",
                "--warmup", "0", "--window-samples", "2400", "--context-samples", "0", "--threads", "1",
                "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r.get("error") for r in rows] == [None, None]
    assert rows[1]["params"] == 5_293_315
    for r in rows:
        assert r["emg_s_per_s"] > 0 and r["fwd_gflop_per_emg_s"] > 0 and r["gflop_per_s"] > 0 and r["peak_mem_mb"] > 0


def test_benchmark_rounds_merge_and_reference_ratio() -> None:
    """bench_models merges interleaved rounds by the median of all steps and prints each row's speed vs reference_tds fp32."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_models.py"
    spec = importlib.util.spec_from_file_location("bench_models", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]

    def row(config: str, steps: list[float], cpu: list[float]) -> dict:
        return {"config": config, "arch": "tds", "dtype": "fp32", "params": 1, "fwd_gflop_per_emg_s": 1.0,
                "step_times_s": steps, "cpu_times_s": cpu, "step_s": steps[0], "cpu_s": cpu[0], "batch": 2,
                "window_samples": 8000, "sample_rate_hz": 2000.0, "step_gflop": 10.0, "peak_mem_mb": 5.0,
                "emg_s_per_s": 8.0 / steps[0], "emg_s_per_cpu_s": 8.0 / cpu[0], "gflop_per_s": 10.0 / steps[0]}

    ours = bench.merge_rounds([row("tds", [1.0, 9.0], [2.0, 2.0]), row("tds", [2.0], [1.0])])
    assert ours["step_s"] == 2.0 and ours["cpu_s"] == 2.0 and ours["emg_s_per_s"] == 4.0 and ours["rounds"] == 2
    ref = row("reference_tds", [8.0], [4.0])  # 1 EMG-s/s, 2 EMG-s/CPU-s
    line = bench.format_table([ours, ref]).splitlines()[2]
    assert line.split()[-2:] == ["4.00x", "2.00x"]  # vs ref by wall time, by CPU time


def test_precision_benchmark_runs_the_training_loop(tiny_corpus, tmp_path: Path) -> None:
    """bench_precision.py trains fp32 and bf16 from one seed: same first-step loss, finite curves, a plot."""
    import importlib.util
    import json
    import math

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_precision.py"
    spec = importlib.util.spec_from_file_location("bench_precision", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    out = tmp_path / "prec"
    bench.main(["--model", "tds_tiny", "--steps", "4", "--batch-size", "2", "--out", str(out),
                "--data", str(tiny_corpus.root), "--split", str(tiny_corpus.split_path)])
    runs = json.loads((out / "precision.json").read_text())["runs"]
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert len(fp32["losses"]) == len(bf16["losses"]) == 4
    assert all(math.isfinite(x) for x in fp32["losses"] + bf16["losses"])
    # Same weights and batch at step 1: bf16 rounding moves the loss by well under 5 %.
    assert abs(fp32["losses"][0] - bf16["losses"][0]) < 0.05 * fp32["losses"][0]
    assert fp32["emg_s_per_s"] > 0 and (out / "precision.png").stat().st_size > 1000
