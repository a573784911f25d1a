"""The same data in microvolts, millivolts, volts and ADC counts: does every model family learn alike?

    python benchmarks/bench_units.py [--family keyboard,fingers,myo] [--steps 200] [--out bench_units]

For each family, copies one data set into each unit (:func:`emgscale.data.scale.rescaled_copy`), trains the
same recipe from the same seed on each copy through :func:`emgscale.train.launch` (which picks
``model.features.input_gain`` from the data), and prints the gain chosen and the accuracy reached — plus a
control row: the volt copy with the gain forced to 1, i.e. the front end as it was before the option (the
``log10(power + 1e-6)`` floor swamps the signal).

* ``keyboard``: the seeded synthetic corpus (``python -m emgscale.synth`` defaults, 6 users x 6 one-minute
  sessions, made under ``--out`` if absent), single-user split, CNN+BiGRU-small with the ``small`` budget's
  recipe; greedy window CER on val (lower is better).
* ``fingers``: the synthetic finger corpus (2 users x 4 sessions of 1 min), the causal finger model;
  per-time-point accuracy on the test files.
* ``myo``: the real LibEMG Myo recordings (``../shared/real-emg``, 8 integer channels at 200 Hz, 5 gestures
  x 4 repetitions), repetition 0 held out; per-time-point accuracy. Their own unit is counts; "V" is x 1e-5,
  the scale of the UCI Myo files that trained to chance before.

Synthetic data says nothing about real EMG beyond its units; the Myo rows are real but tiny (one subject).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIBEMG = ROOT.parent / "shared" / "real-emg" / "libemg-myo-8ch-200hz"
FINGERS = ROOT / "emgscale" / "configs" / "fingers"
#: unit -> (factor from the data's own unit, round to whole numbers)
UNITS = {"uV": (1.0, False), "mV": (1e-3, False), "V": (1e-6, False), "counts": (2.0, True)}
MYO_UNITS = {"counts": (1.0, False), "uV": (10.0, False), "mV": (1e-2, False), "V": (1e-5, False)}
QUIET = ["run.threads=1", "run.tensorboard=false", "run.bf16=false", "run.ckpt_every_steps=0"]


def _train(out: Path, files: list[Path], overrides: list[str]) -> tuple[float, dict]:
    from emgscale.models.checkpoint import load_checkpoint
    from emgscale.train import launch, load_train_config

    res = launch(load_train_config(files, [f"run.out_dir={out}", *QUIET, *overrides]), resume=out.exists())
    gain = load_checkpoint(res.last_checkpoint).config["model"]["features"]["input_gain"]
    return gain, {"result": res, "history": res.history}


def keyboard(out: Path, steps: int) -> list[dict]:
    from emgscale.data.scale import rescaled_copy
    from emgscale.synth import SynthConfig, generate_corpus

    src = out / "synth"
    if not (src / "splits" / "single_user.yaml").is_file():
        generate_corpus(SynthConfig(out=str(src)))
    rows = []
    recipe = ["data.batch_size=16", "optim.lr=5e-3", "optim.min_lr=1e-3", "optim.grad_clip=5",
              "optim.warmup_epochs=0.5", f"run.steps_per_epoch={steps}", "run.max_epochs=1", "run.val_max_batches=8",
              "loss.aux=keys", "loss.aux_weight=1", f"loss.aux_decay_steps={steps // 2}", "model.head_blank_prior=0.9"]
    cases = [(u, *UNITS[u], []) for u in UNITS] + [("V, gain forced to 1", 1e-6, False, ["model.features.input_gain=1"])]
    for name, factor, integer, extra in cases:
        root = out / "keyboard" / name.split(",")[0]
        if not root.is_dir():
            rescaled_copy(src, root, factor, integer)
        t0 = time.monotonic()
        gain, r = _train(out / "runs" / f"keyboard-{name.replace(' ', '_').replace(',', '')}",
                         [ROOT / "emgscale" / "configs" / "models" / "cnn_bigru_small.yaml"],
                         [f"data.data_root={root}", f"data.split={root / 'splits' / 'single_user.yaml'}", *recipe, *extra])
        rows.append({"family": "keyboard", "unit": name, "gain": gain, "metric": "val CER (greedy, windows)",
                     "value": r["result"].best_val_score, "minutes": (time.monotonic() - t0) / 60})
        print(rows[-1], flush=True)
    return rows


def _frame_accuracy(checkpoint: str) -> float:
    from emgscale.eval.inference import load_model
    from emgscale.fingers.evaluate import evaluate_recordings
    from emgscale.loader.csv import read_part

    model, cfg = load_model(checkpoint)
    return evaluate_recordings(model, read_part(cfg.data, "test"))["accuracy"]


def fingers(out: Path, steps: int, real: bool) -> list[dict]:
    from emgscale.data.scale import rescaled_copy
    from emgscale.data.tables import write_split
    from emgscale.synth.fingers import FingerSynthConfig, generate_fingers

    rows = []
    if real:
        src, units, columns, family = LIBEMG, MYO_UNITS, range(8), "myo (real)"
        layout = ["data.csv.header=no", "data.csv.time_column=null", "data.csv.label_column=null",
                  r"data.csv.file_label=C_(\d+)", "model.num_classes=5", "data.window.window_samples=400",
                  "data.window.stride_samples=50"]
        train = [f"R_{r}_C_*_EMG.csv" for r in (1, 2, 3)]
        split = out / "myo-split.yaml"
        write_split({"train": train, "val": train, "test": ["R_0_C_*_EMG.csv"]}, split)
    else:
        src, units, columns, family, layout = out / "fingers-src", UNITS, range(1, 9), "fingers (synthetic)", []
        if not (src / "split.yaml").is_file():
            generate_fingers(FingerSynthConfig(out=str(src), users=2, sessions_per_user=4, minutes=1.0))
        split = None
    cases = [(u, *units[u], []) for u in units] + [("V, gain forced to 1", units["V"][0], False,
                                                    ["model.features.input_gain=1"])]
    for name, factor, integer, extra in cases:
        root = out / family.split()[0] / name.split(",")[0]
        if not root.is_dir():
            rescaled_copy(src, root, factor, integer, table_columns=columns)
        t0 = time.monotonic()
        gain, r = _train(out / "runs" / f"{family.split()[0]}-{name.replace(' ', '_').replace(',', '')}",
                         [FINGERS / "train.yaml", FINGERS / "cnn_gru_causal.yaml"],
                         [f"data.data_root={root}", f"data.split={split or root / 'split.yaml'}",
                          f"run.max_steps={steps}", "run.max_epochs=3", f"run.steps_per_epoch={-(-steps // 3)}",
                          "data.batch_size=8", *layout, *extra])
        rows.append({"family": family, "unit": name, "gain": gain, "metric": "test accuracy per time point",
                     "value": _frame_accuracy(r["result"].last_checkpoint), "minutes": (time.monotonic() - t0) / 60})
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="keyboard,fingers,myo", help="comma list of keyboard, fingers, myo")
    p.add_argument("--steps", type=int, default=200, help="training steps per run (default 200)")
    p.add_argument("--out", default="bench_units", help="work folder (corpora, copies, runs; reused)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for fam in a.family.split(","):
        if fam == "keyboard":
            rows += keyboard(out, a.steps)
        elif fam in ("fingers", "myo"):
            if fam == "myo" and not LIBEMG.is_dir():
                print(f"[bench_units] {LIBEMG} not found: skipping the real Myo rows")
                continue
            rows += fingers(out, a.steps, real=fam == "myo")
        else:
            p.error(f"unknown family {fam!r}")
    print("\n| family | data in | input_gain chosen | metric | value | minutes |\n|---|---|--:|---|--:|--:|")
    for r in rows:
        print(f"| {r['family']} | {r['unit']} | {r['gain']:g} | {r['metric']} | {r['value']:.1%} | {r['minutes']:.1f} |")
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
