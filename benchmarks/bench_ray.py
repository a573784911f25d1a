"""Ray Train overhead and scaling on this machine: in-process ``train()`` vs Ray with 1 and 2 CPU workers.

    python benchmarks/bench_ray.py [--steps 40] [--batch-size 8] [--repeat 2] [--out runs/bench_ray]
                                   [--data DIR --split SPLIT.yaml]

Every run trains the same small TDS model on the same data for the same number of steps with the same
global batch (Ray splits it over the workers). Reported side by side, from one invocation:

* wall s: the whole call (``train()`` or ``emgscale.train.launch`` on Ray), after ``ray.init``;
* loop steps/s and EMG-s/s: the loop's own throughput (the median of its logged EMG-s/s after the
  first logging interval; windows are 4 s with no padding, so a step is exactly batch x 4 s of EMG);
* fixed s: wall s - steps / loop rate: start-up, validation, checkpoints (and Ray's worker start);
* ratios of the Ray rows to the in-process row with the same number of cores.

Each mode runs ``--repeat`` times in interleaved rounds and the run with the best loop rate is shown
(the one least disturbed by other load on the machine).

The corpus is a small synthetic one (``emgscale.synth``) unless ``--data`` names a data root (with
``splits/generic.yaml``, or ``--split``). Results also go to ``<out>/bench_ray.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from emgscale.common import hardware
from emgscale.config import build_config
from emgscale.train import TrainConfig, train

WINDOW_SAMPLES = 8000  # 4 s at 2 kHz


def _corpus(out: Path, data: str | None) -> Path:
    """``data``, or a small synthetic corpus under ``out`` (made once)."""
    from emgscale.synth import SynthConfig, ensure_corpus

    if data:
        return Path(data)
    return ensure_corpus(SynthConfig(out=str(out / "data"), users=3, sessions_per_user=6, minutes=0.25,
                                     heldout_users=0))


def _config(root: Path, split: Path, out_dir: Path, steps: int, batch_size: int, *extra: str) -> TrainConfig:
    return build_config(TrainConfig, [], [
        f"data.data_root={root}", f"data.split={split}",
        f"data.window.window_samples={WINDOW_SAMPLES}", "data.window.pad_left_samples=0", "data.window.pad_right_samples=0",
        f"data.batch_size={batch_size}", f"data.train_samples_per_epoch={steps * batch_size}",
        "model.arch=tds", "model.tds.block_channels=[24,24]", "model.tds.kernel_width=16",
        "model.frontend.mlp_features=[96]",
        f"run.out_dir={out_dir}", "run.max_epochs=1", f"run.max_steps={steps}",
        "run.ckpt_every_steps=0", "run.log_every_steps=5", "run.val_max_batches=1", "run.tensorboard=false",
        *extra,
    ])


def _loop_rate(out_dir: Path) -> float:
    """Median EMG-s/s over the logged intervals after the first (warm-up)."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["emg_s_per_s"] for r in rows if "emg_s_per_s" in r]
    rates = rates[1:] or rates
    return statistics.median(rates) if rates else float("nan")


def _run(name: str, workers: int, threads: int, cfg: TrainConfig, steps: int) -> dict:
    from emgscale.train.launch import fit_on_ray as fit

    shutil.rmtree(cfg.run.out_dir, ignore_errors=True)
    t0 = time.monotonic()
    result = train(cfg) if name == "in-process" else fit(cfg)  # run.threads sets torch's threads
    wall = time.monotonic() - t0
    assert result.steps == steps, (name, result.steps)
    emg_rate = _loop_rate(Path(cfg.run.out_dir))
    step_emg_s = cfg.data.batch_size * WINDOW_SAMPLES / cfg.model.features.input_sample_rate_hz
    step_rate = emg_rate / step_emg_s
    row = {"mode": name, "workers": workers, "threads/worker": threads, "steps": steps, "wall_s": wall,
           "loop_steps_per_s": step_rate, "loop_emg_s_per_s": emg_rate, "fixed_s": wall - steps / step_rate}
    print(f"[bench_ray] {name} x{workers}: wall {wall:.1f} s, {step_rate:.2f} steps/s, {emg_rate:.1f} EMG-s/s",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (split over the workers)")
    parser.add_argument("--out", default="runs/bench_ray")
    parser.add_argument("--data", default=None, help="data root (default: synthesise one)")
    parser.add_argument("--split", default=None, help="split file (default: <data>/splits/generic.yaml)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over all modes; each one's best run is shown")
    ns = parser.parse_args(argv)
    out = Path(ns.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = _corpus(out, ns.data)
    split = Path(ns.split) if ns.split else root / "splits" / "generic.yaml"
    os.environ.setdefault("EMGSCALE_PROGRESS", "0")
    for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(k, v)

    import ray

    from emgscale.cluster import LOCAL, connect, shutdown

    t0 = time.monotonic()
    started = not ray.is_initialized()  # else: use the instance this process is already connected to
    if started:
        connect(LOCAL, num_cpus=ns.cpus, log_to_driver=False)  # run.ray_address=local: a private instance
    init_s = time.monotonic() - t0
    runs = [("in-process", 1, 1), ("in-process", 1, 2), ("ray", 1, 1), ("ray", 2, 1)]  # (mode, workers, threads)
    best: dict[tuple, dict] = {}
    try:
        for _ in range(ns.repeat):  # rounds, so that load from other processes hits every mode alike
            for mode, workers, threads in runs:
                name = f"{'inproc' if mode == 'in-process' else 'ray'}{workers}x{threads}"
                extra = [f"run.threads={threads}"] + ([f"run.workers={workers}"] if mode == "ray" else [])
                cfg = _config(root, split, out / name, ns.steps, ns.batch_size, *extra)
                row = _run(mode, workers, threads, cfg, ns.steps)
                key = (mode, workers, threads)
                if key not in best or row["loop_steps_per_s"] > best[key]["loop_steps_per_s"]:
                    best[key] = row  # best of the repeats: the least disturbed run
    finally:
        if started:
            shutdown()
    rows = [best[k] for k in runs]

    base = {r["threads/worker"]: r for r in rows if r["mode"] == "in-process"}
    for r in rows:
        ref = base[r["workers"]] if r["mode"] == "ray" else None  # same number of cores
        r["loop_rate_vs_inproc"] = r["loop_steps_per_s"] / ref["loop_steps_per_s"] if ref else 1.0
        r["wall_vs_inproc"] = r["wall_s"] / ref["wall_s"] if ref else 1.0
    cols = ["mode", "workers", "threads/worker", "steps", "wall_s", "loop_steps_per_s", "loop_emg_s_per_s",
            "fixed_s", "loop_rate_vs_inproc", "wall_vs_inproc"]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    print(f"\nRay Train vs in-process train(): {ns.steps} steps, global batch {ns.batch_size}, 4 s windows, best of "
          f"{ns.repeat}; ray.init {init_s:.1f} s (not in wall_s); ratios against in-process on as many cores\n")
    print(table)
    info = {"rows": rows, "ray_init_s": init_s, "steps": ns.steps, "batch_size": ns.batch_size, "repeat": ns.repeat,
            "hardware": hardware(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "bench_ray.json").write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
