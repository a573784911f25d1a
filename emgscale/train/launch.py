"""One way to launch training: :func:`launch` runs the loop in this process or on Ray Train workers.

Every caller — ``python -m emgscale.train``, every benchmark step, every Tune trial — calls
:func:`launch`. It runs :func:`emgscale.train.loop.train` in-process on one device, or, when
:func:`wants_ray` (``run.workers > 1``, ``run.use_gpu``, or a Ray address in ``run.ray_address`` /
``RAY_ADDRESS``), on ``run.workers`` Ray Train ``TorchTrainer`` workers with DDP — NCCL on GPUs, gloo
on CPUs — locally or through ``ray job submit``::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m emgscale.train configs/....yaml run.workers=8 run.use_gpu=true \\
        run.out_dir=/shared/runs/x run.storage_path=/shared/ray

Each worker runs the loop unchanged: Ray Train initialises ``torch.distributed``, the loop wraps the
model in DDP, splits the global batch (``data.batch_size``, or ``data.batch_size_per_device`` x
workers) by the world size and reads its data share by rank, so the global batch and the LR schedule
are what the config says whatever N is. The config travels to workers as a plain dict.

Checkpoints go through Ray Train: at every validation each rank calls ``ray.train.report`` and rank 0
passes the checkpoint folder it just wrote, which Ray copies to ``run.storage_path`` (default
``<out_dir>/ray``; a shared file system or object store on a multi-node cluster). When a worker dies,
Ray restarts the group (up to ``run.max_failures`` times) and every rank resumes from the newest
complete checkpoint any rank can read: Ray's last reported one, or ``<out_dir>/checkpoints/last.pt``
when that is newer (the loop also saves between validations). The driver writes
``<out_dir>/ray_result.json``: the Ray run name, storage, world size, final checkpoint and the
checkpoint a restarted worker group resumed from (if any).

The helpers Tune shares (:func:`import_ray`, :func:`connect`, :func:`ray_env`) are public here.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from emgscale.checkpoint import BEST, LAST, load_checkpoint
from emgscale.common import atomic_write_json, print0
from emgscale.config import ConfigError, from_dict, to_dict
from emgscale.train.config import TrainConfig, TrainResult, check_train_config
from emgscale.train.loop import Report, train

#: Fault-injection hook for tests and drills: ``"rank=1,step=4,marker=/tmp/x"`` makes that rank exit
#: (``os._exit(1)``) right after the first validation report at or past that step has been committed,
#: once: the marker file records that it happened, so the restarted worker group runs on.
FAULT_ENV = "EMGSCALE_FAULT_INJECT"
#: Ray keeps this many reported checkpoints (the newest ones) in storage.
CHECKPOINTS_TO_KEEP = 2


def wants_ray(cfg: TrainConfig) -> bool:
    """True when the run goes to Ray Train: several workers, GPU workers, or a Ray cluster to run on."""
    return cfg.run.workers > 1 or cfg.run.use_gpu or bool(cfg.run.ray_address or os.environ.get("RAY_ADDRESS"))


def launch(cfg: TrainConfig, resume: bool | str = False, report: Report | None = None) -> TrainResult:
    """Train ``cfg``: in this process, or on Ray Train workers when :func:`wants_ray`.

    Args:
        cfg: the resolved config.
        resume: False, True (``<out_dir>/checkpoints/last.pt`` when it exists) or a checkpoint path.
        report: per-validation callback (``metrics, checkpoint_folder``) for an in-process run, e.g. a
            Tune trial's ``tune.report``; a run on Ray Train reports to Ray Train itself.

    Returns:
        The run's :class:`TrainResult` (``world_size`` says how many workers it trained on).

    Raises:
        ConfigError: a bad config value (:func:`~emgscale.train.config.check_train_config`), a folder holding
            another run (:func:`prepare_run_folder`), a batch the workers cannot split, or a ``report``
            callback for a run that goes to Ray Train.
    """
    check_train_config(cfg)
    if wants_ray(cfg) and report is not None:
        raise ConfigError("a run with its own report callback is one process (a Tune trial): set resources, "
                          "not run.workers / run.use_gpu")
    out = Path(cfg.run.out_dir)
    made = not out.exists()
    prepare_run_folder(cfg, resume)
    try:
        return fit_on_ray(cfg, resume) if wants_ray(cfg) else train(cfg, resume=resume, report=report)
    except BaseException:
        if made and out.is_dir() and not (out / "checkpoints" / LAST).is_file():
            shutil.rmtree(out, ignore_errors=True)  # no half-made run folder after a failed start-up
            print0(f"[launch] the run failed before its first checkpoint: removed the run folder {out} it had made")
        raise


#: What a run writes into its folder (``run.overwrite`` removes these, and nothing else, before a new run).
RUN_FILES = ("checkpoints", "tb", "metrics.jsonl", "metrics.csv", "config.yaml", "ray_result.json", "ray")


def prepare_run_folder(cfg: TrainConfig, resume: bool | str) -> None:
    """Refuse to train into a folder that holds a run, unless resuming it or ``run.overwrite`` replaces it.

    Raises:
        ConfigError: ``run.out_dir`` holds a run's checkpoints or metrics, and neither ``resume`` nor
            ``run.overwrite`` is set.
    """
    out = Path(cfg.run.out_dir)
    found = [n for n in ("checkpoints/" + LAST, "checkpoints/" + BEST, "metrics.jsonl") if (out / n).exists()]
    if resume is not False or not found:
        return
    if not cfg.run.overwrite:
        raise ConfigError(f"run.out_dir={str(out)!r} already holds a run ({found[0]}): continue it with --resume, "
                          "replace it with --overwrite (run.overwrite=true), or choose another run.out_dir")
    for name in RUN_FILES:
        p = out / name
        if name == "ray" and cfg.run.storage_path:
            continue  # not this run's default Ray storage
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    print0(f"[launch] run.overwrite: removed the earlier run's checkpoints, metrics and logs in {out}")


def import_ray() -> Any:
    """``ray`` with Ray Train importable, or an ImportError that says what to install."""
    try:
        import ray
        import ray.train  # noqa: F401  (needs the train extras: pandas, pyarrow, ...)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"distributed training needs Ray Train ({e}); install it with: pip install 'emgscale[ray]'"
        ) from None
    return ray


def connect(address: str | None = None) -> str:
    """Connect to a Ray cluster unless this process already is connected; returns the cluster's address.

    Args:
        address: ``"auto"``, ``"ray://host:10001"``, ``"host:6379"``... ``None`` connects to the cluster
            named by ``RAY_ADDRESS`` (set by ``ray job submit``) or the one last started on this
            machine, and otherwise starts a local one (Ray's own resolution order).
    """
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address)
    return ray.get_runtime_context().gcs_address


@contextlib.contextmanager
def ray_env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block (in this process), e.g. Ray's switches."""
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


def _step_of(path: Path) -> int | None:
    """The step of a readable checkpoint, None when it is missing or unreadable (memory-mapped: cheap)."""
    try:
        return load_checkpoint(path).step
    except (FileNotFoundError, ValueError):
        return None


def _newest_checkpoint(candidates: list[Path]) -> Path:
    """The newest of ``candidates`` that every rank can read (all ranks take part; they agree)."""
    import torch.distributed as dist

    mine = {str(p): _step_of(p) for p in candidates}
    views: list[Any] = [mine]
    if dist.is_available() and dist.is_initialized():
        views = [None] * dist.get_world_size()
        dist.all_gather_object(views, mine)
    readable = [p for p in map(str, candidates) if all(v.get(p) is not None for v in views)]
    return Path(max(readable, key=lambda p: mine[p]))


def _worker(config: dict[str, Any]) -> None:
    """Ray Train worker: the loop with Ray reporting, resuming from the newest checkpoint after a restart."""
    import ray.train

    if config.get("cwd") and os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])  # relative data paths mean what they meant to the driver
    cfg = from_dict(TrainConfig, config["cfg"])
    if cfg.run.use_gpu and cfg.run.device == "auto":
        import ray.train.torch

        cfg.run.device = str(ray.train.torch.get_device())  # the GPU Ray gave this worker
    rank = ray.train.get_context().get_world_rank()
    fault = _parse_fault(config.get("fault"))

    def report(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
        ray.train.report(_scalars(metrics), checkpoint=ckpt)
        if (fault and rank == int(fault["rank"]) and metrics.get("step", -1) >= int(fault["step"])
                and not os.path.exists(fault["marker"])):
            # Die only once Ray has committed this report's checkpoint, so the drill is deterministic.
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120)
            Path(fault["marker"]).write_text(f"rank {rank} exited at step {metrics['step']}\n")
            print(f"[launch] fault injection: rank {rank} exits at step {metrics['step']}", flush=True)
            os._exit(1)

    restored = ray.train.get_checkpoint()  # set after a worker-group restart
    resumed_from = ""
    with contextlib.ExitStack() as stack:
        resume: bool | str = config.get("resume") or False
        if restored is not None:
            local = Path(cfg.run.out_dir) / "checkpoints" / LAST
            ray_last = Path(stack.enter_context(restored.as_directory())) / LAST
            newest = _newest_checkpoint([ray_last, local])
            resume, resumed_from = str(newest), restored.path if newest == ray_last else str(local)
            print0(f"[launch] worker group restarted: resuming from {resumed_from}")
        result = train(cfg, resume=resume, report=report)
    # One last report carries the final checkpoint (with the SWAD/SWA average, written after the last
    # validation), so Ray's result points at the finished model.
    final = {"final": True, "step": result.steps, "epoch": result.epochs, "best_val_cer": result.best_val_cer,
             "wall_s": result.wall_s, "world_size": result.world_size, "resumed_from": resumed_from}
    last = Path(result.last_checkpoint).parent if result.last_checkpoint else None
    ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(str(last)) if last else None)


def fit_on_ray(cfg: TrainConfig, resume: bool | str = False) -> TrainResult:
    """The loop on ``cfg.run.workers`` Ray Train workers (see the module docstring).

    :func:`launch` calls this when :func:`wants_ray`; call it directly only to force Ray Train for a
    run that would otherwise stay in-process (e.g. to measure Ray's overhead with one worker).
    """
    import_ray()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    workers = cfg.run.workers
    if cfg.data.global_batch_size(workers) % workers:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by run.workers {workers}")
    cfg = copy.deepcopy(cfg)
    cfg.run.out_dir = str(Path(cfg.run.out_dir).resolve())
    start_from = resolve_resume(cfg, resume)
    if resume is True and start_from is None:
        print0(f"[launch] --resume: no {Path(cfg.run.out_dir) / 'checkpoints' / LAST} yet; starting fresh")
    storage = cfg.run.storage_path or str(Path(cfg.run.out_dir) / "ray")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    # A fresh name per job: Ray Train V2 would otherwise silently restore an earlier run of that name.
    name = f"{Path(cfg.run.out_dir).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    connect(cfg.run.ray_address)
    backend = "nccl" if cfg.run.use_gpu else "gloo"
    print0(f"[launch] Ray Train: {workers} worker(s), {'GPU' if cfg.run.use_gpu else 'CPU'} ({backend}), global batch "
           f"{cfg.data.global_batch_size(workers)} ({cfg.data.global_batch_size(workers) // workers} per worker), "
           f"storage {storage}/{name}" + (f", resuming from {start_from}" if start_from else ""))
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": to_dict(cfg), "resume": start_from, "cwd": os.getcwd(),
                           "fault": os.environ.get(FAULT_ENV)},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.run.use_gpu),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
        ),
    )
    t0 = time.monotonic()
    # Workers keep the driver's working directory; their prints reach the console once.
    with ray_env(RAY_CHDIR_TO_TRIAL_DIR="0",
                 RAY_TRAIN_ENABLE_PRINT_PATCH=os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")):
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
    metrics = result.metrics or {}
    info = {"name": name, "storage": storage, "world_size": int(metrics.get("world_size", workers)),
            "checkpoint": result.checkpoint.path, "run_path": result.path,
            "resumed_from": metrics.get("resumed_from") or None, "started_from": start_from}
    atomic_write_json(Path(cfg.run.out_dir) / "ray_result.json", info)
    print0(f"[launch] done; final checkpoint in Ray storage: {result.checkpoint.path}"
           + (f" (the worker group was restarted from {info['resumed_from']})" if info["resumed_from"] else ""))
    return TrainResult(out_dir=cfg.run.out_dir, steps=ck.step, epochs=ck.epoch, best_val_cer=ck.best_val_cer,
                       last_checkpoint=str(last), best_checkpoint=str(best) if best else None,
                       history=list(ck.history), wall_s=time.monotonic() - t0, world_size=info["world_size"])
