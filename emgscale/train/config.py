"""The training config (typed dataclasses with defaults in code) and what a run returns.

``TrainConfig`` nests ``data`` (:class:`~emgscale.loader.DataConfig`), ``model``
(:class:`~emgscale.models.ModelConfig`), ``loss`` (:class:`LossConfig`),
``optim``, ``run``, ``swad`` and ``finetune`` (:class:`~emgscale.train.finetune_config.FinetuneConfig`); YAML files and
``dotted.key=value`` override the defaults (:func:`load_train_config`), unknown keys and wrong types
are errors that name the key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emgscale.config import ConfigError, Rule, build_config, check_stored_values, check_values, from_dict
from emgscale.data.charset import charset
from emgscale.loader.base import DataConfig
from emgscale.models.config import BUILTIN_ARCHS, ModelConfig
from emgscale.swad.rule import SWADConfig
from emgscale.train.finetune_config import FINETUNE_RULES, FinetuneConfig, finetune_problem
from emgscale.train.loss_config import BUILTIN_OBJECTIVES, LossConfig


if TYPE_CHECKING:
    from emgscale.models.checkpoint import Checkpoint


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (defaults: the reference's Adam 1e-3, 10 warm-up epochs)."""

    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 10.0
    min_lr: float = 1e-6  # cosine decays to this
    grad_clip: float = 0.0  # max grad norm; 0 = off (the reference does not clip)


@dataclass
class RunConfig:
    """Where the run writes, how long it runs, on what, and how it is distributed.

    Distribution (:func:`emgscale.train.launch`): ``workers > 1``, ``use_gpu`` or a Ray address
    (``ray_address`` or ``RAY_ADDRESS``) runs the loop on Ray Train workers (DDP: NCCL on GPUs, gloo
    on CPUs); otherwise it runs in this process on ``device``. Which cluster: :mod:`emgscale.cluster`
    (``ray_address=local``: a private instance; no address: this user's cluster on this machine).
    """

    out_dir: str = "runs/default"
    seed: int = 1501
    max_epochs: int = 150
    max_steps: int = 0  # > 0: stop after this many steps (the schedule still spans max_epochs)
    steps_per_epoch: int = 0  # 0: the train loader's length
    eval_every_steps: int = 0  # 0: validate at the end of each epoch only
    val_times: int = 0  # > 0: validate this many times per run, evenly spaced over its steps, instead of per epoch
    val_max_batches: int = 0  # 0: the whole validation set
    ckpt_every_steps: int = 200
    log_every_steps: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: this process's GPU when there is one)
    bf16: bool = False  # bf16 autocast; on a GPU without bf16: fp16 with loss scaling
    compile: bool = False  # torch.compile the model
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # glibc: the training process keeps freed memory for reuse (emgscale.malloc; the process holds its peak)
    keep_freed_memory: bool = True
    init_from: str | None = None  # fine-tune: load model weights from this checkpoint
    init_new_head: bool = False  # with init_from: keep this model's fresh head (another task's classes)
    freeze: list[str] = field(default_factory=list)  # parameter name prefixes not trained, e.g. [featurizer, frontend, encoder]
    tensorboard: bool = True
    max_nonfinite_steps: int = 20  # stop with an error after this many skipped non-finite losses
    workers: int = 1
    use_gpu: bool = False
    ray_address: str | None = None  # local (a private instance) | auto | host:port | ray://host:10001
    resource_timeout_s: float = 300.0  # on a cluster: wait this long for the workers' CPUs/GPUs, then stop
    storage_path: str | None = None  # Ray Train storage (local folder, shared FS or object storage)
    max_failures: int = 0  # restarts after a worker dies (Ray FailureConfig)
    overwrite: bool = False  # train into a folder that holds a run without resuming it: replace that run


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML files and ``dotted.key=value`` override the defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    swad: SWADConfig = field(default_factory=SWADConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # which weights run.init_from fine-tunes

    @classmethod
    def from_checkpoint(cls, ck: "Checkpoint") -> "TrainConfig":
        """The typed config a checkpoint was trained with (sections it lacks take their defaults: an imported
        reference checkpoint stores only ``model``).

        It lives here, not on :class:`~emgscale.models.checkpoint.Checkpoint`: the checkpoint sits below
        training (models and SWAD read it) and must not import this module upwards.

        Raises:
            ConfigError: a stored value that today's config refuses (named).
        """
        return from_dict(cls, ck.config)


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        out_dir: the run folder.
        steps, epochs: where the run ended.
        best_val_score: the best value of the validation metric ``best.pt`` was chosen by (lower is better).
        best_val_metric: that metric's name: ``val_cer`` (window greedy CER, CTC) or ``val_error`` (frame
            error rate, ``loss.kind=frame_ce``).
        last_checkpoint, best_checkpoint: paths (None where none was written).
        history: one row of metrics per validation.
        wall_s: wall time of the call.
        world_size: data-parallel workers the run trained on.
        timings: where the wall time went, in seconds (rank 0's view; empty when unknown, e.g. a result
            made by older code): ``ray_start_s`` (connecting to / starting Ray, 0 in-process),
            ``pipeline_build_s`` (building training loaders until their first batch), ``data_wait_s``
            (waiting for later batches), ``step_s`` (forward, backward, optimiser), ``validation_s``,
            ``checkpoint_s`` and ``total_s`` (the run; on Ray the driver's whole fit, Ray start included).
            The parts sum to at most ``total_s``; the rest is set-up, logging and SWAD's final pass
            (:mod:`emgscale.train.timings`). Also written to the run folder's ``timings.json``.
    """

    out_dir: str
    steps: int
    epochs: int
    best_val_score: float
    best_val_metric: str
    last_checkpoint: str | None
    best_checkpoint: str | None
    history: list[dict[str, Any]]
    wall_s: float
    world_size: int = 1
    timings: dict[str, float] = field(default_factory=dict)


def load_train_config(paths: list["str | Path"], overrides: list[str]) -> TrainConfig:
    """Defaults, then YAML files (each may hold any subset of the sections), then overrides."""
    return build_config(TrainConfig, paths, overrides)


def resumed_config(paths: list["str | Path"], overrides: list[str], resume: "bool | str") -> tuple[TrainConfig, str]:
    """The config a resumed run continues with: the run's own saved config, then ``overrides`` on top.

    The YAML files only locate the run (their ``run.out_dir``); the run folder's ``config.yaml`` (or,
    for ``resume=CHECKPOINT``, the config inside that checkpoint) holds everything else, so a run made
    with ``configs/models/tds_small.yaml`` resumes as a TDS-small run even when only the experiment file
    is named. Configs saved in an older layout are upgraded (:func:`emgscale.models.checkpoint.upgrade_config`).
A checkpoint folder or a run folder stands for its ``last.pt`` (:func:`emgscale.run_folder.checkpoint_file`).

    Args:
        paths, overrides: the command line's YAML files and ``dotted.key=value`` overrides.
        resume: True (the run in ``run.out_dir``) or a checkpoint file / folder.

    A stored config is data, not commands: a value of it that would run a shell command (a ``pipe:``
    shard URL) is refused unless the command line or its YAML files give that same value
    (:func:`emgscale.config.check_stored_values`).

    Returns:
        ``(config, note)``: the config, and where it came from followed by one line per value taken from
        the stored config over the command line's files (empty when the run has no saved config yet and
        the command line's config is used as it is).

    Raises:
        ConfigError: a stored value that runs a command, or one this emgscale does not accept.
    """
    from emgscale.config import deep_merge, load_yaml, parse_overrides, to_dict
    from emgscale.models.checkpoint import load_checkpoint, upgrade_config
    from emgscale.run_folder import RunFolder, checkpoint_file

    given = load_train_config(paths, overrides)
    if resume is True:
        source = RunFolder(given.run.out_dir).config
        if not source.is_file():
            return given, ""
        saved = load_yaml(source)
    else:
        source = checkpoint_file(resume)
        saved = load_checkpoint(source).config
    saved = upgrade_config(saved, 1)
    run = dict(saved.get("run") or {})
    if resume is True:
        run["out_dir"] = given.run.out_dir  # the folder found, even when the run was moved there
    base = deep_merge(saved, {"run": run})
    try:
        cfg = build_config(TrainConfig, [], overrides, base=base)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    check_stored_values(cfg, source, trusted=given)  # a stored pipe: URL runs no shell
    flat_given, flat_cfg = _flat(to_dict(given)), _flat(to_dict(cfg))
    asked = set(_flat(parse_overrides(list(overrides))))
    kept = sorted(k for k in flat_cfg if flat_cfg[k] != flat_given.get(k) and k not in asked)
    note = f"config from {source}" + (f" with {' '.join(overrides)}" if overrides else "")
    if kept:
        note += ("; values taken from it (over the command line's config files; dotted.key=value changes them):"
                 + "".join(f"\n  {k} = {_short(flat_cfg[k])}" for k in kept[:_SHOWN])
                 + (f"\n  ... and {len(kept) - _SHOWN} more (--print-config shows all)" if len(kept) > _SHOWN else ""))
    return cfg, note


_SHOWN = 24  # values a resume lists that it takes from the stored config


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _device_problem(value: str) -> str | None:
    return None if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) else "must be auto, cpu, cuda or cuda:N"


def _shards_problem(value: str) -> str | None:
    if ".tar" in value or "://" in value or value.startswith("pipe:") or "{" in value:
        return None  # URLs and shard lists: the loader names a shard it cannot open
    return None if Path(value).is_dir() else "no such shard folder"


def _cache_dir_problem(value: str) -> str | None:
    if not value:
        return "must be a folder (or unset)"
    return "is a file, not a folder" if Path(value).exists() and not Path(value).is_dir() else None


def _channels_problem(value: list[int]) -> str | None:
    return None if value and all(0 <= c < 16 for c in value) else "must be electrode numbers 0-15 (at least one)"


#: The ranges, choices and paths of :class:`TrainConfig` (:func:`check_train_config`); every other number must be
#: finite and >= 0 (``emgscale.config.check_values``).
TRAIN_RULES: dict[str, Rule] = {
    "data.data_root": "dir", "data.split": "file", "data.bids_metadata": "file", "data.shards": _shards_problem, "data.shards_manifest": "file",
    "data.window.window_samples": ">=1", "data.window.stride_samples": ">=1",
    "data.val_mode": ("windows", "session"), "data.test_mode": ("windows", "session"),
    "data.batch_size": ">=1", "data.batch_size_per_device": ">=1", "data.train_samples_per_epoch": ">=1",
    "data.max_minutes_per_user": ">0", "data.limit_samples": ">=1", "data.feature_cache": _cache_dir_problem,
    "model.features.kind": ("log_spectrogram", "log_bands"), "model.features.norm": ("batch", "rolling", "none"),
    "model.features.n_fft": ">=1", "model.features.hop_samples": ">=1", "model.features.num_log_bands": ">=1",
    "model.features.sample_rate_hz": ">0", "model.features.input_sample_rate_hz": ">0",
    "model.features.norm_momentum": "[0,1]", "model.features.norm_eps": ">0", "model.features.rolling_window_s": ">=0",
    "model.features.channels": _channels_problem, "model.features.input_gain": ">0",
    "model.*offsets": "any", "model.augment.mask_value": "any",
    "model.*size*": ">=1", "model.*channels": ">=1", "model.*layers": ">=1", "model.*heads": ">=1",
    "model.*dim": ">=1", "model.*d_model": ">=1", "model.*kernel*": ">=1", "model.*strides": ">=1",
    "model.*features": ">=1",
    "optim.optimizer": ("adam", "adamw"), "optim.lr": ">0", "optim.betas": "[0,1)",
    "run.max_epochs": ">=1", "run.log_every_steps": ">=1", "run.workers": ">=1", "run.max_failures": ">=-1",
    "run.device": _device_problem, "run.init_from": "path", "run.out_dir": lambda v: None if v else "must be set",
    "swad.mode": ("off", "swad", "swa"),
    "loss.distill_from": "path", "loss.distill_temperature": ">0",
    "data.csv.*column*": "any",  # CSV columns: an index (negative from the end) or a header name
    **FINETUNE_RULES,
}


def _ray_job_hint(problem: str) -> str:
    """Inside ``ray job submit`` a relative path means the job's uploaded copy of the working dir, which
    leaves out git-ignored data: say so after a path problem, else ""."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ or "no such" not in problem:
        return ""
    return (f" (this is a Ray job running in {os.getcwd()}, the uploaded copy of --working-dir without its "
            "git-ignored files such as data/: give data paths every node can read as absolute paths, e.g. "
            "data.data_root=$PWD/data/synth on the submitting machine)")


def _known(key: str, name: str) -> tuple[str, ...]:
    """The names ``key`` accepts: the built-in ones, and the registries (which import torch) only when
    ``name`` is not built in, so a config naming a built-in encoder and objective is checked without torch."""
    builtin = BUILTIN_ARCHS if key == "model.arch" else BUILTIN_OBJECTIVES
    if name in builtin:
        return builtin
    if key == "model.arch":
        from emgscale.models.ctc import ENCODERS as registry
    else:
        from emgscale.train.objective import OBJECTIVES as registry
    return tuple(sorted(registry))


def check_train_config(cfg: TrainConfig) -> TrainConfig:
    """Check ``cfg`` before any work: ranges of every number, choices, paths that must exist, and the
    settings that only make sense together; returns ``cfg``.

    Raises:
        ConfigError: ``<key>=<value>: <problem>``, naming the first bad field.
    """
    rules = {**TRAIN_RULES, "model.arch": _known("model.arch", cfg.model.arch),
             "loss.kind": _known("loss.kind", cfg.loss.kind)}
    d = cfg.data
    if d.shards:  # training reads the shards only (data_root / split may name where they came from)
        rules.update({"data.data_root": "any", "data.split": "any", "data.bids_metadata": "any"})
    try:
        check_values(cfg, rules)
    except ConfigError as e:
        raise ConfigError(str(e) + _ray_job_hint(str(e))) from None
    if not d.shards and not (d.data_root and d.split):
        missing = "data.data_root" if not d.data_root else "data.split"
        raise ConfigError(f"{missing} is not set: train from shards (data.shards=DIR) or from HDF5 sessions "
                          "(data.data_root=DIR and data.split=SPLIT.yaml)")
    ctc_classes = charset().num_classes
    if cfg.loss.kind == "ctc" and cfg.model.num_classes not in (0, ctc_classes):
        raise ConfigError(f"model.num_classes={cfg.model.num_classes}: loss.kind=ctc decodes the keys and a blank "
                          f"({ctc_classes} classes: model.num_classes 0); a {cfg.model.num_classes}-class frame "
                          "classifier trains with loss.kind=frame_ce (a YAML file named later overrides one named "
                          "earlier)")
    problem = finetune_problem(cfg.finetune, cfg.run.init_from, cfg.swad.mode)
    if problem:
        raise ConfigError(problem)
    if cfg.run.val_times and cfg.run.eval_every_steps:
        raise ConfigError(f"run.val_times={cfg.run.val_times} and run.eval_every_steps={cfg.run.eval_every_steps}: "
                          "choose one validation cadence (set the other to 0)")
    if cfg.optim.min_lr > cfg.optim.lr:
        raise ConfigError(f"optim.min_lr={cfg.optim.min_lr!r}: must be <= optim.lr ({cfg.optim.lr!r})")
    d.check(cfg.model.augment)
    return cfg
