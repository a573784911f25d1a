"""Steps per second of `small`-budget fine-tunes on a few minutes of one user's data, and where the time goes.

    python benchmarks/bench_finetune.py [--data-root CORPUS --split SPLIT.yaml] [--minutes 0.5 5]
        [--model cnn_bigru_small] [--source shards|hdf5] [--feature-cache DIR] [--threads 1] [key=value ...]

Trains, in this process and one after another, a fine-tune-shaped run (the ``small`` budget's ``train`` and
``finetune`` overrides, pure CTC from random weights: the step costs what a fine-tune's does) on the first
``--minutes`` of the split's training user, through :func:`emgscale.train.launch` as the benchmarks do,
and prints for each: optimiser steps, wall seconds, steps per wall second, CPU seconds of this process per step
(steadier than wall time on a shared machine), and the share of the wall time
in each part of ``TrainResult.timings`` (:mod:`emgscale.train.timings`; absent in code older than it).
Without ``--data-root`` a synthetic corpus is made first (3 users x 6 sessions of ~3 min, one held out:
~6 min of training EMG for ``splits/user0.yaml``); with ``--source shards`` (default, as ``bench`` trains)
its shards are written first. ``--feature-cache DIR`` runs every setting twice, from raw EMG and from the
feature cache (``data.feature_cache``), side by side. Extra ``key=value`` overrides go to every run.

Run it with a tree on ``PYTHONPATH`` to measure that tree (e.g. before and after a change); the figures
in benchmarks/README.md say under what load they were taken.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def corpus(work: Path) -> tuple[Path, Path]:
    """A synthetic corpus under ``work`` (made once) and its held-out user's split."""
    from emgscale.synth import SynthConfig, generate_corpus

    root = work / "synth"
    if not (root / "splits" / "user0.yaml").is_file():
        generate_corpus(SynthConfig(out=str(root), users=3, sessions_per_user=6, minutes=3.0, heldout_users=1,
                                    seed=7))
    return root, root / "splits" / "user0.yaml"


def shards(work: Path, data_root: Path, split: Path) -> Path:
    """Train/val shards of ``split`` under ``work`` (made once)."""
    from emgscale.config import from_dict
    from emgscale.shard import ShardConfig, shard_corpus

    out = work / f"shards-{split.stem}"
    if not (out / "manifest.json").is_file():
        shard_corpus(from_dict(ShardConfig, {"data_root": str(data_root), "split": str(split), "out": str(out),
                                             "parts": ["train", "val"]}))
    return out


def run_one(overrides: list[str], model: str, out: Path) -> dict[str, float]:
    """Train once; wall seconds, steps and the result's timings (empty in code older than them)."""
    import emgscale
    from emgscale.train import launch, load_train_config

    model_file = Path(emgscale.__file__).parent / "configs" / "models" / f"{model}.yaml"
    cfg = load_train_config([model_file], [*overrides, f"run.out_dir={out}", "run.overwrite=true"])
    t0, c0 = time.monotonic(), time.process_time()
    result = launch(cfg)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "steps": result.steps, **getattr(result, "timings", {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", type=Path)
    p.add_argument("--split", type=Path, help="a split with one training user (default: the synthetic user0.yaml)")
    p.add_argument("--minutes", type=float, nargs="+", default=[0.5, 5.0])
    p.add_argument("--model", default="cnn_bigru_small")
    p.add_argument("--source", choices=("shards", "hdf5"), default="shards")
    p.add_argument("--feature-cache", type=Path, help="also run every setting from this feature cache")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, help="folder for the corpus, shards and runs (default: a temp folder)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    from emgscale.bench.budget import get_budget

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    data_root, split = (args.data_root, args.split) if args.data_root else corpus(work)
    source = [f"data.data_root={data_root}", f"data.split={split}"]
    if args.source == "shards":
        source.append(f"data.shards={shards(work, data_root, split)}")
    budget = get_budget("small")
    base = [*budget.train, *budget.finetune, *source, f"run.threads={args.threads}", "run.tensorboard=false",
            "run.log_every_steps=1000", *args.overrides]
    variants = {"raw": []}
    if args.feature_cache:
        variants["feature cache"] = [f"data.feature_cache={args.feature_cache}"]
    rows = []
    for minutes in args.minutes:
        for name, extra in variants.items():
            out = work / "runs" / f"{minutes:g}min-{name.replace(' ', '_')}"
            r = run_one([*base, f"data.max_minutes_per_user={minutes}", *extra], args.model, out)
            rows.append((minutes, name, r))
            shutil.rmtree(out, ignore_errors=True)
    parts = ("pipeline_build_s", "data_wait_s", "step_s", "validation_s", "checkpoint_s")
    print(f"\n{'minutes':>7} {'input':<13} {'steps':>5} {'wall s':>7} {'steps/s':>7} {'CPU s/step':>10}  "
          + " ".join(f"{k.removesuffix('_s'):>16}" for k in parts) + "  (share of wall time)")
    for minutes, name, r in rows:
        shares = " ".join(f"{r[k] / r['wall_s']:>16.0%}" if k in r else f"{'-':>16}" for k in parts)
        print(f"{minutes:>7g} {name:<13} {int(r['steps']):>5} {r['wall_s']:>7.1f} {r['steps'] / r['wall_s']:>7.2f} "
              f"{r['cpu_s'] / r['steps']:>10.2f}  "
              + shares)
    print(f"\nmodel {args.model}, {args.source}, {args.threads} thread(s); work folder {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
