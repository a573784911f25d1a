"""Benchmark results -> mean +/- population std over users (the paper's Table 3 layout), markdown, plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

COLUMNS = (("val", "greedy"), ("val", "lm"), ("test", "greedy"), ("test", "lm"))


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group result rows by (variant, part, decoder) and take mean and population std over users.

    Each input row is ``{"variant", "user", "part", "decoder", "cer"}``; ``variant`` keeps its order of
    first appearance.
    """
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    settings: dict[str, list[str]] = defaultdict(list)
    order: list[str] = []
    for r in rows:
        if r["variant"] not in order:
            order.append(r["variant"])
        groups[(r["variant"], r["part"], r["decoder"])].append(float(r["cer"]))
        if "lm_weight" in r:
            text = f"{r['lm_weight']:g} / {r['insertion_bonus']:g}"
            if text not in settings[r["variant"]]:
                settings[r["variant"]].append(text)
    out = []
    for v in order:
        row: dict[str, Any] = {"variant": v}
        if settings[v]:
            row["lm_setting"] = ", ".join(settings[v])  # LM weight / insertion bonus chosen on val
        for part, dec in COLUMNS:
            vals = groups.get((v, part, dec))
            if vals:
                row[f"{part}_{dec}_mean"] = float(np.mean(vals))
                row[f"{part}_{dec}_std"] = float(np.std(vals))  # population std, as the paper
                row[f"{part}_{dec}_n"] = len(vals)
        out.append(row)
    return out


def markdown_table(agg: Sequence[dict[str, Any]], title: str, variant_header: str = "variant") -> str:
    """CER (%) mean +/- std over users, columns val/test x greedy/LM, and the +LM settings chosen on val."""
    head = (f"| {variant_header} | val CER (greedy) | val CER (+LM) | test CER (greedy) | test CER (+LM) | users "
            f"| +LM weight / bonus (chosen on val) |")
    lines = [f"### {title}", "", head, "|---|---|---|---|---|---|---|"]
    for r in agg:
        cells = []
        for part, dec in COLUMNS:
            k = f"{part}_{dec}"
            cells.append(f"{100 * r[k + '_mean']:.2f} ± {100 * r[k + '_std']:.2f}" if k + "_mean" in r else "–")
        n = max((r.get(f"{p}_{d}_n", 0) for p, d in COLUMNS), default=0)
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {n} | {r.get('lm_setting', '–')} |")
    return "\n".join(lines) + "\n"


def plot_lines(series: dict[str, tuple[list[float], list[float], list[float]]], xlabel: str, title: str,
               path: Path, logx: bool = False) -> Path:
    """One PNG with a line (mean, error bars = std over users) per series ``{name: (x, mean, std)}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for name, (x, mean, std) in series.items():
        ax.errorbar(x, 100 * np.asarray(mean), yerr=100 * np.asarray(std), marker="o", capsize=3, label=name)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(series[next(iter(series))][0])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel(xlabel)
    return _finish(fig, ax, "CER (%)", title, path, grid_axis="both")


def plot_bars(agg: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """Grouped bars: test CER greedy and +LM per variant, error bars = std over users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in agg]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) + 2), 3.8), dpi=120)
    for i, (dec, label) in enumerate((("greedy", "greedy"), ("lm", "+LM"))):
        mean = [100 * r.get(f"test_{dec}_mean", np.nan) for r in agg]
        std = [100 * r.get(f"test_{dec}_std", 0.0) for r in agg]
        ax.bar(x + (i - 0.5) * 0.38, mean, 0.38, yerr=std, capsize=3, label=label)
    ax.set_xticks(x, names, rotation=20, ha="right")
    return _finish(fig, ax, "test CER (%)", title, path, grid_axis="y")


def _finish(fig: Any, ax: Any, ylabel: str, title: str, path: Path, grid_axis: str) -> Path:
    """Label, legend and save a figure as PNG, then close it."""
    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis=grid_axis, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def series_from(agg: Sequence[dict[str, Any]], xs: Sequence[float], part: str = "test") -> dict[str, tuple]:
    """Greedy and +LM series over ``xs`` (one aggregated row per x, in order) for :func:`plot_lines`."""
    out = {}
    for dec, label in (("greedy", "greedy"), ("lm", "+LM")):
        key = f"{part}_{dec}"
        if all(key + "_mean" in r for r in agg):
            out[label] = (list(xs), [r[key + "_mean"] for r in agg], [r[key + "_std"] for r in agg])
    return out
