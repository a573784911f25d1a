"""``bench zero_shot --recipes a,b,...``: one table comparing generic-model recipes on held-out users.

Each recipe is named in the zero_shot definition's ``recipes:`` section::

    recipes:
      s4d: {kind: train, arch: s4d}                          # configs/models/s4d<budget suffix>.yaml
      splashnet: {kind: train, config: recipes/splashnet, overrides: [...],
                  budgets: {tiny: {config: recipes/splashnet_mini}}}
      student: {kind: student, arch: cnn_gru_causal, teacher: reference}
      adapt: {kind: adapt, adapt_seconds: 30, teacher: reference}

Kinds:

* ``train``: a generic model trained (SWAD, the budget's generic settings, like zero_shot's) from the recipe's
  files: ``arch`` (``configs/models/<arch><suffix>.yaml``, else ``<arch>.yaml``; default the definition's
  ``arch``: the reference's) or ``config`` (a path under the configs folder, ``<config><suffix>.yaml`` else
  ``<config>.yaml``), then ``overrides``.
* ``student``: the same with ``loss.distill_from=<the teacher recipe's best checkpoint>`` (``teacher``,
  default ``reference``).
* ``adapt``: the teacher's model evaluated with unsupervised test-time adaptation
  (:func:`emgscale.eval.split_emissions` ``adapt_seconds``).

A recipe whose code or files are missing (a config file not there, ``loss.distill_from`` or ``adapt_seconds``
not in this version) becomes a row that says "not available" and why, in one line; the others still run.

Each row: parameters, forward MFLOPs per second of EMG and streaming look-ahead (ms, or "offline")
(:func:`emgscale.models.cost.model_cost`), val/test CER greedy and +LM as mean ± population std over
held-out users x seeds, how many users and seeds, and the mean training wall time of its runs.

Held-out users: at least ``recipes_heldout_users`` are evaluated (all of them where the budget caps none). On
the budget's synthetic corpus the table uses a corpus of its own, the budget's flags with ``heldout_users:
recipes_heldout_users`` (a separate, content-cached corpus; the default zero_shot table keeps the budget's).

Seeds: ``seeds`` in the definition or ``--seeds N``: each trained recipe runs N times, seed ``i`` adding
``run.seed=<default + i>`` (seed 0 is the default run, shared with the zero_shot table's cache). With one
seed, pairs of recipes whose test CER differs by less than two standard deviations are named in the table's
note, with the command that reruns them with 3 seeds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emgscale.bench.context import BenchContext
from emgscale.bench.steps import ensure_cached_corpus
from emgscale.bench.parts import eval_rows, model_files, train_runs
from emgscale.common import print0
from emgscale.config import ConfigError
from emgscale.run_folder import RunFolder

KINDS = ("train", "student", "adapt")
#: Definition keys a recipe may have.
RECIPE_KEYS = {"kind", "arch", "config", "overrides", "teacher", "adapt_seconds", "budgets", "about"}


class RecipeUnavailable(Exception):
    """A recipe cannot run in this version or with these files; the message is the one line its row shows."""


@dataclass
class Recipe:
    """One recipe of the definition, resolved for a budget (see the module docstring)."""

    name: str
    kind: str
    arch: str | None = None
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    teacher: str = "reference"
    adapt_seconds: float = 30.0
    about: str = ""


def parse_recipes(d: dict[str, Any], names: list[str], budget: str) -> list[Recipe]:
    """The named recipes of a definition, with their ``budgets: {<budget>: {...}}`` settings applied.

    Raises:
        ConfigError: a name not in the definition's ``recipes:``, an unknown key or kind (one line each).
    """
    known = d.get("recipes") or {}
    out = []
    for name in names:
        if name not in known:
            raise ConfigError(f"zero_shot.yaml recipes: no recipe {name!r}; choose from {', '.join(known)}")
        spec = dict(known[name] or {})
        spec.update((spec.pop("budgets", None) or {}).get(budget, {}) or {})
        unknown = set(spec) - RECIPE_KEYS
        if unknown:
            raise ConfigError(f"zero_shot.yaml recipes.{name}: unknown keys {sorted(unknown)}; "
                              f"expected {sorted(RECIPE_KEYS)}")
        kind = spec.get("kind", "train")
        if kind not in KINDS:
            raise ConfigError(f"zero_shot.yaml recipes.{name}.kind: {kind!r}; choose from {', '.join(KINDS)}")
        if spec.get("arch") and spec.get("config"):
            raise ConfigError(f"zero_shot.yaml recipes.{name}: give arch or config, not both")
        if not float(spec.get("adapt_seconds", 30.0)) > 0:
            raise ConfigError(f"zero_shot.yaml recipes.{name}.adapt_seconds must be > 0")
        out.append(Recipe(name=name, kind=kind, arch=spec.get("arch"), config=spec.get("config"),
                          overrides=[str(o) for o in spec.get("overrides") or []],
                          teacher=str(spec.get("teacher", "reference")),
                          adapt_seconds=float(spec.get("adapt_seconds", 30.0)), about=str(spec.get("about", ""))))
    return out


def recipe_files(ctx: BenchContext, r: Recipe, default_arch: str) -> list[str]:
    """The model/recipe config files of a trained recipe (see the module docstring).

    Raises:
        RecipeUnavailable: its file is not there.
    """
    if r.config:
        base = ctx.configs_dir / r.config
        for path in (Path(f"{base}{ctx.budget.model_suffix}.yaml"), Path(f"{base}.yaml")):
            if path.is_file():
                return [str(path)]
        raise RecipeUnavailable(f"not available: no {base}.yaml (nor {base.name}{ctx.budget.model_suffix}.yaml)")
    try:
        files = model_files(ctx, r.arch or default_arch)
    except FileNotFoundError as e:
        raise RecipeUnavailable(f"not available: {e}") from None
    return files if isinstance(files, list) else [files]


def _has_distillation() -> bool:
    from emgscale.train.loss_config import LossConfig

    return "distill_from" in {f.name for f in dataclasses.fields(LossConfig)}


def _has_adaptation() -> bool:
    import inspect

    from emgscale.eval import split_emissions

    return "adapt_seconds" in inspect.signature(split_emissions).parameters


def recipes_context(ctx: BenchContext, d: dict[str, Any]) -> BenchContext:
    """The context of the recipes table: at least ``recipes_heldout_users`` held-out users evaluated (all where the
    budget caps none) and, on the budget's synthetic corpus, a corpus of its own with that many held-out users
    (see the module docstring)."""
    want = int(d.get("recipes_heldout_users", 0) or 0)
    if not want:
        return ctx
    limit = ctx.budget.max_heldout_users
    budget = dataclasses.replace(ctx.budget, max_heldout_users=0 if not limit else max(limit, want))
    if ctx.synthetic_corpus is None:
        return dataclasses.replace(ctx, budget=budget)
    flags = {**ctx.synthetic_corpus, "heldout_users": max(want, int(ctx.synthetic_corpus.get("heldout_users", 0)))}
    return dataclasses.replace(ctx, corpus=ensure_cached_corpus(ctx.cache, flags), budget=budget,
                               synthetic_corpus=flags)


def _wall_min(folder: RunFolder) -> float:
    from emgscale.bench.eta import read_json

    return float(read_json(folder.root / "DONE.json").get("wall_s") or 0.0) / 60.0


def _cost_cells(cost: dict[str, Any]) -> dict[str, str]:
    la = cost["lookahead_ms"]
    return {"params": f"{cost['params'] / 1e6:.2f} M", "MFLOPs / EMG-s": f"{cost['mflops_per_s']:.0f}",
            "look-ahead (ms)": "offline" if la is None else f"{la:.1f}"}


def compare_recipes(ctx: BenchContext, d: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate the recipes ``d["run_recipes"]`` (see the module docstring).

    Returns:
        ``{"tables": {"recipes": table}}``: the table's rows (one per user, part, decoder and seed), its
        ``columns`` (per recipe: params, MFLOPs / EMG-s, look-ahead, train wall, users, seeds, status), the
        recipes' ``order``, a ``note`` and the ``data_root`` it used.
    """
    from emgscale.models.cost import model_cost
    from emgscale.train import load_train_config
    from emgscale.train.config import RunConfig

    ctx = recipes_context(ctx, d)
    names = list(d["run_recipes"])
    budget_name = ctx.budget.name
    recipes = {r.name: r for r in parse_recipes(d, names, budget_name)}
    for r in list(recipes.values()):
        if r.kind in ("student", "adapt") and r.teacher not in recipes:
            recipes.update({t.name: t for t in parse_recipes(d, [r.teacher], budget_name)})  # trained, not shown
    seeds = int(d.get("seeds", 1) or 1)
    if seeds < 1:
        raise ConfigError(f"zero_shot seeds must be >= 1, got {seeds}")
    base_seed = RunConfig().seed
    split = ctx.corpus.split(d.get("train_split", "generic"))
    heldout = ctx.heldout()
    generic_extra = [f"swad.mode={d.get('swad', 'swad')}", *ctx.budget.generic]
    default_arch = d.get("arch", "tds")
    seed_extra = [[] if i == 0 else [f"run.seed={base_seed + i}"] for i in range(seeds)]
    status: dict[str, str] = {}
    files: dict[str, list[str]] = {}

    def trainable(r: Recipe) -> list[str] | None:
        if r.name in status:
            return None
        try:
            if r.kind == "student" and not _has_distillation():
                raise RecipeUnavailable("not available: loss.distill_from is not in this version")
            files[r.name] = recipe_files(ctx, r, default_arch)
        except RecipeUnavailable as e:
            status[r.name] = str(e)
            return None
        return files[r.name]

    # 1. Models without a teacher (the teachers among them), every seed, ctx.jobs at a time.
    trained: dict[tuple[str, int], RunFolder] = {}
    first = [(r, i) for r in recipes.values() if r.kind == "train" and trainable(r) for i in range(seeds)]
    for (r, i), run in zip(first, train_runs(ctx, [(split, files[r.name], [*generic_extra, *r.overrides,
                                                                           *seed_extra[i]], None)
                                                   for r, i in first])):
        trained[(r.name, i)] = run
    # 2. Students, distilled from their teacher's best checkpoint of the same seed.
    second = []
    for r in recipes.values():
        if r.kind != "student" or not trainable(r):
            continue
        if (r.teacher, 0) not in trained:
            status[r.name] = f"not available: its teacher {r.teacher!r} is not a trained recipe here"
            continue
        second += [(r, i) for i in range(seeds)]
    for (r, i), run in zip(second, train_runs(ctx, [
            (split, files[r.name], [*generic_extra, *r.overrides, *seed_extra[i],
                                    f"loss.distill_from={trained[(r.teacher, i)].best}"], None) for r, i in second])):
        trained[(r.name, i)] = run
    # 3. Evaluation, costs and wall times of the named recipes, in the order given.
    rows: list[dict[str, Any]] = []
    columns: dict[str, dict[str, str]] = {}
    for name in names:
        r = recipes[name]
        cells: dict[str, str] = {}
        if r.kind == "adapt":
            if not _has_adaptation():
                status[name] = "not available: split_emissions(adapt_seconds=...) is not in this version"
            elif (r.teacher, 0) not in trained:
                status.setdefault(name, f"not available: its teacher {r.teacher!r} is not a trained recipe here")
        if name in status:
            columns[name] = {"status": status[name]}
            print0(f"[bench] recipe {name}: {status[name]}")
            continue
        source = r.teacher if r.kind == "adapt" else name
        options = {"adapt_seconds": r.adapt_seconds} if r.kind == "adapt" else None
        for i in range(seeds):
            ck = trained[(source, i)]
            for s in heldout:
                rows += [{**row, "seed": i} for row in eval_rows(ctx, ck.best, s, name, emission_options=options)]
        model_cfg = load_train_config(files[source], [*ctx.budget.train, *generic_extra,
                                                      *recipes[source].overrides]).model
        cells.update(_cost_cells(model_cost(model_cfg)))
        walls = [_wall_min(trained[(source, i)]) for i in range(seeds)]
        cells["users"] = str(len(heldout))
        cells["seeds"] = str(seeds)
        cells["train wall (min)"] = (f"{sum(walls) / len(walls):.1f}" + (f" ({r.teacher}'s)" if r.kind == "adapt"
                                                                         else ""))
        cells["status"] = f"adapted on {r.adapt_seconds:g} s per user" if r.kind == "adapt" else "ok"
        columns[name] = cells
    note = (f"Recipes: CER mean ± population std over {len(heldout)} held-out users x {seeds} seed(s) (pooled); "
            f"MFLOPs per second of EMG of one forward pass (emgscale.models.cost); look-ahead of a streaming "
            f"model, 'offline' where it reads the whole future; train wall: mean per run, on this machine. "
            + close_pairs_note(rows, names, seeds)).strip()
    table = {"rows": rows, "variant_header": "recipe", "columns": columns, "order": names, "note": note,
             "data_root": str(ctx.corpus.data_root), "plots": [{"kind": "bars", "name": "recipes", "counts": "users x seeds" if seeds > 1 else "users"}]}
    return {"tables": {"recipes": table}}


def close_pairs_note(rows: list[dict[str, Any]], names: list[str], seeds: int) -> str:
    """A line naming the pairs of recipes whose test CER (greedy) means differ by less than two standard
    deviations (the larger of the two), with the command that reruns them on 3 seeds; empty when none or when
    already on more than one seed."""
    from emgscale.bench.report import aggregate

    agg = {a["variant"]: a for a in aggregate(rows) if "test_greedy_mean" in a}
    close = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if a in agg and b in agg
             and abs(agg[a]["test_greedy_mean"] - agg[b]["test_greedy_mean"])
             < 2 * max(agg[a]["test_greedy_std"], agg[b]["test_greedy_std"])]
    if not close:
        return ""
    pairs = ", ".join(f"{a} / {b}" for a, b in close)
    if seeds > 1:
        return f"Within two std of each other (test CER, greedy) over {seeds} seeds x users: {pairs}."
    return (f"Within two std of each other (test CER, greedy, one seed): {pairs}; rerun with `--seeds 3` "
            f"to tell them apart.")
