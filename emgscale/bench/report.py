"""Benchmark results -> mean +/- population std over users (the paper's Table 3 layout), markdown, plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

COLUMNS = (("val", "greedy"), ("val", "lm"), ("test", "greedy"), ("test", "lm"))
#: Per-user metrics a CER row may carry beside ``cer`` (:mod:`emgscale.metrics`); aggregated like it, in the
#: results JSON only (the markdown tables keep their CER columns).
EXTRA_METRICS = ("insertion_rate", "deletion_rate", "substitution_rate", "rendered_cer")


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group result rows by (variant, part, decoder) and take mean and population std over users.

    Each input row is ``{"variant", "user", "part", "decoder", "cer"}``, optionally with the
    :data:`EXTRA_METRICS`; ``variant`` keeps its order of first appearance. Output keys:
    ``<part>_<decoder>_mean`` / ``_std`` / ``_n`` for the CER, ``<part>_<decoder>_<metric>_mean`` / ``_std``
    for each extra metric every row of the group has.
    """
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    extra: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    settings: dict[str, list[str]] = defaultdict(list)
    order: list[str] = []
    for r in rows:
        if r["variant"] not in order:
            order.append(r["variant"])
        groups[(r["variant"], r["part"], r["decoder"])].append(float(r["cer"]))
        for m in EXTRA_METRICS:
            if m in r:
                extra[(r["variant"], r["part"], r["decoder"], m)].append(float(r[m]))
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
                for m in EXTRA_METRICS:
                    mvals = extra.get((v, part, dec, m))
                    if mvals and len(mvals) == len(vals):
                        row[f"{part}_{dec}_{m}_mean"] = float(np.mean(mvals))
                        row[f"{part}_{dec}_{m}_std"] = float(np.std(mvals))
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


#: The caption's explanation of what a bar or point is, and why CER can pass 100 %.
CER_NOTE = ("mean over n users; error bars ± population std (none over one user). "
            "CER can exceed 100 %: insertions count as errors.")


def _yerr(std: Sequence[float], n: Sequence[int]) -> np.ndarray:
    """Error bars in %, NaN (none drawn) where a mean is over a single user."""
    return np.array([100 * s if k > 1 else np.nan for s, k in zip(std, n)], dtype=float)


def plot_lines(series: dict[str, tuple[list[float], list[float], list[float]]], xlabel: str, title: str,
               path: Path, logx: bool = False, data: str = "", users: Sequence[int] = ()) -> Path:
    """One PNG with a line (mean, error bars = std over users) per series ``{name: (x, mean, std)}``.

    Args:
        data: what the data is (e.g. ``synthetic data``), shown in the title.
        users: users averaged at each x (error bars only over more than one).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for name, (x, mean, std) in series.items():
        n = list(users) or [2] * len(x)
        ax.errorbar(x, 100 * np.asarray(mean), yerr=_yerr(std, n), marker="o", capsize=3, label=name)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(series[next(iter(series))][0])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel(xlabel)
    n_text = f"n = {_users_text(users)} users per point; " if users else ""
    return _finish(fig, ax, "CER (%)", _title(title, data), path, grid_axis="both", caption=n_text + CER_NOTE)


def plot_bars(agg: Sequence[dict[str, Any]], title: str, path: Path, data: str = "") -> Path:
    """Grouped bars: test CER greedy and +LM per variant, error bars = std over users (none over one).

    Args:
        data: what the data is (e.g. ``synthetic data``), shown in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [max(r.get(f"test_{d}_n", 0) for d in ("greedy", "lm")) for r in agg]
    names = [f"{r['variant']}\n(n={n})" for r, n in zip(agg, users)]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) + 2), 4.4), dpi=120)
    for i, (dec, label) in enumerate((("greedy", "greedy"), ("lm", "+LM"))):
        mean = [100 * r.get(f"test_{dec}_mean", np.nan) for r in agg]
        yerr = _yerr([r.get(f"test_{dec}_std", 0.0) for r in agg], [r.get(f"test_{dec}_n", 0) for r in agg])
        ax.bar(x + (i - 0.5) * 0.38, mean, 0.38, yerr=yerr, capsize=3, label=label)
    ax.set_xticks(x, names, rotation=20, ha="right")
    caption = f"n = {_users_text(users)} users per bar; " + CER_NOTE
    return _finish(fig, ax, "test CER (%)", _title(title, data), path, grid_axis="y", caption=caption)


def _title(title: str, data: str) -> str:
    return f"{title} ({data})" if data else title


def _users_text(users: Sequence[int]) -> str:
    distinct = sorted(set(users))
    return str(distinct[0]) if len(distinct) == 1 else f"{distinct[0]}-{distinct[-1]}"


def _finish(fig: Any, ax: Any, ylabel: str, title: str, path: Path, grid_axis: str, caption: str = "") -> Path:
    """Label, legend, caption and save a figure as PNG, then close it."""
    import textwrap

    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis=grid_axis, alpha=0.3)
    ax.legend()
    if caption:
        width = int(fig.get_size_inches()[0] * 14)
        fig.text(0.01, 0.01, textwrap.fill(caption, width), fontsize=7, va="bottom", ha="left")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def series_from(agg: Sequence[dict[str, Any]], xs: "Sequence[float] | dict[str, dict[str, float]]",
                part: str = "test") -> dict[str, tuple]:
    """Greedy and +LM series over ``xs`` (one aggregated row per x, in order) for :func:`plot_lines`; with
    ``xs`` a mapping ``{line: {variant: x}}``, those two series per line (``"full, greedy"``), each of the
    named rows."""
    if isinstance(xs, dict):
        by_name = {r["variant"]: r for r in agg}
        return {f"{line}, {dec}": s for line, points in xs.items()
                for dec, s in series_from([by_name[v] for v in points if v in by_name],
                                          [x for v, x in points.items() if v in by_name], part).items()}
    out = {}
    for dec, label in (("greedy", "greedy"), ("lm", "+LM")):
        key = f"{part}_{dec}"
        if all(key + "_mean" in r for r in agg):
            out[label] = (list(xs), [r[key + "_mean"] for r in agg], [r[key + "_std"] for r in agg])
    return out
