"""``python -m emgscale.fingers synth|split|pretrain|train|evaluate``: finger classification on a folder of CSVs.

Examples::

    python -m emgscale.fingers synth --out data/fingers --users 4 --sessions-per-user 5 --minutes 2
    python -m emgscale.fingers split data/fingers --out data/fingers/split.yaml
    python -m emgscale.fingers train data/fingers run.threads=2                      # -> runs/fingers
    python -m emgscale.fingers pretrain data/synth                                   # -> runs/fingers-pre
    python -m emgscale.fingers train data/fingers --minutes 1 --init-from runs/fingers-pre/checkpoints/last.pt   # -> runs/fingers-ft-1min
    python -m emgscale.fingers evaluate runs/fingers/checkpoints/best.pt data/fingers --confusion runs/fingers/cm.png
    python -m emgscale.fingers train ../shared/real-emg/libemg-myo-8ch-200hz --split loro.yaml \\
        data.csv.header=no data.csv.time_column=null data.csv.label_column=null 'data.csv.file_label=C_(\\d+)'

``train`` runs the one training loop on ``configs/fingers/train.yaml`` + a model file (default
``configs/fingers/cnn_gru_causal.yaml``) + any YAML and ``dotted.key=value`` given; the files' layout
is ``data.csv.*`` (see :class:`emgscale.data.tables.CSVFormat`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emgscale.cli import cli


def _split(a: argparse.Namespace) -> int:
    from emgscale.data.tables import make_split, write_split

    out = Path(a.out) if a.out else Path(a.data_root) / "split.yaml"
    split = make_split(a.data_root, a.val, a.test)
    write_split(split, out)
    print(f"{out}: " + ", ".join(f"{len(v)} {k}" for k, v in split.items()))
    return 0


def default_out(a: argparse.Namespace) -> str:
    """``runs/fingers``, with the variant in the name (``-ft`` / ``-frozen`` from a pre-trained model, ``-<N>min``),
    so that a fine-tune after a full run does not land in the full run's folder."""
    name = "runs/fingers" + ("-frozen" if a.freeze else "-ft" if a.init_from else "")
    return name + (f"-{a.minutes:g}min" if a.minutes is not None else "")


def _pretrain(a: argparse.Namespace) -> int:
    from emgscale.config import shipped_configs
    from emgscale.train.config import check_train_config, load_train_config

    configs = shipped_configs() / "fingers"
    files = [a.model or str(configs / "cnn_gru_causal.yaml"), str(configs / "pretrain.yaml")]  # CTC head wins
    files += [x for x in a.args if x.endswith((".yaml", ".yml"))]
    overrides = [x for x in a.args if not x.endswith((".yaml", ".yml"))]
    split = a.split or str(Path(a.data_root) / "splits" / "generic.yaml")
    cfg = check_train_config(load_train_config(files, [f"data.data_root={a.data_root}", f"data.split={split}",
                                                       f"run.out_dir={a.out}", *overrides]))  # before torch loads
    from emgscale.train.launch import launch

    result = launch(cfg, resume=a.resume)
    print(f"[fingers] pre-trained {result.steps} steps ({result.wall_s:.0f} s) on {a.data_root} seen as the armband; "
          f"fine-tune with: python -m emgscale.fingers train DATA --init-from {result.out_dir}/checkpoints/last.pt")
    return 0


def _train(a: argparse.Namespace) -> int:
    from emgscale.config import shipped_configs
    from emgscale.data.tables import make_split, write_split
    from emgscale.train.config import check_train_config, load_train_config

    configs = shipped_configs() / "fingers"
    files = [str(configs / "train.yaml"), a.model or str(configs / "cnn_gru_causal.yaml")]
    files += [x for x in a.args if x.endswith((".yaml", ".yml"))]
    overrides = [x for x in a.args if not x.endswith((".yaml", ".yml"))]
    a.out = a.out or default_out(a)
    split = a.split or str(Path(a.data_root) / "split.yaml")
    if not Path(split).is_file():
        split = str(write_split(make_split(a.data_root), Path(a.out) / "split.yaml"))
        print(f"[fingers] no split given: wrote {split} (per user: last file test, the one before val)")
    extra = [f"data.data_root={a.data_root}", f"data.split={split}", f"run.out_dir={a.out}"]
    if a.minutes is not None:
        extra.append(f"data.max_minutes_per_user={a.minutes}")
    if a.init_from:
        extra += [f"run.init_from={a.init_from}", "run.init_new_head=true"]
    if a.freeze:
        extra.append("run.freeze=[featurizer, frontend, encoder]")
    cfg = check_train_config(load_train_config(files, [*extra, *overrides]))  # a typo: before torch loads
    from emgscale.train.launch import launch

    result = launch(cfg, resume=a.resume)
    print(f"[fingers] best validation frame error {result.best_val_score:.2%} after {result.steps} steps "
          f"({result.wall_s:.0f} s); best checkpoint {result.best_checkpoint or result.last_checkpoint}")
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from emgscale.config import build_config, to_dict
    from emgscale.eval.inference import load_model
    from emgscale.fingers.evaluate import evaluate_recordings, plot_confusion
    from emgscale.data.tables import FINGER_CLASSES
    from emgscale.loader import DataConfig
    from emgscale.loader.csv import read_part

    model, cfg = load_model(a.checkpoint)
    data = replace(cfg.data, data_root=a.data_root or cfg.data.data_root, split=a.split or cfg.data.split,
                   max_minutes_per_user=None)
    data = build_config(DataConfig, [], [o.removeprefix("data.") for o in a.overrides], base=to_dict(data))
    res = evaluate_recordings(model, read_part(data, a.part))
    print(f"{a.part}: accuracy {res['accuracy']:.2%}, balanced accuracy {res['balanced_accuracy']:.2%}, "
          f"macro-F1 {res['macro_f1']:.2%} over {res['rows']} time points")
    for user, u in res["per_user"].items():
        print(f"  {user}: accuracy {u['accuracy']:.2%}, balanced {u['balanced_accuracy']:.2%}, F1 {u['macro_f1']:.2%}")
    if a.json:
        from emgscale.common import atomic_write_json

        atomic_write_json(a.json, res)
    if a.confusion:
        k = len(res["confusion"])
        names = list(FINGER_CLASSES) if k == len(FINGER_CLASSES) else [str(i) for i in range(k)]
        plot_confusion(res["confusion"], names, f"{Path(a.checkpoint).name} on {a.part}",
                       f"Data: {data.data_root} ({len(res['per_user'])} users); recall per true class (%).",
                       a.confusion)
    return 0


@cli("python -m emgscale.fingers")
def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the subcommand; returns the exit code (2 with one line on bad input)."""
    p = argparse.ArgumentParser(prog="python -m emgscale.fingers", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("synth", help="write a synthetic finger corpus (CSV); the same as python -m emgscale.synth "
                                 "fingers", add_help=False)
    s = sub.add_parser("split", help="write a split of a folder (per user: last file test, the one before val)")
    s.add_argument("data_root")
    s.add_argument("--out", help="split YAML (default <data_root>/split.yaml)")
    s.add_argument("--val", type=int, default=1, help="val files per user (default 1)")
    s.add_argument("--test", type=int, default=1, help="test files per user (default 1)")
    s = sub.add_parser("train", help="train a frame classifier on a folder of CSVs")
    s.add_argument("data_root")
    s.add_argument("--split", help="split YAML (default <data_root>/split.yaml, else one is made)")
    s.add_argument("--model", help="model YAML (default configs/fingers/cnn_gru_causal.yaml)")
    s.add_argument("--out", help="run folder (default runs/fingers, runs/fingers-ft-1min with --init-from and "
                                 "--minutes 1, ...)")
    s.add_argument("--minutes", type=float, help="use only the first N minutes of each user's data")
    s.add_argument("--init-from", help="pre-trained checkpoint: its weights, a new head")
    s.add_argument("--freeze", action="store_true", help="with --init-from: train only the head")
    s.add_argument("--resume", action="store_true", help="continue the run in --out")
    s.add_argument("args", nargs="*", help="more YAML files and dotted.key=value overrides")
    s = sub.add_parser("pretrain", help="pre-train on emg2qwerty-format keyboard data seen as the armband (CTC)")
    s.add_argument("data_root", help="a keyboard data root (HDF5 sessions), e.g. data/synth")
    s.add_argument("--split", help="split YAML (default <data_root>/splits/generic.yaml)")
    s.add_argument("--model", help="model YAML: the one the fine-tune will use (default "
                                   "configs/fingers/cnn_gru_causal.yaml)")
    s.add_argument("--out", default="runs/fingers-pre", help="run folder (default runs/fingers-pre)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out")
    s.add_argument("args", nargs="*", help="more YAML files and dotted.key=value overrides")
    s = sub.add_parser("evaluate", help="per-time-point scores of a checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("data_root", nargs="?", help="data folder (default: the one it was trained on)")
    s.add_argument("--split", help="split YAML (default: the one it was trained with)")
    s.add_argument("--part", default="test", choices=["train", "val", "test"])
    s.add_argument("--confusion", help="write the confusion matrix PNG here")
    s.add_argument("--json", help="write the scores as JSON here")
    s.add_argument("overrides", nargs="*", metavar="data.csv.key=value", help="the files' layout, if different")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["synth"]:
        from emgscale.synth.__main__ import fingers_main

        return fingers_main(argv[1:])
    if not argv or argv[0] not in sub.choices:
        p.parse_args(argv)  # help, or the error naming the subcommands
        return 2
    a = sub.choices[argv[0]].parse_intermixed_args(argv[1:])  # options may come after the overrides
    a.cmd = argv[0]
    return {"split": _split, "pretrain": _pretrain, "train": _train, "evaluate": _evaluate}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
