"""Benchmark results -> mean +/- population std over users (the paper's Table 3 layout), markdown, plots."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

COLUMNS = (("val", "greedy"), ("val", "lm"), ("test", "greedy"), ("test", "lm"))
#: Per-user metrics a CER row may carry beside ``cer`` (:mod:`emgscale.metrics`); aggregated like it, in the
#: results JSON only (the markdown tables keep their CER columns).
EXTRA_METRICS = ("insertion_rate", "deletion_rate", "substitution_rate", "rendered_cer")
#: Held while a figure is drawn and saved: pyplot's figure manager is one per process, and suites that run
#: side by side (:mod:`emgscale.bench.together`) render in threads of one process.
PLOT_LOCK = threading.Lock()


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


def markdown_table(agg: Sequence[dict[str, Any]], title: str, variant_header: str = "variant",
                   columns: dict[str, dict[str, str]] | None = None, order: Sequence[str] | None = None) -> str:
    """CER (%) mean +/- std over users, columns val/test x greedy/LM, and the +LM settings chosen on val.

    Args:
        columns: per variant, more cells (header -> text, e.g. ``params``, ``users``, ``status``) put after
            the variant; a variant with columns but no scores (``status``: not available) still gets its row.
            With a ``users`` column, it replaces the count of scores.
        order: the variants' order (default: ``agg``'s, then those only in ``columns``).
    """
    columns = columns or {}
    extra = list(dict.fromkeys(h for cells in columns.values() for h in cells if h not in ("users", "seeds", "status")))
    has_users = any("users" in c for c in columns.values())
    has_status = any("status" in c for c in columns.values())
    by_name = {r["variant"]: r for r in agg}
    names = list(order or []) + [v for v in [*by_name, *columns] if v not in (order or [])]
    names = list(dict.fromkeys(names))
    head = (f"| {variant_header} | " + "".join(f"{h} | " for h in extra)
            + "val CER (greedy) | val CER (+LM) | test CER (greedy) | test CER (+LM) | users | "
            + ("seeds | " if has_users else "") + "+LM weight / bonus (chosen on val) |"
            + (" status |" if has_status else ""))
    lines = [f"### {title}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for v in names:
        r = by_name.get(v, {"variant": v})
        c = columns.get(v, {})
        cells = []
        for part, dec in COLUMNS:
            k = f"{part}_{dec}"
            cells.append(f"{100 * r[k + '_mean']:.2f} ± {100 * r[k + '_std']:.2f}" if k + "_mean" in r else "–")
        n = max((r.get(f"{p}_{d}_n", 0) for p, d in COLUMNS), default=0)
        users = f"{c.get('users', '–')} | {c.get('seeds', '–')}" if has_users else f"{n}"
        lines.append(f"| {v} | " + "".join(f"{c.get(h, '–')} | " for h in extra) + " | ".join(cells)
                     + f" | {users} | {r.get('lm_setting', '–')} |" + (f" {c.get('status', '')} |" if has_status else ""))
    return "\n".join(lines) + "\n"


#: The caption's explanation of what a bar or point is, and why CER can pass 100 %.
CER_NOTE = ("mean over n users; error bars ± population std (none over one user). "
            "CER can exceed 100 %: insertions count as errors.")


def _yerr(std: Sequence[float], n: Sequence[int]) -> np.ndarray:
    """Error bars in %, NaN (none drawn) where a mean is over a single user."""
    return np.array([100 * s if k > 1 else np.nan for s, k in zip(std, n)], dtype=float)


def plot_lines(series: dict[str, tuple[list[float], list[float], list[float]]], xlabel: str, title: str,
               path: Path, logx: bool = False, data: str = "", users: Sequence[int] = (),
               ylabel: str = "CER (%)") -> Path:
    """:func:`lines_figure` saved as a PNG at ``path``; returns ``path``."""
    return _save(lines_figure(series, xlabel, title, logx, data, users, ylabel), path)


def lines_figure(series: dict[str, tuple[list[float], list[float], list[float]]], xlabel: str, title: str,
                 logx: bool = False, data: str = "", users: Sequence[int] = (), ylabel: str = "CER (%)") -> Any:
    """A figure with a line (mean, error bars = std over users) per series ``{name: (x, mean, std)}``; x ticks
    at the data's x values.

    Args:
        data: what the data is (:func:`emgscale.bench.runner.data_label`), shown in the title.
        users: users averaged at each x (error bars only over more than one).
        ylabel: what the y axis is, e.g. ``test CER (%), greedy and +LM`` (:func:`cer_axis_label`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for name, (x, mean, std) in series.items():
        n = list(users) or [2] * len(x)
        ax.errorbar(x, 100 * np.asarray(mean), yerr=_yerr(std, n), marker="o", capsize=3, label=name)
    if logx:
        ax.set_xscale("log")
    if series:
        data_ticks(ax, series[next(iter(series))][0])
    ax.set_xlabel(xlabel)
    n_text = f"n = {_users_text(users)} users per point; " if users else ""
    return _finish(fig, ax, ylabel, _title(title, data), grid_axis="both", caption=n_text + CER_NOTE)


def data_ticks(ax: Any, xs: Sequence[float], labels: Sequence[str] | None = None) -> None:
    """x ticks exactly at the data's x values, written as plain numbers (``0.5``, ``2``; no ``2^-1``) or as
    ``labels``; no minor ticks (a log axis would add unlabelled ones between them)."""
    import matplotlib.ticker

    xs = [float(x) for x in xs]
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(xs))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter(
        list(labels) if labels is not None else [f"{x:g}" for x in xs]))


def cer_axis_label(part: str, series: Sequence[str]) -> str:
    """The y axis of a CER plot: which sessions and which decoders, e.g. ``test CER (%), greedy and +LM``
    (series named ``<line>, <decoder>``, e.g. ``full, greedy``, name their decoder last; the legend tells the lines)."""
    decoders = list(dict.fromkeys(name.rsplit(", ", 1)[-1] for name in series))
    return f"{part} CER (%)" + (f", {' and '.join(decoders)}" if decoders else "")


#: Longest line of a bar's label before it wraps (labels stay horizontal and never overlap).
LABEL_WIDTH = 16


def bar_groups(agg: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], str, int]]:
    """What each aggregated row can show as bars: ``(row, part, users)``, its test sessions, else its val
    sessions (a row with val only, e.g. seen users' new sessions), with the users behind them; rows with
    neither are left out."""
    out = []
    for r in agg:
        for part in ("test", "val"):
            n = max(r.get(f"{part}_{d}_n", 0) for d in ("greedy", "lm"))
            if n:
                out.append((r, part, n))
                break
    return out


def plot_bars(agg: Sequence[dict[str, Any]], title: str, path: Path, data: str = "", missing: Sequence[str] = (),
              counts: str = "users") -> Path:
    """:func:`bars_figure` saved as a PNG at ``path``; returns ``path``."""
    return _save(bars_figure(agg, title, data, missing, counts), path)


def wrap_label(text: str, width: int = 16) -> str:
    """``text`` wrapped to lines of about ``width`` characters at spaces and after underscores, never inside
    a word (``student_no_teacher`` -> ``student_no_`` / ``teacher``)."""
    import textwrap

    return textwrap.fill(text.replace("_", "_ "), width, break_long_words=False).replace("_ ", "_")


def bars_figure(agg: Sequence[dict[str, Any]], title: str, data: str = "", missing: Sequence[str] = (),
                counts: str = "users") -> Any:
    """Grouped bars: CER greedy and +LM per variant on its test sessions, error bars = std over users (none
    over one). A variant with val sessions only (the seen users' new sessions) shows those, hatched and
    labelled ``val``; one with neither is left out and the caption says so.

    Args:
        data: what the data is (:func:`emgscale.bench.runner.data_label`), shown in the title.
        missing: variants with no scores at all (e.g. recipes not available): named in the caption.
        counts: what each bar's n counts (``users``; ``users x seeds`` where seeds are pooled).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = bar_groups(agg)
    names = [wrap_label(r["variant"], LABEL_WIDTH) + f"\n({part}, n={n})" for r, part, n in groups]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.35 * len(names) + 2.2), 4.8), dpi=120)
    for i, (dec, label) in enumerate((("greedy", "greedy"), ("lm", "+LM"))):
        mean = [100 * r.get(f"{part}_{dec}_mean", np.nan) for r, part, _ in groups]
        yerr = _yerr([r.get(f"{part}_{dec}_std", 0.0) for r, part, _ in groups],
                     [r.get(f"{part}_{dec}_n", 0) for r, part, _ in groups])
        bars = ax.bar(x + (i - 0.5) * 0.38, mean, 0.38, yerr=yerr, capsize=3, label=label, color=f"C{i}")
        for bar, (_, part, _) in zip(bars, groups):
            if part == "val":
                bar.set_hatch("//")
    ax.set_xticks(x, names, fontsize=8)
    users = [n for _, _, n in groups]
    parts = {part for _, part, _ in groups}
    left_out = [r["variant"] for r in agg if all(r is not g for g, _, _ in groups)] + list(missing)
    caption = (f"n = {_users_text(users)} {counts} per bar; "
               + ("bars on test sessions but hatched ones (val sessions: that row has no test sessions); "
                  if parts == {"test", "val"} else "")
               + (f"not shown (no scores): {', '.join(left_out)}; " if left_out else "") + CER_NOTE)
    ylabel = "CER (%), test sessions (val where hatched)" if len(parts) > 1 else f"{''.join(parts) or 'test'} CER (%)"
    from matplotlib.patches import Patch

    handles = [Patch(color=f"C{i}", label=label) for i, label in enumerate(("greedy", "+LM"))]
    if "val" in parts:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="val sessions"))
    return _finish(fig, ax, ylabel, _title(title, data), grid_axis="y", caption=caption, handles=handles)


def _title(title: str, data: str) -> str:
    return f"{title}\n({data})" if data else title


def _users_text(users: Sequence[int]) -> str:
    distinct = sorted(set(users))
    if not distinct:
        return "0"
    return str(distinct[0]) if len(distinct) == 1 else f"{distinct[0]}-{distinct[-1]}"


def _finish(fig: Any, ax: Any, ylabel: str, title: str, grid_axis: str, caption: str = "",
            handles: list[Any] | None = None) -> Any:
    """Label, legend (``handles``, default the plotted series; outside the axes, right of them: it never covers a
    bar or a point), caption and layout of a figure; returns it."""
    import textwrap

    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis=grid_axis, alpha=0.3)
    ax.legend(**({"handles": handles} if handles else {}), loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              fontsize=8)
    if caption:
        width = int(fig.get_size_inches()[0] * 14)
        text = textwrap.fill(caption, width)
        fig.text(0.01, 0.01, text, fontsize=7, va="bottom", ha="left")
        fig.tight_layout(rect=(0, 0.035 * (text.count("\n") + 1), 1, 1))
    else:
        fig.tight_layout()
    return fig


def _save(fig: Any, path: Path) -> Path:
    """Write a figure as a PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    from emgscale.common import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
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
