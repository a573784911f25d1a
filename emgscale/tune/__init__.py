"""Hyper-parameter search on Ray Tune: every trial is one :func:`emgscale.train.launch` run.

``python -m emgscale.tune SEARCH.yaml [dotted.key=value ...]``

A search file names a base training config (YAML files and/or ``dotted.key=value`` overrides), a
search space over any dotted config field, the metric, an ASHA scheduler and the resources per trial::

    name: lr-and-arch
    out_dir: runs/tune/lr-and-arch
    base:
      files: [configs/tune/tiny-base.yaml]       # relative to the working directory
      overrides: [run.max_epochs=20]
    space:
      optim.lr: {loguniform: [1e-4, 3e-3]}       # also: uniform, randint [lo, hi), choice, grid
      model.arch: {choice: [tds, cnn_bigru]}
      swad.mode: {grid: [off, swad]}             # grid: every value, times num_samples
    num_samples: 8
    metric: val_cer                              # any metric train() reports at validation (ASHA uses it)
    mode: min
    # rank_by: swad_val_cer                      # optional: rank the table by the SWAD average instead
    scheduler: {type: asha, max_t: 20, grace_period: 2, reduction_factor: 3}   # in validations
    resources: {cpu: 1, gpu: 0}                  # per trial; fractions allowed, cpu > 0

Each trial trains in ``<out_dir>/trials/<trial_id>`` and reports every validation to Tune
(``ray.tune.report``), which ASHA uses to stop poor trials early. Results go to ``results.md``,
``results.csv`` and ``results.json`` in ``out_dir``, the best trial's full config to
``best_config.yaml`` (train it with ``python -m emgscale.train <out_dir>/best_config.yaml``).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emgscale.common import atomic_write_json, atomic_write_text
from emgscale.config import ConfigError, build_config, deep_merge, from_dict, save_config, to_dict

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass
class BaseSpec:
    """The training config every trial starts from: defaults, then ``files``, then ``overrides``."""

    files: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


@dataclass
class SchedulerSpec:
    """Trial scheduler. ASHA counts time in validations (one ``report`` per validation)."""

    type: str = "asha"  # asha | fifo
    max_t: int = 10
    grace_period: int = 1
    reduction_factor: float = 3.0


@dataclass
class ResourcesSpec:
    """Resources per trial (fractions allowed; ``cpu`` must be > 0)."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass
class SearchConfig:
    """A search: base config, space, metric, scheduler, resources (see the module docstring)."""

    name: str = "search"
    out_dir: str = "runs/tune/search"
    base: BaseSpec = field(default_factory=BaseSpec)
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    metric: str = "val_cer"
    mode: str = "min"  # min | max
    rank_by: str = ""  # the metric the results table ranks trials by (default: metric); swad_val_cer: the SWAD average's
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    max_concurrent_trials: int = 0  # 0 = as many as resources allow
    max_failures: int = 0  # retries per trial
    checkpoints: bool = False  # also hand each validation's checkpoint to Tune (costs a copy each)
    seed: int | None = None  # random sampling seed
    ray_address: str | None = None


@dataclass
class TuneResult:
    """What a search produced: one row per trial (best first) and the best trial."""

    out_dir: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    table_md: str


# ----------------------------------------------------------------------------- search space
def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Any:
    """The :class:`~emgscale.train.TrainConfig` of one trial: ``base`` with dotted ``params`` set."""
    from emgscale.train import TrainConfig

    return from_dict(TrainConfig, deep_merge(base, _nest(params)))


def parse_space(space: dict[str, Any], base: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Validate a search space against the training config; values come back in the field's type.

    Args:
        space: ``{dotted.key: {kind: arg}}`` with kind in grid | choice (a list of values), uniform |
            loguniform (``[lo, hi]``), randint (``[lo, hi)``); a bare value fixes the field.
        base: the base training config as a plain dict.

    Returns:
        ``{dotted.key: (kind, arg)}`` with kind ``"fixed"`` for bare values.

    Raises:
        ConfigError: unknown kind or key, a value the field does not accept, a bad range.
    """
    out: dict[str, tuple[str, Any]] = {}
    for key, spec in space.items():
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in KINDS:
                raise ConfigError(f"space.{key}: expected one of {{{' | '.join(KINDS)}: ...}}, got {spec!r}")
            kind, arg = next(iter(spec.items()))
        else:
            kind, arg = "fixed", spec

        if kind in ("grid", "choice"):
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"space.{key}.{kind}: expected a non-empty list, got {arg!r}")
            out[key] = (kind, [_checked(base, key, v) for v in arg])
        elif kind in ("uniform", "loguniform", "randint"):
            if not isinstance(arg, list) or len(arg) != 2:
                raise ConfigError(f"space.{key}.{kind}: expected [low, high], got {arg!r}")
            cast = int if kind == "randint" else float
            lo, hi = (cast(_checked(base, key, v)) for v in arg)
            if not lo < hi or (kind == "loguniform" and lo <= 0):
                need = "0 < low < high" if kind == "loguniform" else "low < high"
                raise ConfigError(f"space.{key}.{kind}: need {need}, got {arg!r}")
            out[key] = (kind, [lo, hi])
        else:
            out[key] = (kind, _checked(base, key, arg))
    return out


def _checked(base: dict[str, Any], key: str, value: Any) -> Any:
    """``value`` as field ``key`` of the training config holds it (raises ConfigError if it cannot)."""
    try:
        return _get(trial_config(base, {key: value}), key)
    except ConfigError as e:
        raise ConfigError(f"space.{key}: {e}") from None
    except AttributeError:
        raise ConfigError(f"space.{key}: not a config field") from None


def _tune_space(parsed: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a),
            "fixed": lambda a: a}
    return {key: make[kind](arg) for key, (kind, arg) in parsed.items()}


# ----------------------------------------------------------------------------- one trial
def _trial(params: dict[str, Any], *, base: dict[str, Any], out_dir: str, cwd: str, cpus: float,
           report_checkpoints: bool, metric: str = "val_cer") -> None:
    """A Tune trial: one :func:`emgscale.train.launch` run with the sampled params, reporting each
    validation to Tune; with SWAD on, a last report carries the averaged model's validation
    (``swad_val_cer``, ``swad_val_loss``) so a search can rank by it (``rank_by: swad_val_cer``)."""
    import ray.tune

    from emgscale.train import launch

    if os.path.isdir(cwd):
        os.chdir(cwd)  # relative data paths mean what they meant to the driver
    cfg = trial_config(base, params)
    cfg.run.out_dir = str(Path(out_dir) / "trials" / ray.tune.get_context().get_trial_id())
    if cfg.run.threads == 0:
        cfg.run.threads = max(1, int(cpus))

    def report(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        ckpt = (ray.tune.Checkpoint.from_directory(str(ckpt_dir))
                if report_checkpoints and ckpt_dir is not None else None)
        ray.tune.report(scalars, checkpoint=ckpt)

    restored = ray.tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            result = launch(cfg, resume=d, report=report)  # the folder stands for its last.pt
    else:
        result = launch(cfg, resume=True, report=report)  # a retried trial continues from its own last.pt
    if cfg.swad.mode != "off":
        try:
            swad = averaged_val_metrics(cfg.run.out_dir, device=cfg.run.device if cfg.run.device != "auto" else "cpu")
        except (ValueError, FileNotFoundError):  # no valley found: nothing averaged to rank
            return
        last = result.history[-1] if result.history else {}
        ray.tune.report({**{k: v for k, v in last.items() if isinstance(v, (int, float))},
                         "swad_val_cer": swad["val_cer"], "swad_val_loss": swad["val_loss"], metric: last.get(metric)})


def averaged_val_metrics(run: "str | Path", from_step: int | None = None, to_step: int | None = None,
                         device: str = "cpu", max_batches: int | None = None) -> dict[str, float]:
    """Validation loss and greedy CER of a run's SWAD/SWA-averaged model (what a trial is ranked by).

    Args:
        run: the training ``run.out_dir``.
        from_step, to_step: as :func:`emgscale.swad.posthoc.build_averaged_model`.
        device: where to run (outside a ``torch.distributed`` job: validation sums over ranks).
        max_batches: validation batches (default: the run's ``run.val_max_batches``; 0 = all).

    Returns:
        ``val_loss``, ``val_cer``, ``val_chars``, ``val_samples`` (as the loop's validation) and ``steps``.
    """
    import torch

    from emgscale.loader import build_loader
    from emgscale.swad.posthoc import build_averaged_model
    from emgscale.train import TrainConfig
    from emgscale.train.validation import validate

    avg = build_averaged_model(run, from_step, to_step, device=device)
    cfg = from_dict(TrainConfig, avg.config)
    val = build_loader(cfg.data, "val", train=False, seed=cfg.run.seed, rank=0, world_size=1,
                       features=avg.model.featurizer.cfg)
    limit = cfg.run.val_max_batches if max_batches is None else max_batches
    metrics = validate(avg.model, val, torch.device(device), max_batches=limit)
    return {**metrics, "steps": float(avg.steps)}


# ----------------------------------------------------------------------------- the search
def run_search(search: SearchConfig) -> TuneResult:
    """Run a search on Ray Tune and write its result tables.

    Args:
        search: the search (base config, space, metric, scheduler, resources).

    Returns:
        The :class:`TuneResult` (also written to ``results.{md,csv,json}`` in ``search.out_dir``).

    Raises:
        ConfigError: a bad search (unknown field, bad range, cpu <= 0, unknown scheduler...).
    """
    from emgscale.train.config import TrainConfig

    if search.mode not in ("min", "max"):
        raise ConfigError(f"mode must be min | max, got {search.mode!r}")
    if search.resources.cpu <= 0:  # Ray rejects {'cpu': 0}
        raise ConfigError(f"resources.cpu must be > 0 (fractions are fine), got {search.resources.cpu}")
    if search.scheduler.type not in ("asha", "fifo"):
        raise ConfigError(f"scheduler.type must be asha | fifo, got {search.scheduler.type!r}")
    if search.num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {search.num_samples}")
    base_cfg = build_config(TrainConfig, search.base.files, search.base.overrides)  # typos: before torch loads
    from emgscale.train.launch import connect, import_ray, ray_env, wants_ray

    if wants_ray(base_cfg) and not base_cfg.run.ray_address:
        raise ConfigError("each trial is one process: set resources.cpu/gpu, not run.workers / run.use_gpu, "
                          "for a search")
    base = to_dict(base_cfg)
    parsed = parse_space(search.space, base)
    if not parsed:
        raise ConfigError("space is empty: nothing to search")

    import_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    out_dir = Path(search.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    connect(search.ray_address)  # before with_parameters, which puts the base config in the object store
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=search.scheduler.max_t,
                               grace_period=search.scheduler.grace_period,
                               reduction_factor=search.scheduler.reduction_factor)
                 if search.scheduler.type == "asha" else FIFOScheduler())
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base, out_dir=str(out_dir), cwd=os.getcwd(),
                             cpus=search.resources.cpu, report_checkpoints=search.checkpoints, metric=search.metric),
        {"cpu": search.resources.cpu, "gpu": search.resources.gpu})
    tuner = tune.Tuner(
        trainable,
        param_space=_tune_space(parsed),
        tune_config=tune.TuneConfig(metric=search.metric, mode=search.mode, scheduler=scheduler,
                                    num_samples=search.num_samples,
                                    max_concurrent_trials=search.max_concurrent_trials or None,
                                    search_alg=BasicVariantGenerator(random_state=search.seed)),
        run_config=tune.RunConfig(name=f"{search.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(out_dir / "ray"),
                                  failure_config=tune.FailureConfig(max_failures=search.max_failures),
                                  verbose=1),
    )
    with ray_env(RAY_CHDIR_TO_TRIAL_DIR="0"):
        grid = tuner.fit()
    return write_results(search, parsed, base, grid, out_dir)


def _best_of(df: Any, metric: str, mode: str) -> float:
    if df is None or metric not in getattr(df, "columns", []):
        return math.nan
    values = [float(v) for v in df[metric].tolist() if v is not None and not math.isnan(float(v))]
    if not values:
        return math.nan
    return min(values) if mode == "min" else max(values)


def write_results(search: SearchConfig, parsed: dict[str, tuple[str, Any]], base: dict[str, Any], grid: Any,
                  out_dir: Path) -> TuneResult:
    """Tabulate a Tune ``ResultGrid``: one row per trial, ranked by its best ``metric`` over validations."""
    keys = list(parsed)
    rank = search.rank_by or search.metric
    rows: list[dict[str, Any]] = []
    for r in grid:
        m = r.metrics or {}
        row: dict[str, Any] = {"trial": m.get("trial_id") or Path(str(r.path)).name}
        row.update({k: r.config.get(k) for k in keys})
        row[f"best_{search.metric}"] = _best_of(r.metrics_dataframe, search.metric, search.mode)
        row[f"last_{search.metric}"] = m.get(search.metric, math.nan)
        if rank != search.metric:
            row[f"best_{rank}"] = _best_of(r.metrics_dataframe, rank, search.mode)
        row["validations"] = m.get("training_iteration", 0)
        row["step"] = m.get("step", 0)
        row["time_s"] = round(float(m.get("time_total_s", 0.0)), 1)
        row["error"] = "" if r.error is None else type(r.error).__name__ + ": " + str(r.error).splitlines()[0][:120]
        rows.append(row)
    sign = 1.0 if search.mode == "min" else -1.0
    best_col = f"best_{rank}"
    rows.sort(key=lambda r: (math.isnan(r[best_col]), sign * (0.0 if math.isnan(r[best_col]) else r[best_col])))
    best = None
    if rows and not math.isnan(rows[0][best_col]):
        params = {k: rows[0][k] for k in keys}
        cfg = trial_config(base, params)
        cfg.run.out_dir = str(out_dir / "best")  # where training the best config writes
        save_config(cfg, out_dir / "best_config.yaml")
        best = {"trial": rows[0]["trial"], "params": params, rank: rows[0][best_col],
                "config": to_dict(cfg)}
    columns = list(rows[0]) if rows else []
    md = _markdown(rows, columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    atomic_write_text(out_dir / "results.md", f"# Search {search.name}: {search.metric} ({search.mode})\n\n{md}\n")
    atomic_write_json(out_dir / "results.json", {"search": to_dict(search), "rows": rows, "best": best})
    return TuneResult(str(out_dir), rows, best, md)


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
