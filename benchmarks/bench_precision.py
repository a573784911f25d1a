"""fp32 vs bf16 autocast in the real training loop: throughput, and whether the loss curve changes.

    python benchmarks/bench_precision.py [--model tds] [--steps 30] [--batch-size 32] [--noise]
                                         [--out runs/bench_precision] [--data DIR --split SPLIT.yaml]

Runs ``emgscale.train.train`` (the one loop: loader, features, model, CTC, Adam, schedule) on the same
data with the same seed -- so the same initial weights, batches, jitter and augmentations -- once in
fp32 and once with ``run.bf16=true``; ``--noise`` adds an fp32 run with another seed, whose distance
from the first fp32 run is the noise level a precision change should stay within. Defaults are the
reference setting: TDS (5.29 M parameters), batch 32, 4 s windows with 0.9 s + 0.1 s of padding.

Printed, side by side from one invocation:

* the loop's throughput: EMG-seconds per wall-second, counted in *labelled* window seconds (4 s per
  window, as the reference's 9.4 EMG-s/s = 32 x 4 s / 13.6 s) -- the median over logged steps after
  the first two, so start-up and the final validation are left out;
* the training loss every few steps for each run, the mean |difference| of the per-step losses
  (fp32 vs bf16, and fp32 vs fp32 with another seed), and the final validation loss.

A PNG of the curves and ``precision.json`` go to ``--out``. The corpus is a small synthetic one unless
``--data`` names a data root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emgscale.common import atomic_write_json, hardware  # noqa: E402
from emgscale.config import build_config  # noqa: E402
from emgscale.train import TrainConfig, train  # noqa: E402


def _corpus(out: Path, data: str | None) -> Path:
    """``data``, or a small synthetic corpus under ``out`` (made once)."""
    from emgscale.synth import SynthConfig, ensure_corpus

    if data:
        return Path(data)
    return ensure_corpus(SynthConfig(out=str(out / "data"), users=3, sessions_per_user=6, minutes=1.0,
                                     heldout_users=1))


def run_one(root: Path, split: Path, out_dir: Path, model: str, steps: int, batch_size: int, bf16: bool,
            seed: int, lr: float, threads: int = 0) -> dict[str, Any]:
    """Train ``steps`` steps; returns per-step losses, loop throughput (labelled EMG-s/s) and val loss."""
    cfg = build_config(TrainConfig, [str(ROOT / "emgscale" / "configs" / "models" / f"{model}.yaml")], [
        f"data.data_root={root}", f"data.split={split}", f"data.batch_size={batch_size}",
        f"run.out_dir={out_dir}", "run.max_epochs=1", f"run.steps_per_epoch={steps}", "run.log_every_steps=1",
        "run.ckpt_every_steps=0", "run.val_max_batches=2", "run.tensorboard=false", f"run.bf16={str(bf16).lower()}",
        f"run.seed={seed}", f"run.threads={threads}", f"optim.lr={lr}", "optim.warmup_epochs=0.2"])
    res = train(cfg)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    w = cfg.data.window
    labelled = w.window_samples / (w.window_samples + w.pad_left_samples + w.pad_right_samples)
    rates = [r["emg_s_per_s"] * labelled for r in rows if "emg_s_per_s" in r]
    rates = rates[2:] or rates
    return {"bf16": bf16, "seed": seed, "losses": losses, "emg_s_per_s": statistics.median(rates),
            "val_loss": res.history[-1]["val_loss"], "wall_s": res.wall_s}


def _plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, r in runs.items():
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=f"{name} ({r['emg_s_per_s']:.1f} EMG-s/s)")
    ax.set_xlabel("step")
    ax.set_ylabel("training CTC loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("fp32 vs bf16 autocast, same seed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tds", help="config under configs/models/ (default: the paper's TDS)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1501)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--noise", action="store_true", help="add an fp32 run with another seed (the noise level)")
    p.add_argument("--out", default="runs/bench_precision")
    p.add_argument("--data", default=None, help="data root (default: a small synthetic corpus)")
    p.add_argument("--split", default=None, help="split YAML (default <data>/splits/single_user.yaml)")
    a = p.parse_args(argv)
    out = Path(a.out)
    root = _corpus(out, a.data)
    split = Path(a.split) if a.split else root / "splits" / "single_user.yaml"
    plan = {"fp32": (False, a.seed), "bf16": (True, a.seed)}
    if a.noise:
        plan["fp32, seed+1"] = (False, a.seed + 1)
    runs = {name: run_one(root, split, out / name.replace(", ", "_").replace("+", "p"), a.model, a.steps,
                          a.batch_size, bf16, seed, a.lr, a.threads)
            for name, (bf16, seed) in plan.items()}
    ref = runs["fp32"]

    def mad(r: dict[str, Any]) -> float:
        return statistics.fmean(abs(x - y) for x, y in zip(ref["losses"], r["losses"]))

    print(f"# {hardware()}")
    print(f"# {a.model}, batch {a.batch_size}, {a.steps} steps, lr {a.lr}, {a.threads or 'default'} threads, "
          "the training loop (emgscale.train)")
    names = list(runs)
    print("step  " + "".join(f"{n:>16}" for n in names))
    every = max(1, a.steps // 10)
    for i in range(0, a.steps, every):
        print(f"{i + 1:>4}  " + "".join(f"{runs[n]['losses'][i]:>16.4f}" for n in names))
    print(f"{'val':>4}  " + "".join(f"{runs[n]['val_loss']:>16.4f}" for n in names))
    print("EMG-s/s" + "".join(f"{runs[n]['emg_s_per_s']:>15.1f} " for n in names))
    for n in names[1:]:
        print(f"mean |loss - fp32 loss| per step, {n}: {mad(runs[n]):.4f}")
    print(f"bf16 / fp32 throughput: {runs['bf16']['emg_s_per_s'] / ref['emg_s_per_s']:.2f}x")
    _plot(runs, out / "precision.png")
    atomic_write_json(out / "precision.json", {"hardware": hardware(), "args": vars(a), "runs": runs})
    print(f"# wrote {out / 'precision.png'} and {out / 'precision.json'}")


if __name__ == "__main__":
    main()
