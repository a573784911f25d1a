"""The benchmarks: single_user, zero_shot, personalized, few_shot and sweep.

Each takes a :class:`BenchContext` and its definition (a YAML under ``benchmarks/``) and returns result
rows ``{"variant", "user", "part", "decoder", "cer"}`` (plus the rates and rendered CER of
:data:`~emgscale.bench.report.EXTRA_METRICS`) plus plot specs; :mod:`emgscale.bench.runner`
turns them into tables, JSON and PNGs. All training goes through :func:`emgscale.train.launch` and all
evaluation is whole-session, greedy and with the character LM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from emgscale.bench import plan
from emgscale.bench.context import BenchContext
from emgscale.bench.fingers import fingers
from emgscale.bench.parts import RunSpec, eval_rows, train_runs, train_runs_meanwhile
from emgscale.bench.recipes import compare_recipes
from emgscale.bench.steps import cached, content_key, content_sha256
from emgscale.common import print0
from emgscale.models.checkpoint import load_checkpoint
from emgscale.run_folder import RunFolder


def generic_spec(ctx: BenchContext, d: dict[str, Any], arch: str | None = None) -> RunSpec:
    """The generic (zero-shot) model's run: the definition's training split, with SWAD and the budget's
    generic settings."""
    return (ctx.corpus.split(d.get("train_split", "generic")), arch or d.get("arch", "tds"),
            [f"swad.mode={d.get('swad', 'swad')}", *ctx.budget.generic], None)


def generic_run(ctx: BenchContext, d: dict[str, Any], arch: str | None = None) -> RunFolder:
    """The generic (zero-shot) model's run folder, trained with SWAD."""
    return train_runs(ctx, [generic_spec(ctx, d, arch)])[0]


def generic_model(ctx: BenchContext, d: dict[str, Any]) -> tuple[Path, "str | list[str]"]:
    """The generic model's checkpoint file and the model config the user models train with
    (:func:`user_arch`): the given ``--generic-checkpoint``, or the one trained here."""
    if ctx.generic_checkpoint is None:
        return generic_run(ctx, d).best, user_arch(ctx, d)
    return ctx.generic_checkpoint, user_arch(ctx, d)


def user_arch(ctx: BenchContext, d: dict[str, Any]) -> "str | list[str]":
    """The model config the per-user models train with (known before any training): the definition's
    ``arch``, or a given ``--generic-checkpoint``'s own model config (so fine-tuning fits its weights)."""
    if ctx.generic_checkpoint is None:
        return d.get("arch", "tds")
    key = content_key({"checkpoint_sha256": content_sha256(ctx.generic_checkpoint)})

    def make(folder: Path) -> dict[str, Any]:
        from emgscale.common import atomic_write_text
        from emgscale.config import to_dict

        model = {"model": to_dict(load_checkpoint(ctx.generic_checkpoint).model_config())}
        atomic_write_text(folder / "model.yaml", yaml.safe_dump(model, sort_keys=False))
        return {"model_yaml": str(folder / "model.yaml")}

    _, res = cached(ctx.cache, "given", key, make, f"same checkpoint (sha256) as {ctx.generic_checkpoint}")
    return [res["model_yaml"]]


def _has_average(path: Path) -> bool:
    return not plan.is_planning() and load_checkpoint(path).averaged_model is not None


def single_user(ctx: BenchContext, d: dict[str, Any]) -> dict[str, Any]:
    """Train and test on one subject's split, one model per architecture."""
    split = ctx.corpus.split(d.get("split", "single_user"))
    rows = []
    for arch, ck in zip(d["archs"], train_runs(ctx, [(split, arch, [], None) for arch in d["archs"]])):
        rows += eval_rows(ctx, ck.best, split, arch)
    return {"rows": rows, "variant_header": "architecture", "plots": [{"kind": "bars", "name": "cer_by_arch"}]}


def zero_shot(ctx: BenchContext, d: dict[str, Any]) -> dict[str, Any]:
    """Generic model on held-out users never seen in training: final, best and SWAD-averaged weights;
    for comparison, the best-val weights on new (val) sessions of its training users; and, with
    ``causal_arch``, a causal generic model (what a real-time system can run) next to the offline one.

    With ``run_recipes`` (``--recipes a,b``): instead, one table comparing those generic-model recipes
    (:func:`emgscale.bench.recipes.compare_recipes`)."""
    if d.get("run_recipes"):
        return compare_recipes(ctx, d)
    if ctx.generic_checkpoint is not None:
        given, _ = generic_model(ctx, d)
        rows = eval_rows(ctx, given, ctx.corpus.split(d.get("train_split", "generic")),
                         "given model: seen users, new sessions", parts=("val",))
        for split in ctx.heldout():
            rows += eval_rows(ctx, given, split, f"given model ({given.name})")
        return {"rows": rows, "variant_header": "generic model", "plots": [{"kind": "bars", "name": "zero_shot"}]}
    # The offline and the causal generic models train side by side (ctx.jobs at a time), then are evaluated.
    ck, *causal = train_runs(ctx, [generic_spec(ctx, d)] + ([generic_spec(ctx, d, d["causal_arch"])]
                                                            if d.get("causal_arch") else []))
    rows = eval_rows(ctx, ck.best, ctx.corpus.split(d.get("train_split", "generic")),
                     "seen users, new sessions (best val)", parts=("val",))
    for split in ctx.heldout():
        rows += eval_rows(ctx, ck.last, split, "final checkpoint")
        rows += eval_rows(ctx, ck.best, split, "best val checkpoint")
        if _has_average(ck.last):
            rows += eval_rows(ctx, ck.last, split, "SWAD average", which="averaged")
        else:
            print0("[bench] SWAD found no loss valley in this budget: no averaged model to report")
    if causal:
        for split in ctx.heldout():
            rows += eval_rows(ctx, causal[0].best, split, f"causal {d['causal_arch']} (best val)")
    return {"rows": rows, "variant_header": "generic model", "plots": [{"kind": "bars", "name": "zero_shot"}]}


def finetune_modes(d: dict[str, Any], minutes: list[float] | None = None) -> dict[str, list[float]]:
    """The definition's ``finetune`` axis as ``{mode: minutes}``: a list of modes (each at every amount in
    ``minutes``), or a mapping mode -> its amounts (cheap budgets try the cheap modes only where they may win);
    ``[full]`` when the definition has none.

    Raises:
        ValueError: an unknown mode, or (with ``minutes``) an amount the definition's ``minutes`` lacks.
    """
    from emgscale.train.finetune_config import FINETUNE_MODES

    axis = d.get("finetune") or ["full"]
    every = list(minutes or [0.0])
    modes = {str(m): every for m in axis} if isinstance(axis, list) else {
        str(m): [float(x) for x in (xs if xs is not None else every)] for m, xs in axis.items()}
    for mode, xs in modes.items():
        if mode not in FINETUNE_MODES:
            raise ValueError(f"finetune mode {mode!r} unknown; choose from {', '.join(FINETUNE_MODES)}")
        if minutes is not None and not set(xs) <= set(every):
            raise ValueError(f"finetune: {mode} at {sorted(set(xs) - set(every))} min, not in minutes {every}")
    return modes


def budget_finetune_steps(ctx: BenchContext) -> int | None:
    """The budget's fine-tune steps (``run.max_epochs`` x ``run.steps_per_epoch`` of its ``finetune``
    overrides), taken by :func:`~emgscale.train.finetune_config.finetune_schedule` as those of 2 minutes of
    data; None when the budget counts epochs over the data (no ``run.steps_per_epoch``: ``paper``)."""
    vals = dict(o.split("=", 1) for o in (*ctx.budget.train, *ctx.budget.finetune) if "=" in o)
    if int(vals.get("run.steps_per_epoch", 0) or 0) <= 0:
        return None
    return int(vals.get("run.max_epochs", 1)) * int(vals["run.steps_per_epoch"])


def split_train_minutes(ctx: BenchContext, split_file: Path) -> float:
    """Minutes of EMG in a split's training sessions (what a personalized fine-tune learns from)."""
    from emgscale.data.errors import DataError
    from emgscale.data.source import open_session
    from emgscale.data.splits import DataRoot, load_split

    root, meta = ctx.corpus.data_root, ctx.corpus.bids_metadata
    names = [r.session for r in load_split(split_file)["train"]]
    try:
        paths = DataRoot(root, meta).paths(names, split_file)
    except DataError:
        paths = [Path(root) / f"{n}.hdf5" for n in names]
    seconds = 0.0
    for path in paths:
        with open_session(path, meta) as session:
            seconds += session.duration_s
    return seconds / 60.0


def finetune_overrides(ctx: BenchContext, d: dict[str, Any], minutes: float, mode: str) -> list[str]:
    """The overrides of one fine-tune: :func:`~emgscale.train.finetune_config.finetune_schedule` at this
    budget (they follow the budget's own fine-tune overrides, so they win), then the definition's
    ``finetune_overrides`` (fine-tunes only, unlike the command line's, which reach every run: e.g.
    ``[run.steps_per_epoch=100, optim.lr=3e-3, finetune.layer_decay=0.7]`` to try a longer fine-tune)."""
    from emgscale.train.finetune_config import finetune_schedule

    return [*finetune_schedule(minutes, mode, budget_finetune_steps(ctx)), *map(str, d.get("finetune_overrides", []))]


def personalized(ctx: BenchContext, d: dict[str, Any]) -> dict[str, Any]:
    """Per held-out user: zero-shot generic, from random init, and fine-tuned from the generic model in each
    mode of the definition's ``finetune`` axis (full, frontend, lora), steps and rate by the user's minutes."""
    splits = ctx.heldout()
    modes = list(finetune_modes(d))
    # The random-init runs need no generic model: they go to the job pool (suites side by side) before this
    # suite waits for it, so a core is not left idle while the generic model trains.
    scratch = train_runs_meanwhile(ctx, [(split, user_arch(ctx, d), [], None) for split in splits])
    generic, arch = generic_model(ctx, d)
    specs: list[RunSpec] = [(split, arch, finetune_overrides(ctx, d, split_train_minutes(ctx, split), m), generic)
                            for split in splits for m in modes]
    tuned = iter(train_runs(ctx, specs))
    rows = []
    for split, random_init in zip(splits, scratch()):
        rows += eval_rows(ctx, generic, split, "generic (zero-shot)")
        rows += eval_rows(ctx, random_init.best, split, "personalized, random init")
        for mode in modes:
            rows += eval_rows(ctx, next(tuned).best, split, f"personalized, fine-tuned generic, {mode}")
    return {"rows": rows, "variant_header": "model", "plots": [{"kind": "bars", "name": "personalized"}]}


def few_shot(ctx: BenchContext, d: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the generic model on 30 s .. 5 min of a held-out user's data, in each mode of the
    definition's ``finetune`` axis (rows "1 min, lora"); test on that user. The plot has a line per mode
    (greedy and +LM), each from the generic model at 0 min."""
    generic, arch = generic_model(ctx, d)
    minutes = [float(m) for m in d["minutes"]]
    modes = finetune_modes(d, minutes)
    points = [(m, mode) for m in minutes for mode in modes if m in modes[mode]]
    splits = ctx.heldout()
    cks = iter(train_runs(ctx, [(split, arch, [f"data.max_minutes_per_user={m}", *finetune_overrides(ctx, d, m, mode)],
                                 generic) for split in splits for m, mode in points]))
    rows = []
    for split in splits:
        rows += eval_rows(ctx, generic, split, "0 min")
        for m, mode in points:
            rows += eval_rows(ctx, next(cks).best, split, f"{m:g} min, {mode}")
    lines = {mode: {"0 min": 0.0, **{f"{m:g} min, {mode}": m for m in minutes if m in xs}}
             for mode, xs in modes.items()}
    return {"rows": rows, "variant_header": "user data for fine-tuning",
            "plots": [{"kind": "lines", "name": "cer_vs_minutes", "x": lines,
                       "xlabel": "minutes of the user's data", "title": "Few-shot fine-tuning"}]}


SWEEP_AXES = {
    # 16 channels is the default (all electrodes): no override, so that point shares the baseline's run.
    "channels": ("channels per band", lambda v: [] if int(v) == 16 else
                 [f"model.features.channels={list(range(0, 16, 16 // int(v)))}"]),
    "sample_rate_hz": ("sampling rate (Hz)", lambda v: [f"model.features.sample_rate_hz={float(v)}"]),
    "minutes": ("minutes of training data per user", lambda v: [f"data.max_minutes_per_user={float(v)}"]),
    "arch": ("architecture", None),
    # Preprocessing and augmentation (course direction 2). Categorical values are plotted as bars.
    # Default values (log_spectrogram, batch, default) add no override, so they share the baseline's run.
    "features": ("features", lambda v: [] if v == "log_spectrogram" else [f"model.features.kind={v}"]),
    "norm": ("normalisation", lambda v: [] if v == "batch" else [f"model.features.norm={v}"]),
    "augment": ("augmentation", lambda v: augment_overrides(str(v))),
    # 4 s is the default (the baseline's run); other window lengths than the shards' are read straight
    # from the HDF5 sessions.
    "window_s": ("training window (s)", lambda v: [] if float(v) == 4.0 else [
        "data.shards=null", f"data.window.window_samples={int(round(float(v) * 2000))}"]),
}

#: ``augment`` sweep values: the default augmentations (band rotation, inter-band jitter, SpecAugment), each
#: one left out, none, and the two that are off by default switched on.
AUGMENT_VARIANTS: dict[str, list[str]] = {
    "default": [],
    "none": ["model.augment.band_rotation=0", "model.augment.temporal_jitter_samples=0",
             "model.augment.time_masks=0", "model.augment.freq_masks=0"],
    "no_band_rotation": ["model.augment.band_rotation=0"],
    "no_jitter": ["model.augment.temporal_jitter_samples=0"],
    "no_specaugment": ["model.augment.time_masks=0", "model.augment.freq_masks=0"],
    "+amplitude": ["model.augment.amplitude_scale=0.25"],
    "+channel_mask": ["model.augment.channel_mask_prob=0.1"],
}


def augment_overrides(value: str) -> list[str]:
    """Overrides of an ``augment`` sweep value (a key of :data:`AUGMENT_VARIANTS`)."""
    if value not in AUGMENT_VARIANTS:
        raise ValueError(f"sweep augment value {value!r} unknown; choose from {sorted(AUGMENT_VARIANTS)}")
    return AUGMENT_VARIANTS[value]


def sweep(ctx: BenchContext, d: dict[str, Any]) -> dict[str, Any]:
    """CER against channels per band, sampling rate, amount of data, architecture, features, normalisation,
    augmentations and window length (personalized, random init).

    Every run of every axis is trained first (``ctx.jobs`` at a time; points that equal the baseline
    share its run), then evaluated. ``max_users`` in the definition caps the held-out users.
    """
    for axis in d["axes"]:
        if axis not in SWEEP_AXES:
            raise ValueError(f"sweep axis {axis!r} unknown; choose from {sorted(SWEEP_AXES)}")
    splits = ctx.heldout()[: int(d["max_users"])] if d.get("max_users") else ctx.heldout()
    points = [(axis, v, split) for axis, values in d["axes"].items() for v in values for split in splits]

    def spec(axis: str, v: Any, split: Path) -> RunSpec:
        to_overrides = SWEEP_AXES[axis][1]
        arch = str(v) if axis == "arch" else d.get("arch", "tds")
        return split, arch, [] if to_overrides is None else to_overrides(v), None

    cks = dict(zip([(a, str(v), s) for a, v, s in points], train_runs(ctx, [spec(*p) for p in points])))
    tables = {}
    for axis, values in d["axes"].items():
        label = SWEEP_AXES[axis][0]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)
        rows = [r for v in values for split in splits
                for r in eval_rows(ctx, cks[(axis, str(v), split)].best, split, f"{v}")]
        tables[axis] = {"rows": rows, "variant_header": label,
                        "plots": [{"kind": "lines" if numeric else "bars", "name": f"cer_vs_{axis}",
                                   "x": [float(x) for x in values] if numeric else None,
                                   "xlabel": label, "title": f"CER vs {label}", "logx": numeric}]}
    return {"tables": tables}


SUITES = {"single_user": single_user, "zero_shot": zero_shot, "personalized": personalized,
          "few_shot": few_shot, "sweep": sweep}
SUITES["fingers"] = fingers  # frame-level finger classification (emgscale.bench.fingers): renders its own tables
