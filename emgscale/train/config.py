"""The training config (typed dataclasses with defaults in code) and what a run returns.

``TrainConfig`` nests ``data`` (:class:`~emgscale.loader.DataConfig`), ``model``
(:class:`~emgscale.models.ModelConfig`), ``loss`` (:class:`~emgscale.train.objective.LossConfig`),
``optim``, ``run`` and ``swad``; YAML files and
``dotted.key=value`` override the defaults (:func:`load_train_config`), unknown keys and wrong types
are errors that name the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emgscale.config import build_config
from emgscale.loader import DataConfig
from emgscale.models import ModelConfig
from emgscale.swad import SWADConfig
from emgscale.train.objective import LossConfig


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
    on CPUs); otherwise it runs in this process on ``device``.
    """

    out_dir: str = "runs/default"
    seed: int = 1501
    max_epochs: int = 150
    max_steps: int = 0  # > 0: stop after this many steps (the schedule still spans max_epochs)
    steps_per_epoch: int = 0  # 0: the train loader's length
    eval_every_steps: int = 0  # 0: validate at the end of each epoch only
    val_max_batches: int = 0  # 0: the whole validation set
    ckpt_every_steps: int = 200
    log_every_steps: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: this process's GPU when there is one)
    bf16: bool = False  # bf16 autocast; on a GPU without bf16: fp16 with loss scaling
    compile: bool = False  # torch.compile the model
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    init_from: str | None = None  # fine-tune: load model weights from this checkpoint
    init_new_head: bool = False  # with init_from: keep this model's fresh head (another task's classes)
    freeze: list[str] = field(default_factory=list)  # parameter name prefixes not trained, e.g. [featurizer, frontend, encoder]
    tensorboard: bool = True
    max_nonfinite_steps: int = 20  # stop with an error after this many skipped non-finite losses
    workers: int = 1
    use_gpu: bool = False
    ray_address: str | None = None
    storage_path: str | None = None  # Ray Train storage (local folder, shared FS or object storage)
    max_failures: int = 0  # restarts after a worker dies (Ray FailureConfig)


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML files and ``dotted.key=value`` override the defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    swad: SWADConfig = field(default_factory=SWADConfig)


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        out_dir: the run folder.
        steps, epochs: where the run ended.
        best_val_cer: the best validation CER (window greedy CER).
        last_checkpoint, best_checkpoint: paths (None where none was written).
        history: one row of metrics per validation.
        wall_s: wall time of the call.
        world_size: data-parallel workers the run trained on.
    """

    out_dir: str
    steps: int
    epochs: int
    best_val_cer: float
    last_checkpoint: str | None
    best_checkpoint: str | None
    history: list[dict[str, Any]]
    wall_s: float
    world_size: int = 1


def load_train_config(paths: list["str | Path"], overrides: list[str]) -> TrainConfig:
    """Defaults, then YAML files (each may hold any subset of the sections), then overrides."""
    return build_config(TrainConfig, paths, overrides)
