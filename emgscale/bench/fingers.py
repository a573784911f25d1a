"""The ``fingers`` benchmark: per-time-point finger classification on held-out sessions, from scratch vs
pre-trained on keyboard data, against minutes of the user's own data.

Target data: when ``--data-root`` is a folder of CSV/TSV recordings (the course's format, or any
:class:`~emgscale.data.tables.CSVFormat` given by ``data.csv.*`` overrides) it is used; otherwise a
synthetic finger corpus (:mod:`emgscale.synth.fingers`, the definition's ``synth`` settings) is made in
the cache. Per user: the last ``test_sessions`` files are test, the ``val_sessions`` before them val,
the rest train (``make_split``).

Pre-training: the keyboard corpus (the benchmark's synthetic emg2qwerty corpus, or the definition's
``pretrain_data_root`` / ``pretrain_split``) as an 8-channel 200 Hz right band
(``configs/fingers/pretrain.yaml``), CTC over the keys, one model shared by every user; its last
weights are fine-tuned.

Variants per user and amount of data (``minutes`` plus ``all``): ``scratch`` (random init),
``pretrained`` (pre-trained encoder, new 6-class head, everything fine-tuned), ``frozen`` (pre-trained
featurizer/front end/encoder kept fixed, only the head trained). Every run is the same number of steps
(``configs/fingers/train.yaml`` + the definition's ``train``), ``best.pt`` by validation frame error on
the first minutes of the val session. Scores: accuracy, balanced accuracy and macro-F1 per time point
on the user's whole test sessions; mean ± std over users. Plots: accuracy vs minutes, and the confusion
matrix of ``confusion_variant`` with all data; their captions say which data and how many users.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from emgscale.bench import plan
from emgscale.bench.context import BenchContext
from emgscale.bench.report import PLOT_LOCK
from emgscale.bench.steps import cached, content_key, content_sha256, data_key, ensure_cached_corpus, ensure_shards
from emgscale.bench.training import ensure_trained_many
from emgscale.common import print0
from emgscale.data.tables import FINGER_CLASSES, make_split, table_files, write_split
from emgscale.models.checkpoint import load_checkpoint
from emgscale.run_folder import RunFolder

FROZEN = ["featurizer", "frontend", "encoder"]
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _target(ctx: BenchContext, d: dict[str, Any]) -> tuple[Path, bool]:
    """The finger data root and whether it is synthetic."""
    root = Path(ctx.corpus.data_root)
    if table_files(root) and not any(root.glob("*.hdf5")):
        return root, False
    from emgscale.config import from_dict
    from emgscale.synth.fingers import FingerSynthConfig, generate_fingers

    flags = dict(d.get("synth") or {})

    def make(folder: Path) -> dict[str, Any]:
        generate_fingers(from_dict(FingerSynthConfig, {**flags, "out": str(folder / "fingers")}))
        return {"root": str(folder / "fingers")}

    _, res = cached(ctx.cache, "fingers_corpus", content_key({"fingers_synth": flags}), make)
    return Path(res["root"]), True


def _pretrain_run(ctx: BenchContext, d: dict[str, Any], model_file: str) -> tuple[list[str], list[str]]:
    """Config files and overrides of the shared pre-training run."""
    if d.get("pretrain_data_root"):
        data_root, split = Path(d["pretrain_data_root"]), Path(d["pretrain_split"])
    else:
        corpus = (ctx.corpus if not table_files(ctx.corpus.data_root)
                  else ensure_cached_corpus(ctx.cache, ctx.budget.corpus))
        data_root, split = corpus.data_root, corpus.split(d.get("pretrain_split_name", "generic"))
    shards = ensure_shards(ctx.cache, data_root, split, shard_workers=ctx.shard_workers)
    files = [model_file, str(ctx.configs_dir / "fingers" / "pretrain.yaml")]
    return files, [f"data.data_root={data_root}", f"data.split={split}", f"data.shards={shards}",
                   *d.get("pretrain", []), *ctx.overrides]


def _train_minutes(root: Path, split_file: Path, csv_overrides: list[str]) -> float:
    from emgscale.config import build_config
    from emgscale.loader import DataConfig
    from emgscale.loader.csv import read_part

    cfg = build_config(DataConfig, [], [o.removeprefix("data.") for o in csv_overrides],
                       base={"format": "csv", "data_root": str(root), "split": str(split_file)})
    return sum(r.duration_s for r in read_part(cfg, "train")) / 60.0


def _evaluate(ctx: BenchContext, checkpoint: Path, root: Path, split_file: Path) -> dict[str, Any]:
    """Test-session scores of one checkpoint (cached)."""
    key = content_key({"checkpoint_sha256": content_sha256(checkpoint), "data": data_key(root, split_file, "csv")})

    def make(_: Path) -> dict[str, Any]:
        from dataclasses import replace

        from emgscale.eval.inference import load_model
        from emgscale.fingers.evaluate import evaluate_recordings
        from emgscale.loader.csv import read_part

        model, cfg = load_model(checkpoint)
        recs = read_part(replace(cfg.data, data_root=str(root), split=str(split_file)), "test")
        return evaluate_recordings(model, recs)

    return cached(ctx.cache, "fingers_eval", key, make, "same checkpoint (sha256), split and files")[1]


def fingers(ctx: BenchContext, d: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns rows, aggregates, markdown and plots."""
    root, synthetic = _target(ctx, d)
    configs = ctx.configs_dir / "fingers"
    model_file = str(configs / f"{d.get('arch', 'cnn_gru_causal')}.yaml")
    variants = list(d.get("variants", ["scratch", "pretrained", "frozen"]))
    csv_overrides = [o for o in ctx.overrides if o.startswith("data.csv.")]
    full = make_split(root, int(d.get("val_sessions", 1)), int(d.get("test_sessions", 1)))
    users = sorted({Path(p).parts[0] if len(Path(p).parts) > 1 else root.name for p in full["test"]})
    users = users[: int(d["max_users"])] if d.get("max_users") else users
    split_dir = Path(ctx.cache) / "fingers_splits" / _short(root)
    splits = {u: write_split(make_split(root, int(d.get("val_sessions", 1)), int(d.get("test_sessions", 1)),
                                        users=[u]), split_dir / f"{u}.yaml") for u in users}
    pre = None
    if any(v != "scratch" for v in variants):
        pre_files, pre_overrides = _pretrain_run(ctx, d, model_file)
        # Its last weights: near the CTC blank plateau, validation CER (what best.pt is chosen by) does not
        # rank encoders, and the last ones have seen the most data.
        pre = RunFolder(ensure_trained_many(ctx.cache, [(pre_files, pre_overrides)], 1)[0]).last
    train_files = [str(configs / "train.yaml"), model_file]
    points: list[tuple[str, str, float, list[str]]] = []  # (user, minutes label, x, overrides)
    for u in users:
        have = _train_minutes(root, splits[u], csv_overrides)
        for m in [float(m) for m in d.get("minutes", [0.5, 1, 2, 5])]:
            if m < have:
                points.append((u, f"{m:g}", m, [f"data.max_minutes_per_user={m}"]))
        points.append((u, "all", have, []))
    runs, keys = [], []
    for u, label, x, extra in points:
        base = [*d.get("train", []), f"data.data_root={root}", f"data.split={splits[u]}", *extra]
        for v in variants:
            init = [] if v == "scratch" else [f"run.init_from={pre}", "run.init_new_head=true", *d.get("finetune", [])]
            frozen = [f"run.freeze={FROZEN}"] if v == "frozen" else []
            runs.append((train_files, [*base, *init, *frozen, *ctx.overrides]))
            keys.append((v, u, label, x))
    folders = ensure_trained_many(ctx.cache, runs, ctx.jobs)
    if plan.is_planning():  # the planning pass evaluates nothing (emgscale.bench.plan)
        return {}
    rows = []
    for (v, u, label, x), folder in zip(keys, folders):
        best = RunFolder(folder).best
        res = _evaluate(ctx, best, root, splits[u])
        rows.append({"variant": v, "user": u, "minutes": label, "x": x, **{k: res[k] for k in METRICS},
                     "confusion": res["confusion"], "steps": load_checkpoint(best).step})
    with PLOT_LOCK:
        return render(rows, ctx.out, synthetic=synthetic, root=root, users=len(users),
                      confusion_variant=d.get("confusion_variant", variants[-1] if len(variants) < 3 else "pretrained"))


def _short(root: Path) -> str:
    from emgscale.bench.steps import config_hash

    return config_hash(str(Path(root).resolve()))


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and population std over users of each metric, per (variant, minutes), in order of appearance."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["variant"], r["minutes"])].append(r)
    out = []
    for (v, m), rs in groups.items():
        row = {"variant": v, "minutes": m, "x": float(np.mean([r["x"] for r in rs])), "users": len(rs)}
        for k in METRICS:
            row[f"{k}_mean"], row[f"{k}_std"] = float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))
        out.append(row)
    return out


def render(rows: list[dict[str, Any]], out: Path | None, *, synthetic: bool, root: Path, users: int,
           confusion_variant: str) -> dict[str, Any]:
    """Markdown table, accuracy-vs-minutes and confusion PNGs (when ``out`` is set) of the rows."""
    agg = aggregate(rows)
    data = (f"synthetic finger corpus (emgscale.synth.fingers), {users} users" if synthetic
            else f"{root} ({users} users)")
    lines = ["### fingers: per-time-point accuracy on held-out sessions", "",
             "| variant | user data (min) | accuracy | balanced accuracy | macro-F1 | users |", "|---|---|---|---|---|---|"]
    for r in agg:
        cells = [f"{100 * r[k + '_mean']:.1f} ± {100 * r[k + '_std']:.1f}" for k in METRICS]
        lines.append(f"| {r['variant']} | {r['minutes']} | " + " | ".join(cells) + f" | {r['users']} |")
    caption = f"Data: {data}; mean ± std over users; whole test sessions, every time point scored."
    lines += ["", f"_{caption}_", ""]
    plots = []
    if out is not None:
        from emgscale.fingers.evaluate import plot_confusion

        Path(out).mkdir(parents=True, exist_ok=True)
        plots.append(_plot_minutes(agg, Path(out) / "accuracy_vs_minutes.png", caption).name)
        conf = [r for r in rows if r["variant"] == confusion_variant and r["minutes"] == "all"]
        if conf:
            total = np.sum([np.asarray(r["confusion"]) for r in conf], axis=0)
            names = list(FINGER_CLASSES) if len(total) == len(FINGER_CLASSES) else [str(i) for i in range(len(total))]
            plots.append(plot_confusion(total, names, f"{confusion_variant}, all of the user's data",
                                        f"Data: {data}; test sessions pooled; recall per true class (%).",
                                        Path(out) / "confusion.png").name)
        lines += [f"![{p}]({p})" for p in plots]
    return {"rows": rows, "aggregate": agg, "markdown": "\n".join(lines) + "\n", "plots": plots, "data": data}


def _plot_minutes(agg: list[dict[str, Any]], path: Path, caption: str) -> Path:
    import matplotlib.pyplot as plt

    from emgscale.common import atomic_path

    fig = minutes_figure(agg, caption)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    print0(f"[bench] wrote {path}")
    return path


def minutes_figure(agg: list[dict[str, Any]], caption: str) -> Any:
    """Accuracy against minutes of the user's data, one line per variant: a log minutes axis with its ticks at
    the data's minutes written as such (``0.5``, ``1``, ``2``, ``5``, ``all (7.3)``), the legend outside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emgscale.bench.report import data_ticks

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ticks: dict[float, str] = {}
    for v in dict.fromkeys(r["variant"] for r in agg):
        rs = sorted((r for r in agg if r["variant"] == v), key=lambda r: r["x"])
        ax.errorbar([r["x"] for r in rs], [100 * r["accuracy_mean"] for r in rs],
                    yerr=[100 * r["accuracy_std"] for r in rs], marker="o", capsize=3, label=v)
        for r in rs:
            ticks.setdefault(round(r["x"], 6), f"all\n({r['x']:.2g})" if r["minutes"] == "all" else f"{r['x']:g}")
    ax.set_xscale("log")
    xs = sorted(ticks)
    data_ticks(ax, xs, [ticks[x] for x in xs])
    ax.set_xlabel("minutes of the user's training data (last point: all of it, mean over users)")
    ax.set_ylabel("per-time-point accuracy (%)")
    ax.set_title("Finger classification vs amount of data", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
