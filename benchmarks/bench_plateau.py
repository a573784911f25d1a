"""Where the CTC plateau comes from: recipes side by side at fixed steps (val loss, greedy CER, s/step).

    python benchmarks/bench_plateau.py --data-root CORPUS [--split single_user] [--model cnn_bigru_small]
        [--variants current,prior,stride4,...] [--steps 600] [--stop-at N] [--eval-every 75] [--seeds 1501]
        [--jobs 2] [--out runs/bench_plateau] [--plot runs/bench_plateau/curves.png] [--table-only] [key=value ...]

Each variant is a list of ``dotted.key=value`` overrides on top of the ``current`` recipe (the ``small``
budget: batch 16 x 4 s windows, Adam 5e-3 -> cosine to 1e-3, clip 5, 0.5-epoch warm-up of 75 steps,
1 thread per run, 75-step epochs; see :data:`VARIANTS`). Every run trains ``--steps`` optimiser steps through
:func:`emgscale.train.launch` (the one loop) on the HDF5 sessions of the split, validating every
``--eval-every`` steps on the first ``run.val_max_batches`` val batches; each run's history goes to
``<out>/<variant>-s<seed>.json`` (a finished run is not trained again). ``--jobs`` runs train side by
side in spawned processes; the table reports each variant's train seconds per step measured in those
runs (the median logging interval), so compare s/step only between runs that ran together.

The table: val loss / greedy window CER at each eval step (mean over seeds, ± population std when
more than one seed), the first eval step with val loss < 3.0 nats (off the blank plateau), and s/step.
``--plot`` draws val CER against wall minutes for every variant (one PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The ``small`` budget's recipe (emgscale/bench/budget.py before issue 13), 1 thread per run.
CURRENT = ["data.batch_size=16", "optim.lr=5e-3", "optim.min_lr=1e-3", "optim.grad_clip=5",
           "optim.warmup_epochs=0.5", "run.steps_per_epoch=75", "run.val_max_batches=4", "run.bf16=false",
           "run.threads=1", "run.tensorboard=false", "run.ckpt_every_steps=0", "run.log_every_steps=10"]

#: variant -> overrides on top of :data:`CURRENT`.
VARIANTS: dict[str, list[str]] = {
    "current": [],
    "prior": ["model.head_blank_prior=0.9"],
    "stride4": ["model.cnn_rnn.strides=[2,2]"],
    "stride4_prior": ["model.cnn_rnn.strides=[2,2]", "model.head_blank_prior=0.8"],
    "b8_lr3e-3": ["data.batch_size=8", "optim.lr=3e-3"],
    "b8": ["data.batch_size=8"],
    "b4": ["data.batch_size=4"],
    "lr1e-2": ["optim.lr=1e-2"],
    "lr2e-3": ["optim.lr=2e-3"],
    "warmup0": ["optim.warmup_epochs=0"],
    "warmup2": ["optim.warmup_epochs=2"],
    "aux": ["loss.aux=keys", "loss.aux_weight=1", "loss.aux_decay_steps=300"],
    "aux_prior": ["loss.aux=keys", "loss.aux_weight=1", "loss.aux_decay_steps=300", "model.head_blank_prior=0.9"],
    # the re-sized ``small`` budget's recipe (emgscale/bench/budget.py): aux loss decayed over 200 steps + prior
    "small": ["loss.aux=keys", "loss.aux_weight=1", "loss.aux_decay_steps=200", "model.head_blank_prior=0.9"],
    "aux_stride4": ["loss.aux=keys", "loss.aux_weight=1", "loss.aux_decay_steps=300", "model.cnn_rnn.strides=[2,2]"],
    "aux_at_press": ["loss.aux=keys", "loss.aux_weight=1", "loss.aux_decay_steps=300", "loss.aux_offset_ms=0"],
}

PLATEAU_NATS = 3.0


def _train_one(args: dict[str, Any]) -> dict[str, Any]:
    """Train one (variant, seed) run; returns its validation history with wall times."""
    import torch

    from emgscale.train import launch, load_train_config

    out = Path(args["out"])
    cfg = load_train_config([args["model_file"]], [
        *CURRENT, *VARIANTS.get(args["variant"], []), *args["extra_variant"], *args["overrides"],
        f"data.data_root={args['data_root']}", f"data.split={args['split_file']}",
        f"run.max_epochs={max(1, -(-args['steps'] // 75))}", f"run.max_steps={args['stop_at'] or args['steps']}",
        f"run.eval_every_steps={args['eval_every']}", f"run.seed={args['seed']}",
        f"run.out_dir={out / 'runs' / args['name']}"])
    torch.set_num_threads(max(1, cfg.run.threads))
    t0 = time.monotonic()
    curve: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any], _: Any) -> None:
        curve.append({"step": int(metrics["step"]), "wall_s": time.monotonic() - t0,
                      "val_loss": float(metrics["val_loss"]), "val_cer": float(metrics["val_cer"])})

    launch(cfg, report=report)
    log = Path(cfg.run.out_dir) / "metrics.jsonl"
    rates = [r["emg_s_per_s"] for r in map(json.loads, log.read_text().splitlines()) if "emg_s_per_s" in r]
    window_s = (cfg.data.window.window_samples + cfg.data.window.pad_left_samples
                + cfg.data.window.pad_right_samples) / cfg.model.features.input_sample_rate_hz
    s_per_step = cfg.data.batch_size * window_s / statistics.median(rates) if rates else float("nan")
    result = {"variant": args["variant"], "seed": args["seed"], "curve": curve, "s_per_step": s_per_step,
              "overrides": [*VARIANTS.get(args["variant"], []), *args["extra_variant"], *args["overrides"]]}
    from emgscale.common import atomic_write_json

    atomic_write_json(out / f"{args['name']}.json", result)
    return result


def _at(curve: list[dict[str, Any]], step: int, key: str) -> float | None:
    return next((r[key] for r in curve if r["step"] == step), None)


def _fmt(values: list[float], pct: bool) -> str:
    if not values:
        return "–"
    scale = 100.0 if pct else 1.0
    mean = statistics.fmean(values) * scale
    text = f"{mean:.1f}" if pct else f"{mean:.2f}"
    if len(values) > 1:
        text += f" ± {statistics.pstdev(values) * scale:.1f}" if pct else f" ± {statistics.pstdev(values):.2f}"
    return text


def table(results: list[dict[str, Any]], steps: list[int]) -> str:
    """Markdown table: val loss / CER % at each step, first step off the plateau, s/step (per variant)."""
    variants = list(dict.fromkeys(r["variant"] for r in results))
    head = ["variant", "seeds", *[f"step {s}" for s in steps], f"off plateau (val loss < {PLATEAU_NATS:g})",
            "s/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        cells = []
        for s in steps:
            loss = [x for r in rs if (x := _at(r["curve"], s, "val_loss")) is not None]
            cer = [x for r in rs if (x := _at(r["curve"], s, "val_cer")) is not None]
            cells.append(f"{_fmt(loss, False)} / {_fmt(cer, True)}")
        off = [next((p["step"] for p in r["curve"] if p["val_loss"] < PLATEAU_NATS), None) for r in rs]
        off_text = ", ".join("–" if o is None else str(o) for o in off)
        sps = statistics.fmean(r["s_per_step"] for r in rs)
        lines.append(f"| {v} | {len(rs)} | " + " | ".join(cells) + f" | {off_text} | {sps:.2f} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Val CER against wall minutes, one line per run (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, Any] = {}
    for r in results:
        c = colours.setdefault(r["variant"], f"C{len(colours)}")
        xs = [p["wall_s"] / 60 for p in r["curve"]]
        ax.plot(xs, [100 * p["val_cer"] for p in r["curve"]], color=c, marker=".",
                label=r["variant"] if sum(1 for q in results if q["variant"] == r["variant"] and q is r) else None)
    handles = {}
    for line in ax.get_lines():
        handles.setdefault(line.get_color(), line)
    ax.legend([handles[c] for c in colours.values()], list(colours), fontsize=8)
    ax.set_xlabel("wall minutes (training + validation)")
    ax.set_ylabel("greedy val CER (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default="single_user", help="split name under <data-root>/splits")
    p.add_argument("--model", default="cnn_bigru_small", help="configs/models/<name>.yaml")
    p.add_argument("--variants", default="current,prior,stride4")
    p.add_argument("--var", action="append", default=[],
                   help="define a variant: NAME:key=value;key=value (repeatable)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop each run at this step (its schedule still spans --steps), to compare early steps")
    p.add_argument("--eval-every", type=int, default=75)
    p.add_argument("--seeds", default="1501")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default="runs/bench_plateau")
    p.add_argument("--plot", default=None, help="PNG of val CER vs wall minutes")
    p.add_argument("--table-only", action="store_true", help="print the table of the runs already in --out")
    p.add_argument("overrides", nargs="*", help="dotted.key=value for every run")
    a = p.parse_args(argv)
    custom = {}
    for spec in a.var:
        name, _, body = spec.partition(":")
        custom[name] = [x for x in body.split(";") if x]
    names = [v for v in a.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS and v not in custom:
            p.error(f"--variants: unknown variant {v!r}; known: {', '.join([*VARIANTS, *custom])}")
    out = Path(a.out)
    jobs = []
    for v in names:
        for seed in [int(s) for s in a.seeds.split(",")]:
            name = f"{v}-s{seed}"
            if not a.table_only and not (out / f"{name}.json").is_file():
                jobs.append({"variant": v, "extra_variant": custom.get(v, []), "seed": seed, "name": name,
                             "out": str(out), "data_root": a.data_root,
                             "split_file": str(Path(a.data_root) / "splits" / f"{a.split}.yaml"),
                             "model_file": str(ROOT / "emgscale" / "configs" / "models" / f"{a.model}.yaml"),
                             "steps": a.steps, "stop_at": a.stop_at, "eval_every": a.eval_every, "overrides": a.overrides})
    if jobs:
        with ProcessPoolExecutor(max_workers=max(1, a.jobs), mp_context=get_context("spawn")) as pool:
            for r in pool.map(_train_one, jobs):
                print(f"[plateau] {r['variant']} seed {r['seed']}: "
                      + ", ".join(f"{c['step']}: {c['val_loss']:.2f}/{c['val_cer']:.0%}" for c in r["curve"]),
                      flush=True)
    results = [json.loads((out / f"{v}-s{s}.json").read_text()) for v in names
               for s in [int(x) for x in a.seeds.split(",")] if (out / f"{v}-s{s}.json").is_file()]
    steps = sorted({c["step"] for r in results for c in r["curve"] if c["step"] % a.eval_every == 0})
    print(table(results, steps))
    if a.plot and results:
        from emgscale.bench.runner import data_label

        root = Path(a.data_root)
        plot(results, Path(a.plot), f"{a.model}, split {a.split} of {data_label(root)} ({root.name}), seeds {a.seeds},\n"
             f"{a.jobs} run(s) at a time on {os.cpu_count()} cores; greedy CER on 4 s val windows")
        print(f"[plateau] plot: {a.plot}")
    return results


if __name__ == "__main__":
    main()
