"""Run a benchmark end to end and write its JSON, markdown table and plots under one results folder."""

from __future__ import annotations

import importlib.resources
import time
from pathlib import Path
from typing import Any

import yaml

from emgscale.bench.budget import get_budget
from emgscale.bench.plan import planning
from emgscale.bench.report import PLOT_LOCK, aggregate, cer_axis_label, markdown_table, plot_bars, plot_lines, series_from
from emgscale.bench.steps import Corpus, default_cache, ensure_cached_corpus, ensure_lm
from emgscale.bench.suites import SUITES, BenchContext
from emgscale.common import atomic_write_json, atomic_write_text, git_commit, hardware, print0
from emgscale.config import shipped_configs

LM_TEXT_DIR = Path(__file__).resolve().parents[1] / "data" / "lm_text"


def default_lm_texts() -> list[Path]:
    """The LM text shipped with the package (disjoint from the synthetic corpus's prompts)."""
    return sorted(LM_TEXT_DIR.glob("*.txt"))


def shipped_definitions() -> Path:
    """The benchmark definitions shipped inside the package (``emgscale/bench/definitions/<name>.yaml``)."""
    return Path(str(importlib.resources.files("emgscale.bench") / "definitions"))


def load_definition(definitions_dir: Path, name: str, budget: str) -> dict[str, Any]:
    """``<definitions_dir>/<name>.yaml``; a ``budgets: {<budget>: {...}}`` section overrides the top level."""
    path = definitions_dir / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no benchmark definition (expected one of {sorted(SUITES)})")
    d = yaml.safe_load(path.read_text()) or {}
    d.update((d.pop("budgets", None) or {}).get(budget, {}))
    return d


def _lm(cache: Path, texts: list[Path] | None, order: int) -> Path | None:
    try:
        return ensure_lm(cache, texts or default_lm_texts(), order)
    except (FileNotFoundError, RuntimeError, ImportError) as e:
        print0(f"[bench] no language model ({e}); reporting greedy CER only")
        return None


def data_label(data_root: Path) -> str:
    """What a table or plot says its numbers come from, and no more than is known.

    ``synthetic data (emgscale.synth, seed S)`` when the root's ``synth_summary.json`` is the one
    ``python -m emgscale.synth`` writes (a ``config`` of :class:`~emgscale.synth.SynthConfig` fields with its
    seed, and a ``summary``); anything else is named by its data root's folder name, plus the dataset's own
    name where the data says it (a BIDS ``dataset_description.json`` ``Name``) or that its ``metadata.csv``
    has the emg2qwerty columns. Never "real data": a corpus from another generator would be called that.
    """
    import json

    root = Path(data_root)
    try:
        synth = json.loads((root / "synth_summary.json").read_text())
    except (OSError, ValueError):
        synth = None
    if _is_our_synth_summary(synth):
        return f"synthetic data (emgscale.synth, seed {synth['config']['seed']})"
    known = []
    try:
        name = json.loads((root / "dataset_description.json").read_text()).get("Name")
        if isinstance(name, str) and name.strip():
            known.append(f"dataset {name.strip()!r} (dataset_description.json)")
    except (OSError, ValueError, AttributeError):
        pass
    if not known and _has_emg2qwerty_metadata(root / "metadata.csv"):
        known.append("emg2qwerty-format metadata.csv")
    return f"data root {root.name!r}" + (f", {', '.join(known)}" if known else "")


def _is_our_synth_summary(obj: Any) -> bool:
    """True for the ``synth_summary.json`` :func:`emgscale.synth.generate_corpus` writes."""
    import dataclasses

    from emgscale.synth import SynthConfig

    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict) or not isinstance(obj.get("summary"), dict):
        return False
    fields = {f.name for f in dataclasses.fields(SynthConfig)}
    cfg = obj["config"]
    return "seed" in cfg and isinstance(cfg["seed"], int) and set(cfg) <= fields


def _has_emg2qwerty_metadata(path: Path) -> bool:
    """True when ``path`` is a CSV whose header has the columns emg2qwerty's metadata.csv has."""
    try:
        with open(path, newline="") as f:
            header = f.readline()
    except OSError:
        return False
    return {"user", "session", "duration_mins", "num_keystrokes"} <= {c.strip() for c in header.split(",")}


def _render(name: str, title: str, table: dict[str, Any], out: Path, data: str = "") -> tuple[str, list[str]]:
    agg = aggregate(table["rows"])
    md = markdown_table(agg, title, table.get("variant_header", "variant"), columns=table.get("columns"),
                        order=table.get("order"))
    if table.get("note"):
        md += f"\n_{table['note']}_\n"
    pngs = []
    for p in table.get("plots", []):
        path = out / f"{p['name']}.png"
        if p["kind"] == "bars":
            scored = {r["variant"] for r in agg}
            plot_bars(agg, title, path, data=data, counts=p.get("counts", "users"),
                      missing=[v for v in table.get("columns") or {} if v not in scored])
        else:
            users = [max(r.get(f"test_{d}_n", 0) for d in ("greedy", "lm")) for r in agg]
            series = series_from(agg, p["x"])
            plot_lines(series, p["xlabel"], p.get("title", title), path, logx=p.get("logx", False),
                       data=data, users=users, ylabel=cer_axis_label("test", list(series)))
        pngs.append(path.name)
    md += "\n" + "".join(f"![{n}]({n})\n" for n in pngs)
    return md, pngs


#: Suites that score something other than CER and render their own tables and plots.
SELF_RENDERED = ("fingers",)


def _render_tables(name: str, res: dict[str, Any], out_dir: Path, budget: str, lm_order: int, corpus: Corpus,
                   t0: float, generic_checkpoint: "str | Path | None" = None) -> tuple[str, dict[str, Any], float]:
    """Markdown, result tables and wall time of a CER suite's result."""
    tables = res.get("tables") or {name: res}
    md_parts, result_tables = [], {}
    for tname, table in tables.items():
        title = name.replace("_", " ") if tname == name else f"{name}: {tname.replace('_', ' ')}"
        root = Path(table.get("data_root") or corpus.data_root)  # a suite may use a corpus of its own
        with PLOT_LOCK:
            md, pngs = _render(tname, title, table, out_dir, data_label(root))
        md_parts.append(md)
        result_tables[tname] = {"rows": table["rows"], "aggregate": aggregate(table["rows"]), "plots": pngs,
                                **{k: table[k] for k in ("columns", "note", "data_root") if table.get(k)}}
    wall = time.monotonic() - t0
    root = Path(next(iter(tables.values()), {}).get("data_root") or corpus.data_root)
    note = (f"_CER in %, mean ± population std over users (the users column: how many); whole-session val/test; "
            f"+LM = beam search with a {lm_order}-gram character KenLM, LM weight / insertion bonus chosen on val; "
            f"CER can exceed 100 % (insertions count as errors). Budget `{budget}`, {data_label(root)} "
            f"at `{root}`, wall {wall / 60:.1f} min."
            + (f" Generic model: `{generic_checkpoint}` (given, not trained here)." if generic_checkpoint else "")
            + "_\n")
    return "\n".join(md_parts) + "\n" + note, result_tables, wall


def run_benchmark(name: str, *, out: "str | Path" = "results", budget: str = "small",
                  data_root: "str | Path | None" = None, splits_dir: "str | Path | None" = None,
                  cache: "str | Path | None" = None, definitions_dir: "str | Path | None" = None,
                  configs_dir: "str | Path | None" = None, lm_texts: list[Path] | None = None,
                  shard_workers: int = 1, jobs: int = 1, overrides: list[str] = (),
                  generic_checkpoint: "str | Path | None" = None,
                  definition_overrides: dict[str, Any] | None = None,
                  bids_metadata: "str | Path | None" = None, recipes: list[str] | None = None,
                  seeds: int | None = None, plan_only: bool = False) -> dict[str, Any]:
    """Run benchmark ``name`` and write ``<out>/<name>/{results.json, table.md, *.png}``
    (``<out>/zero_shot_recipes/`` for the recipes table).

    Args:
        name: one of single_user, zero_shot, personalized, few_shot, sweep, fingers.
        budget: tiny | small | paper.
        data_root, splits_dir: real (or any) data; default: the synthetic corpus of the budget. For
            ``fingers``, a folder of finger CSV recordings (else a synthetic finger corpus is made).
        bids_metadata: the ``metadata.csv`` a BIDS ``data_root`` was made from, when it has none.
        cache: where corpora, shards, LMs, checkpoints and evaluations are kept and reused (default: the
            user-level cache, :func:`emgscale.bench.steps.default_cache`, shared by every ``out``).
        definitions_dir, configs_dir: benchmark definitions and configs (default: the ones shipped in the
            package, :func:`shipped_definitions` and :func:`emgscale.config.shipped_configs`).
        lm_texts: text for the character LM (default: shipped LM text).
        shard_workers: shard-writing processes.
        jobs: independent training runs side by side (processes sharing the cores; Ray for more).
        overrides: extra ``dotted.key=value`` for every training run (e.g. ``run.workers=8``).
        generic_checkpoint: a generic model to start from instead of training one (an emgscale or a
            reference Lightning checkpoint such as Meta's ``generic.ckpt``): zero_shot evaluates it,
            personalized and few_shot fine-tune it (user models use its model config).
        definition_overrides: settings that replace the definition's (e.g. the demo's ``causal_arch: None``).
        recipes: zero_shot only: compare these recipes of the definition's ``recipes:`` in one table
            (:mod:`emgscale.bench.recipes`) instead of the default zero_shot table.
        seeds: training seeds per recipe (default: the definition's ``seeds``, else 1).
        plan_only: make the plan only (:mod:`emgscale.bench.plan`): the training runs the benchmark would
            make, ``{"planned": {plan id: (expected steps, rate key)}}``; corpora, shards and the LM are made,
            nothing is trained, evaluated or written to ``out``.

    Returns:
        The JSON result (rows, aggregated tables, settings, provenance).
    """
    if name not in SUITES:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(SUITES)}")
    if recipes and name != "zero_shot":
        raise ValueError(f"recipes compare generic models: give them to zero_shot, not {name}")
    if recipes and generic_checkpoint is not None:
        raise ValueError("--recipes trains its generic models; it does not take --generic-checkpoint")
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    t0 = time.monotonic()
    b = get_budget(budget)
    out_dir = Path(out) / (f"{name}_recipes" if recipes else name)
    cache = Path(cache) if cache else default_cache()
    definitions_dir = Path(definitions_dir) if definitions_dir else shipped_definitions()
    configs_dir = Path(configs_dir) if configs_dir else shipped_configs()
    if data_root is not None:
        corpus = Corpus(Path(data_root), Path(splits_dir) if splits_dir else Path(data_root) / "splits",
                        Path(bids_metadata) if bids_metadata else None)
    else:
        corpus = ensure_cached_corpus(cache, b.corpus)
    ctx = BenchContext(cache=cache, budget=b, corpus=corpus, configs_dir=configs_dir,
                       lm=_lm(cache, lm_texts, b.lm_order) if name not in SELF_RENDERED else None,
                       shard_workers=shard_workers,
                       jobs=jobs, overrides=list(overrides), out=out_dir,
                       generic_checkpoint=Path(generic_checkpoint) if generic_checkpoint else None,
                       synthetic_corpus=dict(b.corpus) if data_root is None else None)
    definition = {**load_definition(definitions_dir, name, budget), **(definition_overrides or {}),
                  **({"run_recipes": list(recipes)} if recipes else {}), **({"seeds": seeds} if seeds else {})}
    if plan_only:
        with planning() as planned:
            try:
                SUITES[name](ctx, definition)
            except Exception as e:  # a plan is an estimate: it never stops the benchmark (which reports the error)
                print0(f"[bench] planning {name} stopped early ({type(e).__name__}: {e}); the ETA counts the runs "
                       "planned before that")
        return {"benchmark": name, "planned": planned}
    print0(f"[bench] {name} (budget {budget}) on {corpus.data_root}; cache {cache}")
    res = SUITES[name](ctx, definition)
    out_dir.mkdir(parents=True, exist_ok=True)
    if name in SELF_RENDERED:  # not CER: the suite made its own table and plots in out_dir
        wall = time.monotonic() - t0
        result_tables = {name: {k: res[k] for k in ("rows", "aggregate", "plots")}}
        markdown = res["markdown"] + f"\n_Budget `{budget}`, wall {wall / 60:.1f} min._\n"
    else:
        markdown, result_tables, wall = _render_tables(name, res, out_dir, budget, b.lm_order, corpus, t0,
                                                       generic_checkpoint)
    data_root_used = Path(next((t["data_root"] for t in result_tables.values() if t.get("data_root")),
                               corpus.data_root))
    result = {"benchmark": name, "budget": budget, "definition": definition, "tables": result_tables,
              "data_root": str(data_root_used), "data": data_label(data_root_used), "lm": str(ctx.lm) if ctx.lm else None,
              "overrides": list(overrides), "jobs": jobs,
              "generic_checkpoint": str(generic_checkpoint) if generic_checkpoint else None, "git_commit": git_commit(), "hardware": hardware(), "wall_s": wall}
    atomic_write_json(out_dir / "results.json", result)
    atomic_write_text(out_dir / "table.md", markdown)
    print0(markdown)
    print0(f"[bench] {name}: table {out_dir / 'table.md'}, results {out_dir / 'results.json'}"
           + "".join(f", plot {out_dir / p}" for t in result_tables.values() for p in t["plots"]))
    return result
