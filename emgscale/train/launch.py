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
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from emgscale import cluster
from emgscale.common import atomic_write_json, print0
from emgscale.config import ConfigError, from_dict, to_dict
from emgscale.models.checkpoint import load_checkpoint
from emgscale.run_folder import BEST, LAST, RunFolder, checkpoint_file
from emgscale.train.config import TrainConfig, TrainResult, check_train_config
from emgscale.train.scale import resolve_input_gain
from emgscale.train.loop import Report, train
from emgscale.train.timings import TIMING_KEYS

#: Fault-injection hook for tests and drills: ``"rank=1,step=4,marker=/tmp/x"`` makes that rank exit
#: (``os._exit(1)``) right after the first validation report at or past that step has been committed,
#: once: the marker file records that it happened, so the restarted worker group runs on.
FAULT_ENV = "EMGSCALE_FAULT_INJECT"
#: Rank 0's timings travel to the driver in its final report under these names (``timing_step_s``, ...).
TIMING_PREFIX = "timing_"
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
        KeyboardInterrupt: Ctrl-C or SIGTERM (the run folder keeps what was logged; see :func:`_interrupts`).
    """
    check_train_config(cfg)
    if wants_ray(cfg) and report is not None:
        raise ConfigError("a run with its own report callback is one process (a Tune trial): set resources, "
                          "not run.workers / run.use_gpu")
    folder = RunFolder(cfg.run.out_dir)
    made = not folder.root.exists()
    prepare_run_folder(cfg, resume)
    cfg = resolve_input_gain(cfg, resuming=resolve_resume(cfg, resume) is not None)
    try:
        if wants_ray(cfg):
            return fit_on_ray(cfg, resume)  # Ray keeps its own signal handling in the driver
        _process_settings(cfg)
        with _interrupts():
            return train(cfg, resume=resume, report=report)
    except BaseException as e:
        if made and folder.root.is_dir() and not folder.checkpoints_found() and not folder.metrics.exists():
            shutil.rmtree(folder.root, ignore_errors=True)  # nothing logged: no half-made run folder
            print0(f"[launch] the run stopped before it logged anything: removed the run folder {folder.root} it had made")
        elif isinstance(e, KeyboardInterrupt):
            print0(f"[launch] interrupted: {folder.root} keeps what was logged; "
                   + ("continue it with --resume" if folder.last.is_file() else
                      "it has no checkpoint yet, so running the same command again starts it from step 0"))
        raise


@contextlib.contextmanager
def _interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop) ends the run as Ctrl-C does: one rule for both interrupts.

    Either raises ``KeyboardInterrupt`` in the loop; a checkpoint being written is left as it was (the
    write is atomic) and the run folder keeps its checkpoints and logs. Only for an in-process run in the
    main thread (a Tune trial's thread and a Ray Train driver leave signals to Ray); whatever way a run
    ends, :func:`prepare_run_folder` applies the same rule to the folder it left.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def prepare_run_folder(cfg: TrainConfig, resume: bool | str) -> None:
    """Make ``run.out_dir`` ready for this run, or refuse: the run-folder rules (``docs/hardening.md``).

    * Temporary files that a killed checkpoint write left are removed.
    * A folder holding a run's checkpoints is refused unless ``resume`` continues *that* run (a checkpoint
      inside the folder, or one with the same run id) or ``run.overwrite`` replaces the run.
    * A folder with only the logs of a run stopped before its first checkpoint (nothing to continue) is
      started cleanly: those logs are removed first, so they never mix with this run's.

    Raises:
        ConfigError: ``run.out_dir`` holds a run this call would overwrite without a word.
        FileNotFoundError: ``resume`` names no checkpoint.
    """
    folder = RunFolder(cfg.run.out_dir)
    out = str(folder.root)
    gone = folder.remove_stale_temps()
    if gone:
        print0(f"[launch] removed {len(gone)} temporary file(s) that a killed write left in {out} ({gone[0].name})")
    found, logs = folder.checkpoints_found(), folder.logs_found()
    source = folder.resume_from(resume)
    own = source is not None and _is_inside(source, folder.root)
    if cfg.run.overwrite and (found or logs) and not own:
        folder.remove_run_files(keep_ray_storage=bool(cfg.run.storage_path))  # ray/: not ours when storage is set
        print0(f"[launch] run.overwrite: removed the earlier run's checkpoints, metrics and logs in {out}")
    elif found and resume is False:
        raise ConfigError(f"run.out_dir={out!r} already holds a run ({found[0]}): continue it with --resume, "
                          "replace it with --overwrite (run.overwrite=true), or choose another run.out_dir")
    elif found and source is not None and not own and not _same_run(folder, source):
        raise ConfigError(f"run.out_dir={out!r} holds another run ({found[0]}) than the checkpoint {source}: "
                          "resuming there would overwrite it; give an empty run.out_dir (or the run's own), "
                          "or replace that run with --overwrite")
    elif not found and logs:
        folder.remove_run_files(keep_ray_storage=bool(cfg.run.storage_path))  # no checkpoint: nothing to continue
        print0(f"[launch] {out} holds only the logs of a run stopped before its first checkpoint "
               f"({', '.join(logs)}): they are replaced, and the run starts from step 0")


def _is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _same_run(folder: RunFolder, source: Path) -> bool:
    """True when ``folder``'s checkpoint and ``source`` carry the same run id (e.g. a Ray copy of the run's
    own checkpoint); files written before run ids existed never match."""
    mine = folder.last if folder.last.is_file() else folder.best
    try:
        ids = load_checkpoint(mine).run_id, load_checkpoint(source).run_id
    except (FileNotFoundError, ValueError):
        return False
    return bool(ids[0]) and ids[0] == ids[1]


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


def connect(address: str | None = None, **kw: Any) -> str:
    """Join (or start) the Ray cluster :func:`emgscale.cluster.connect` picks; returns its address.

    Args:
        address: ``None`` / ``"auto"`` (this user's cluster on this machine, else a private local
            instance / an error), ``"local"`` (a private local instance), or an address
            (``"ray://host:10001"``, ``"host:6379"``); ``RAY_ADDRESS`` counts as given.
        kw: ``num_cpus``, ``use_gpu``, ``workers`` of :func:`emgscale.cluster.connect`.
    """
    import_ray()
    return cluster.connect(address, **kw)


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
    """The checkpoint file a new job starts from, or None to start fresh (:meth:`RunFolder.resume_from`).

    Args:
        cfg: the run's config (its ``run.out_dir`` is where ``resume=True`` looks).
        resume: False (fresh), True (``<out_dir>/checkpoints/last.pt`` when it exists, else fresh),
            or a checkpoint file, checkpoint folder (a Ray checkpoint folder) or run folder.

    Raises:
        FileNotFoundError: ``resume`` is a path with no checkpoint there.
    """
    path = RunFolder(cfg.run.out_dir).resume_from(resume)
    return str(path.resolve()) if path is not None else None


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


def _process_settings(cfg: TrainConfig) -> None:
    """What a process that trains sets for itself: glibc keeps freed memory (``run.keep_freed_memory``,
    :func:`emgscale.malloc.keep_freed_memory`: a step's large activations stop being page-faulted in anew)."""
    if cfg.run.keep_freed_memory:
        from emgscale.malloc import keep_freed_memory

        keep_freed_memory()


def _worker(config: dict[str, Any]) -> None:
    """Ray Train worker: the loop with Ray reporting, resuming from the newest checkpoint after a restart."""
    import ray.train

    if config.get("cwd") and os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])  # relative data paths mean what they meant to the driver
    cfg = from_dict(TrainConfig, config["cfg"])
    _process_settings(cfg)
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
            local = RunFolder(cfg.run.out_dir).last
            ray_last = checkpoint_file(stack.enter_context(restored.as_directory()))
            newest = _newest_checkpoint([ray_last, local])
            resume, resumed_from = str(newest), restored.path if newest == ray_last else str(local)
            print0(f"[launch] worker group restarted: resuming from {resumed_from}")
        result = train(cfg, resume=resume, report=report)
    # One last report carries the final checkpoint (with the SWAD/SWA average, written after the last
    # validation), so Ray's result points at the finished model.
    final = {"final": True, "step": result.steps, "epoch": result.epochs, "best_val_score": result.best_val_score,
             "wall_s": result.wall_s, "world_size": result.world_size, "resumed_from": resumed_from,
             **{TIMING_PREFIX + k: v for k, v in result.timings.items()}}
    last = Path(result.last_checkpoint).parent if result.last_checkpoint else None
    ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(str(last)) if last else None)


def fit_on_ray(cfg: TrainConfig, resume: bool | str = False) -> TrainResult:
    """The loop on ``cfg.run.workers`` Ray Train workers (see the module docstring).

    :func:`launch` calls this when :func:`wants_ray`; call it directly only to force Ray Train for a
    run that would otherwise stay in-process (e.g. to measure Ray's overhead with one worker).
    """
    t_start = time.monotonic()
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
        print0(f"[launch] --resume: no {RunFolder(cfg.run.out_dir).last} yet; starting fresh")
    storage = cfg.run.storage_path or str(RunFolder(cfg.run.out_dir).ray_storage)
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    # A fresh name per job: Ray Train V2 would otherwise silently restore an earlier run of that name.
    name = f"{Path(cfg.run.out_dir).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    t_ray = time.monotonic()
    where = connect(cfg.run.ray_address, use_gpu=cfg.run.use_gpu, workers=workers)  # reused when connected
    ray_start_s = time.monotonic() - t_ray
    cluster.require_resources(cluster.worker_needs(workers, cfg.run.use_gpu),
                              0 if cluster.is_local_instance() else cfg.run.resource_timeout_s, where)
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
        ck = load_checkpoint(checkpoint_file(d))
        ray_best = Path(result.checkpoint.path) / BEST
    local = RunFolder(cfg.run.out_dir)
    last = local.last if local.last.is_file() else Path(result.checkpoint.path) / LAST
    best = local.best if local.best.is_file() else None
    if best is None and "://" not in storage and ray_best.is_file():
        best = ray_best
    metrics = result.metrics or {}
    info = {"name": name, "storage": storage, "world_size": int(metrics.get("world_size", workers)),
            "checkpoint": result.checkpoint.path, "run_path": result.path,
            "resumed_from": metrics.get("resumed_from") or None, "started_from": start_from}
    atomic_write_json(local.ray_result, info)
    timings = ray_timings(metrics, ray_start_s, time.monotonic() - t_start)
    atomic_write_json(local.timings, timings)
    print0(f"[launch] done; final checkpoint in Ray storage: {result.checkpoint.path}"
           + (f" (the worker group was restarted from {info['resumed_from']})" if info["resumed_from"] else ""))
    return TrainResult(out_dir=cfg.run.out_dir, steps=ck.step, epochs=ck.epoch, best_val_score=ck.best_val_score,
                       best_val_metric=ck.best_val_metric,
                       last_checkpoint=str(last), best_checkpoint=str(best) if best else None,
                       history=list(ck.history), wall_s=time.monotonic() - t0, world_size=info["world_size"],
                       timings=timings)


def ray_timings(metrics: dict[str, Any], ray_start_s: float, total_s: float) -> dict[str, float]:
    """A Ray Train run's :attr:`TrainResult.timings`: rank 0's parts from its final report (``metrics``),
    ``ray_start_s`` the driver's connect, ``total_s`` the driver's whole fit (worker start-up included)."""
    parts = {k: float(metrics.get(TIMING_PREFIX + k, 0.0)) for k in TIMING_KEYS}
    return {**parts, "ray_start_s": ray_start_s, "total_s": max(total_s, ray_start_s + sum(
        v for k, v in parts.items() if k not in ("ray_start_s", "total_s")))}
