"""Distributed training on Ray Train: the one loop (:func:`emgscale.train.train`) on N DDP workers.

``python -m emgscale.train CONFIG run.workers=N [run.use_gpu=true] [run.ray_address=...]`` lands here
(as does any run with a Ray address), locally or through ``ray job submit``::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m emgscale.train configs/....yaml run.workers=8 run.use_gpu=true \\
        run.out_dir=/shared/runs/x run.storage_path=/shared/ray

Each worker runs ``train()`` unchanged: Ray Train's ``TorchTrainer`` initialises ``torch.distributed``
(gloo on CPU, NCCL on GPU), the loop wraps the model in DDP, splits the global ``data.batch_size`` by
the world size and reads its data share by rank, so the global batch and the LR schedule are what the
config says whatever N is. The config travels to workers as a plain dict (``to_dict``/``from_dict``).

Checkpoints go through Ray Train: at every validation each rank calls ``ray.train.report`` and rank 0
passes the checkpoint folder it just wrote (``last.pt``, ``best.pt``), which Ray copies to
``run.storage_path`` (default ``<out_dir>/ray``; a shared file system or object store on a multi-node
cluster). When a worker dies, Ray restarts the group (up to ``run.max_failures`` times) and every
rank resumes from the last reported checkpoint (``ray.train.get_checkpoint()``). A new job continues a
finished or killed one with ``--resume`` (``<out_dir>/checkpoints/last.pt``) or ``--resume PATH``.
The driver writes ``<out_dir>/ray_result.json``: the Ray run name, storage, final checkpoint and the
checkpoint a restarted worker group resumed from (if any).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from pathlib import Path
from typing import Any, Iterator

from emgscale.checkpoint import BEST, LAST, load_checkpoint
from emgscale.common import atomic_write_json, print0
from emgscale.config import ConfigError, from_dict, to_dict
from emgscale.train import TrainConfig, TrainResult, train

#: Fault-injection hook for tests and drills: ``"rank=1,step=4,marker=/tmp/x"`` makes that rank exit
#: (``os._exit(1)``) right after the first validation report at or past that step has been committed,
#: once: the marker file records that it happened, so the restarted worker group runs on.
FAULT_ENV = "EMGSCALE_FAULT_INJECT"
#: Ray keeps this many reported checkpoints (the newest ones) in storage.
CHECKPOINTS_TO_KEEP = 2


def _import_ray() -> Any:
    try:
        import ray
        import ray.train  # noqa: F401  (needs the train extras: pandas, pyarrow, ...)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"distributed training needs Ray Train ({e}); install it with: pip install 'emgscale[ray]'"
        ) from None
    return ray


def connect(address: str | None = None) -> None:
    """Connect to a Ray cluster unless this process already is connected.

    Args:
        address: ``"auto"``, ``"ray://host:10001"``, ``"host:6379"``... ``None`` connects to the cluster
            named by ``RAY_ADDRESS`` (set by ``ray job submit``) or the one last started on this
            machine, and otherwise starts a local one (Ray's own resolution order).
    """
    ray = _import_ray()
    if ray.is_initialized():
        return
    ray.init(address=address)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block (in this process)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def resolve_resume(cfg: TrainConfig, resume: bool | str) -> str | None:
    """The checkpoint file a new job starts from, or None to start fresh.

    Args:
        cfg: the run's config (its ``run.out_dir`` is where ``resume=True`` looks).
        resume: False (fresh), True (``<out_dir>/checkpoints/last.pt`` when it exists, else fresh),
            or a path to a checkpoint file or a folder holding ``last.pt`` (a Ray checkpoint folder).

    Raises:
        FileNotFoundError: ``resume`` is a path with no checkpoint there.
    """
    if resume is False or resume is None:
        return None
    if resume is True:
        path = Path(cfg.run.out_dir) / "checkpoints" / LAST
        return str(path.resolve()) if path.is_file() else None
    path = Path(resume)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"{resume}: no checkpoint to resume from (expected a file or a folder with {LAST})")
    return str(path.resolve())


def _parse_fault(spec: str | None) -> dict[str, str] | None:
    if not spec:
        return None
    try:
        fault = dict(item.split("=", 1) for item in spec.split(","))
        int(fault["rank"]), int(fault["step"]), fault["marker"]  # noqa: B018 - validate
    except (ValueError, KeyError):
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected 'rank=R,step=S,marker=PATH'") from None
    return fault


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def _worker(config: dict[str, Any]) -> None:
    """Ray Train worker: ``train()`` with Ray reporting, resuming from Ray's latest checkpoint."""
    import ray.train

    if config.get("cwd") and os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])  # relative data paths mean what they meant to the driver
    cfg = from_dict(TrainConfig, config["cfg"])
    if cfg.run.use_gpu and cfg.run.device == "auto":
        import ray.train.torch

        cfg.run.device = str(ray.train.torch.get_device())  # the GPU Ray gave this worker (its current device)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    fault = _parse_fault(config.get("fault"))

    def report(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
        ray.train.report(_scalars(metrics), checkpoint=ckpt)
        if (fault and rank == int(fault["rank"]) and metrics.get("step", -1) >= int(fault["step"])
                and not os.path.exists(fault["marker"])):
            # Die only once Ray has committed this report's checkpoint, so the drill is deterministic
            # (a worker that dies right after a report may otherwise lose that checkpoint).
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120)
            Path(fault["marker"]).write_text(f"rank {rank} exited at step {metrics['step']}\n")
            print(f"[ray_train] fault injection: rank {rank} exits at step {metrics['step']}", flush=True)
            os._exit(1)

    restored = ray.train.get_checkpoint()  # set after a worker-group restart
    with contextlib.ExitStack() as stack:
        resume: bool | str = config.get("resume") or False
        if restored is not None:
            resume = str(Path(stack.enter_context(restored.as_directory())) / LAST)
            print0(f"[ray_train] worker group restarted: resuming from {restored.path}")
        result = train(cfg, resume=resume, report=report)
    # One last report carries the final checkpoint (with the SWAD/SWA average, written after the last
    # validation), so Ray's result points at the finished model.
    final = {"final": True, "step": result.steps, "epoch": result.epochs, "best_val_cer": result.best_val_cer,
             "wall_s": result.wall_s, "resumed_from": restored.path if restored is not None else ""}
    last = Path(result.last_checkpoint).parent if result.last_checkpoint else None
    ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(str(last)) if last else None)


def fit(cfg: TrainConfig, resume: bool | str = False) -> TrainResult:
    """Run :func:`emgscale.train.train` on ``cfg.run.workers`` Ray Train workers (DDP).

    Args:
        cfg: the resolved config; ``run.workers``, ``run.use_gpu``, ``run.ray_address``,
            ``run.storage_path`` and ``run.max_failures`` say how to distribute it.
        resume: False, True (``<out_dir>/checkpoints/last.pt``) or a checkpoint path; on a multi-node
            cluster the file must be on storage every node can read.

    Returns:
        The run's :class:`TrainResult` (history and step from the final checkpoint; checkpoint paths in
        ``out_dir`` when this machine sees them, else in Ray storage).

    Raises:
        ConfigError: ``run.workers`` < 1 or a global batch size that the workers cannot split.
        ray.train.TrainingFailedError: the run failed more than ``run.max_failures`` times.
    """
    _import_ray()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers = cfg.run.workers
    if workers < 1:
        raise ConfigError(f"run.workers must be >= 1, got {workers}")
    if cfg.data.batch_size % workers:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by run.workers {workers}")
    cfg = copy.deepcopy(cfg)
    cfg.run.out_dir = str(Path(cfg.run.out_dir).resolve())
    start_from = resolve_resume(cfg, resume)
    if resume is True and start_from is None:
        print0(f"[ray_train] --resume: no {Path(cfg.run.out_dir) / 'checkpoints' / LAST} yet; starting fresh")
    storage = cfg.run.storage_path or str(Path(cfg.run.out_dir) / "ray")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    # A fresh name per job: Ray Train V2 would otherwise silently restore an earlier run of that name.
    name = f"{Path(cfg.run.out_dir).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    connect(cfg.run.ray_address)
    print0(f"[ray_train] {workers} worker(s), {'GPU' if cfg.run.use_gpu else 'CPU'}, global batch "
           f"{cfg.data.batch_size} ({cfg.data.batch_size // workers} per worker), storage {storage}/{name}"
           + (f", resuming from {start_from}" if start_from else ""))
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": to_dict(cfg), "resume": start_from, "cwd": os.getcwd(),
                           "fault": os.environ.get(FAULT_ENV)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.run.use_gpu),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
        ),
    )
    t0 = time.monotonic()
    # Workers keep the driver's working directory; their prints reach the console once (Ray's print
    # patch would also log each print, and the driver shows both).
    print_patch = os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    with _env(RAY_CHDIR_TO_TRIAL_DIR="0", RAY_TRAIN_ENABLE_PRINT_PATCH=print_patch):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint (see the worker logs above)")
    with result.checkpoint.as_directory() as d:
        ck = load_checkpoint(Path(d) / LAST)
        ray_best = Path(result.checkpoint.path) / BEST
    local = Path(cfg.run.out_dir) / "checkpoints"
    last = local / LAST if (local / LAST).is_file() else Path(result.checkpoint.path) / LAST
    best = local / BEST if (local / BEST).is_file() else None
    if best is None and "://" not in storage and ray_best.is_file():
        best = ray_best
    info = {"name": name, "storage": storage, "checkpoint": result.checkpoint.path, "run_path": result.path,
            "resumed_from": (result.metrics or {}).get("resumed_from") or None, "started_from": start_from}
    atomic_write_json(Path(cfg.run.out_dir) / "ray_result.json", info)
    print0(f"[ray_train] done; final checkpoint in Ray storage: {result.checkpoint.path}"
           + (f" (the worker group was restarted from {info['resumed_from']})" if info["resumed_from"] else ""))
    return TrainResult(out_dir=cfg.run.out_dir, steps=ck["step"], epochs=ck["epoch"],
                       best_val_cer=ck.get("best_val_cer", float("inf")), last_checkpoint=str(last),
                       best_checkpoint=str(best) if best else None, history=ck.get("history", []),
                       wall_s=time.monotonic() - t0)
