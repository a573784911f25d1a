"""The one training loop: CTC models on one device, or on every rank of a DDP job (Ray Train wraps it).

:func:`train` takes a :class:`~emgscale.train.config.TrainConfig` and returns a
:class:`~emgscale.train.config.TrainResult`. It never imports Ray: distribution comes from an
initialised ``torch.distributed`` process group (set up by Ray Train or torchrun), and reporting is a
callable passed in. Callers go through :func:`emgscale.train.launch`, which decides in-process vs Ray.

Per step: the objective's loss (``loss.kind``; CTC on the model's log-probs and *its* output lengths by
default, :mod:`emgscale.train.objective`), Adam/AdamW, linear warm-up then
cosine decay (the reference schedule), optional gradient clipping and bf16 autocast (fp16 with loss
scaling on a GPU without bf16). A step whose loss or gradient is not finite is skipped (counted;
``run.max_nonfinite_steps`` of them stop the run with an error), so nothing non-finite reaches the
weights or a checkpoint; running statistics a bad batch made non-finite are restored and its sessions
named (:mod:`emgscale.train.guard`). The step's one host synchronisation is that finiteness check; the
loss is read back only at logging steps.

Per epoch (and every ``run.eval_every_steps``), or ``run.val_times`` times per run at evenly spaced steps
whatever the epoch length (:func:`~emgscale.train.cadence.validation_steps`), and at the end: the objective's validation (loss and
greedy CER for CTC); ``best.pt`` by its metric (``best_val_score`` holds the best value of it, ``best_val_metric`` its name).
``last.pt`` every ``run.ckpt_every_steps`` and at the end, written atomically (the run folder's layout:
:class:`~emgscale.run_folder.RunFolder`); ``resume``
restores model, optimiser, scheduler, step, data position and RNG state, so a killed run continues
exactly. The loop's state is one :class:`TrainState` value, passed explicitly.

The training data come from one loader per epoch, an epoch long however small the data
(:func:`~emgscale.train.cadence.epoch_batches`). Where the wall time went (pipeline builds, data waits,
steps, validation, checkpoints) is ``TrainResult.timings`` and ``timings.json`` (:mod:`emgscale.train.timings`).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from emgscale.common import atomic_write_json, format_seconds, is_main, print0, progress, rank, resolve_device, world_size
from emgscale.config import ConfigError, save_config, to_dict
from emgscale.loader import DataConfig, build_loader
from emgscale.models import build_model, forward_batch
from emgscale.models.checkpoint import (Checkpoint, load_checkpoint, load_weights, rng_state, save_checkpoint,
                                        set_rng_state)
from emgscale.run_folder import BEST, LAST, RunFolder
from emgscale.swad import WeightAverager
from emgscale.train.config import OptimConfig, TrainConfig, TrainResult
from emgscale.train.finetune import load_plain_weights, plain_state_dict, prepare_finetune
from emgscale.train.guard import restore_poisoned_stats, running_stats
from emgscale.train.metrics_log import MetricsLogger
from emgscale.train.cadence import epoch_batches, validation_steps
from emgscale.train.timings import Timings
from emgscale.train.objective import Objective, build_objective

Report = Callable[[dict[str, Any], "Path | None"], None]


@dataclass
class TrainState:
    """Where the loop is: everything that changes as it runs and that a checkpoint restores.

    ``best_val_score`` is the best value so far of the objective's validation metric (CER for CTC, frame
    error for frame classification); ``run_id`` names the run in every checkpoint it writes.
    """

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_val_score: float = math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    nonfinite_steps: int = 0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class _Run:
    """What the loop works with and does not change: model, optimiser, data settings, device, writers."""

    cfg: TrainConfig
    data: DataConfig
    objective: Objective
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    averager: WeightAverager
    device: torch.device
    autocast: dict[str, Any]
    scaler: "torch.amp.GradScaler"
    world: int
    rank: int
    local_batch: int
    folder: RunFolder
    logger: MetricsLogger | None
    report: Report | None
    timings: Timings = field(default_factory=Timings)
    val_steps: frozenset[int] = frozenset()  # run.val_times: the steps that validate (else each epoch's end)

    def loader(self, part: str, train: bool, epoch: int = 0, steps: int | None = None) -> Any:
        """Batches of ``part``; ``steps``: a training loader exactly that many batches long (as many passes over
        the data as it takes, each reshuffled), built once however small the data."""
        data = self.data if steps is None else replace(self.data, train_samples_per_epoch=steps * self.local_batch
                                                       * self.world)
        return build_loader(data, part, train=train, seed=self.cfg.run.seed, epoch=epoch, rank=self.rank,
                            world_size=self.world, batch_size=self.local_batch, features=self.cfg.model.features)


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress_ = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress_))


def _optimizer(cfg: OptimConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optim.optimizer: unknown optimizer {cfg.optimizer!r} (adam | adamw)")


def _precision(bf16: bool, device: torch.device) -> tuple[dict[str, Any], bool]:
    """Autocast settings and whether to scale the loss: bf16 where the device has it, else fp16 + scaling."""
    if not bf16:
        return {"device_type": device.type, "enabled": False}, False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print0(f"[train] {torch.cuda.get_device_name(device)} has no bf16: training in fp16 with loss scaling")
        return {"device_type": "cuda", "dtype": torch.float16, "enabled": True}, True
    if device.type == "cpu" and not cpu_has_bf16():
        # oneDNN has no bf16 kernels without AVX-512 BF16 / AMX: bf16 matmuls run 10-60x slower than fp32 there.
        print0("[train] run.bf16: this CPU has no bf16 instructions (avx512_bf16 / amx_bf16), where bf16 is "
               "10-60x slower than fp32: training in fp32")
        return {"device_type": "cpu", "enabled": False}, False
    return {"device_type": device.type, "dtype": torch.bfloat16, "enabled": True}, False


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo; other
    architectures and systems without that file: True, autocast decides)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    if "flags" not in flags:
        return True  # not an x86 cpuinfo
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _resume_path(folder: RunFolder, resume: bool | str) -> Path | None:
    """The checkpoint to continue from (:meth:`RunFolder.resume_from`), saying so when ``--resume`` finds none."""
    path = folder.resume_from(resume)
    if resume is True and path is None:
        print0(f"[train] --resume: no {folder.last} yet; starting a fresh run")
    return path


def _init_weights(model: torch.nn.Module, path: str, new_head: bool) -> None:
    """Load a checkpoint's weights; with ``new_head`` all but the head's (``head.*``), which stay fresh."""
    weights = load_checkpoint(path).model
    if new_head:
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
        weights.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    load_weights(model, weights, f"run.init_from={path}")
    print0(f"[train] initialised weights from {path}" + (" (new head)" if new_head else ""))


def _freeze(model: torch.nn.Module, prefixes: list[str]) -> None:
    """Stop training the parameters whose names start with one of ``prefixes``."""
    frozen = 0
    for name, p in model.named_parameters():
        if any(name == q or name.startswith(q + ".") for q in prefixes):
            p.requires_grad_(False)
            frozen += p.numel()
    if prefixes:
        if not frozen:
            raise ConfigError(f"run.freeze: {prefixes} names no parameter of the model")
        print0(f"[train] frozen: {', '.join(prefixes)} ({frozen:,} parameters)")


def train(cfg: TrainConfig, *, resume: bool | str = False, report: Report | None = None) -> TrainResult:
    """Train a CTC model as ``cfg`` says; every rank of a DDP job calls this.

    Args:
        cfg: the resolved config.
        resume: True to continue from ``<out_dir>/checkpoints/last.pt`` when it exists (a message
            says when it does not and the run starts fresh), or a path to a checkpoint to continue from.
        report: called on every rank after each validation with the metrics and, on rank 0, the
            checkpoint folder just written (Ray Train's ``report`` goes here).

    Returns:
        The run's :class:`TrainResult`.

    Raises:
        ConfigError: settings that cannot work (a batch the workers cannot split, no training data,
            data settings that do not work together: :meth:`~emgscale.loader.base.DataConfig.check`).
        FloatingPointError: more than ``run.max_nonfinite_steps`` steps had a non-finite loss.
    """
    t_start = time.monotonic()
    cfg.data.check(cfg.model.augment)  # before any work (launch's check_train_config calls it too)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    world, rnk = world_size(), rank()
    global_batch = cfg.data.global_batch_size(world)
    if global_batch % world:
        raise ConfigError(f"data.batch_size {global_batch} is not divisible by {world} workers")
    torch.manual_seed(cfg.run.seed + rnk)
    np.random.seed((cfg.run.seed + rnk) % 2**32)
    device = resolve_device(cfg.run.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_flush_denormal(True)  # denormals can slow CPU kernels (GRU, conv) by orders of magnitude

    model = build_model(cfg.model).to(device)
    if cfg.run.init_from:
        _init_weights(model, cfg.run.init_from, cfg.run.init_new_head)
    _freeze(model, cfg.run.freeze)
    groups = prepare_finetune(model, cfg.finetune, cfg.optim.lr, bool(cfg.run.init_from))  # finetune.mode, layer rates
    optimizer = _optimizer(cfg.optim, groups)
    data = cfg.data.for_device(device.type, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    folder = RunFolder(cfg.run.out_dir)
    autocast, scaled = _precision(cfg.run.bf16, device)
    run = _Run(cfg=cfg, data=data, objective=build_objective(cfg), model=model, net=model, optimizer=optimizer, scheduler=None,  # type: ignore[arg-type]
               averager=WeightAverager(cfg.swad, store_dir=folder.swad, is_main=is_main()),
               device=device, autocast=autocast,
               scaler=torch.amp.GradScaler(device.type, enabled=scaled), world=world, rank=rnk,
               local_batch=global_batch // world, folder=folder, logger=None, report=report)

    with run.timings.timed("pipeline_build_s"):
        steps_per_epoch = cfg.run.steps_per_epoch or len(run.loader("train", True))
    if steps_per_epoch <= 0:
        raise ConfigError("the training data yields no batch: check data.split / data.shards and the window size")
    total_steps = steps_per_epoch * cfg.run.max_epochs
    total_steps_run = min(cfg.run.max_steps, total_steps) if cfg.run.max_steps > 0 else total_steps
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    run.val_steps = validation_steps(cfg.run.val_times, total_steps_run)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup, total_steps, cfg.optim.min_lr / cfg.optim.lr))

    state, restored_rng = TrainState(), None
    resume_path = _resume_path(folder, resume)
    if resume_path is not None:
        ck = load_checkpoint(resume_path)
        if not ck.resumable:
            raise ValueError(f"{resume_path}: a weights-only checkpoint cannot be resumed (use run.init_from)")
        load_plain_weights(model, ck.model, str(resume_path))
        optimizer.load_state_dict(ck.optimizer)
        run.scheduler.load_state_dict(ck.scheduler)
        run.averager.load_state_dict(ck.averager or {})
        state = TrainState(ck.step, ck.epoch, ck.step_in_epoch, ck.best_val_score, list(ck.history),
                           run_id=ck.run_id or uuid.uuid4().hex)
        restored_rng = ck.rng[rnk % len(ck.rng)] if ck.rng else None  # one state per rank
        print0(f"[train] resumed from {resume_path} at step {state.step} (epoch {state.epoch}, "
               f"batch {state.step_in_epoch})")

    if is_main():
        folder.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, folder.config)
        run.logger = MetricsLogger(cfg.run.out_dir, tensorboard=cfg.run.tensorboard,
                                   resume_step=state.step if resume_path is not None else None)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.run.compile:
        run.net = torch.compile(run.net)

    done = cfg.run.max_steps > 0 and state.step >= cfg.run.max_steps
    t_loop, step_at_start = time.monotonic(), state.step
    while state.epoch < cfg.run.max_epochs and not done:
        # One loader per epoch, an epoch long when run.steps_per_epoch sets the length (a few minutes of a
        # user's data can be a pass every step; rebuilding the pipeline for each cost as much as the step).
        epoch_steps = steps_per_epoch if cfg.run.steps_per_epoch else None
        batches = epoch_batches(lambda e: run.timings.batches(lambda: run.loader("train", True, e, epoch_steps)),
                                 state.epoch, steps_per_epoch)
        for _ in range(state.step_in_epoch):  # fast-forward to the resumed position in this epoch
            next(batches)
        if restored_rng is not None:
            set_rng_state(restored_rng)
            restored_rng = None
        model.train()
        _train_epoch(run, state, batches, steps_per_epoch, total_steps_run, t_loop, step_at_start)
        done = cfg.run.max_steps > 0 and state.step >= cfg.run.max_steps
        if state.step_in_epoch >= steps_per_epoch:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            if not run.val_steps and (not cfg.run.eval_every_steps or state.step % cfg.run.eval_every_steps):
                _validate(run, state)
    if not state.history or state.history[-1]["step"] != state.step:
        _validate(run, state)
    if run.averager.has_average():
        run.averager.finalize(model, lambda: run.loader("train", False), device)
    last = _save(run, state, LAST)
    if run.logger:
        run.logger.close()
    best = folder.best
    run.timings.add("total_s", time.monotonic() - t_start)
    timings = run.timings.as_dict()
    if is_main():
        atomic_write_json(folder.timings, timings)
    return TrainResult(str(cfg.run.out_dir), state.step, state.epoch, state.best_val_score, run.objective.metric,
                       str(last) if last else None, str(best) if best.exists() else None, state.history,
                       timings["total_s"], world, timings)


def _train_epoch(run: _Run, state: TrainState, batches: Iterator[Any], steps_per_epoch: int, total_steps: int,
                 t_loop: float, step_at_start: int) -> None:
    """Optimiser steps until the epoch is full (or ``run.max_steps``), validating and saving on schedule."""
    cfg = run.cfg.run
    rate = {"loss": float("nan"), "emg_s": 0.0}

    def postfix() -> dict[str, str]:
        done = state.step - step_at_start
        eta = (time.monotonic() - t_loop) / done * (total_steps - state.step) if done else float("nan")
        return {"loss": f"{rate['loss']:.3f}" if math.isfinite(rate["loss"]) else "-", "EMG-s/s": f"{rate['emg_s']:.1f}",
                "run ETA": format_seconds(eta) if math.isfinite(eta) else "?"}

    bar = progress(batches, total=steps_per_epoch - state.step_in_epoch, desc=f"epoch {state.epoch}", unit="step",
                   postfix=postfix)
    loss_sum = torch.zeros((), device=run.device)
    emg_samples, t_rate, since_log = 0, time.monotonic(), 0
    sample_rate = run.cfg.model.features.input_sample_rate_hz
    stats = running_stats(run.model)
    for batch in bar:
        t_step = time.monotonic()
        emg_samples += int(batch.emg_lengths.sum())  # a CPU tensor: no device sync
        gpu = batch.to(run.device)
        saved = [b.detach().clone() for b in stats]  # restored if this batch's forward poisons them
        with torch.autocast(**run.autocast):
            log_probs, out_lengths = forward_batch(run.net, gpu)  # raw EMG, or cached spectra
        loss = run.objective.loss(log_probs, out_lengths, gpu, state.step)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(),
                                                   run.cfg.optim.grad_clip if run.cfg.optim.grad_clip > 0 else math.inf)
        # The step's one host sync. Under DDP the gradient (hence its norm) is the same on every rank,
        # so every rank takes the same decision; alone, the loss and the running statistics are checked
        # too (under DDP those differ by rank, and a batch that poisons them makes the gradient
        # non-finite anyway: BatchNorm normalises a training batch with its own statistics).
        check = grad_norm if run.world > 1 else grad_norm + loss.detach()
        if stats and run.world == 1:
            check = check + torch.stack([b.sum() for b in stats]).sum()
        if not run.scaler.is_enabled() and not bool(torch.isfinite(check)):
            restore_poisoned_stats(stats, saved, batch.keys, skip_bad=run.data.skip_bad, world=run.world,
                                   device=run.device)
            _skip_step(run, state)
            run.timings.add("step_s", time.monotonic() - t_step)
            continue
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        run.averager.after_step(run.model, state.step)
        run.timings.add("step_s", time.monotonic() - t_step)
        state.step += 1
        state.step_in_epoch += 1
        loss_sum += loss.detach()
        since_log += 1
        if state.step % cfg.log_every_steps == 0:
            now = time.monotonic()
            rate["loss"] = float(loss_sum) / since_log
            rate["emg_s"] = emg_samples / sample_rate * run.world / max(now - t_rate, 1e-9)
            loss_sum.zero_()
            emg_samples, t_rate, since_log = 0, now, 0
            if run.logger:
                run.logger.log({"step": state.step, "epoch": state.epoch, "train_loss": rate["loss"],
                                "lr": run.scheduler.get_last_lr()[0], "emg_s_per_s": rate["emg_s"],
                                "grad_norm": float(grad_norm), "nonfinite_steps": state.nonfinite_steps}, state.step)
        if cfg.ckpt_every_steps and state.step % cfg.ckpt_every_steps == 0:
            _save(run, state, LAST)
        if (cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0) or state.step in run.val_steps:
            _validate(run, state)
            run.model.train()
        if cfg.max_steps > 0 and state.step >= cfg.max_steps:
            break


def _skip_step(run: _Run, state: TrainState) -> None:
    """Drop a step whose loss or gradient is not finite (its batch counts as read, so a resumed run
    sees the same data); too many of them end the run."""
    run.optimizer.zero_grad(set_to_none=True)
    state.nonfinite_steps += 1
    state.step_in_epoch += 1
    print0(f"[train] step {state.step}: non-finite loss or gradient; step skipped "
           f"({state.nonfinite_steps} so far, at most {run.cfg.run.max_nonfinite_steps})")
    if state.nonfinite_steps > run.cfg.run.max_nonfinite_steps:
        raise FloatingPointError(
            f"{state.nonfinite_steps} training steps had a non-finite loss or gradient (run.max_nonfinite_steps="
            f"{run.cfg.run.max_nonfinite_steps}); the last checkpoint in {run.folder.checkpoints} holds finite weights. "
            "Check the data (python -m emgscale.data info / python -m emgscale.shard verify) or lower optim.lr")


def _save(run: _Run, state: TrainState, name: str) -> Path | None:
    """Write checkpoint ``name`` on rank 0 (every rank's RNG state gathered into it)."""
    rngs = [rng_state()]
    if run.world > 1:
        gathered: list[Any] = [None] * run.world
        torch.distributed.all_gather_object(gathered, rng_state())
        rngs = gathered
    if not is_main():
        return None
    ck = Checkpoint(model=plain_state_dict(run.model), config=to_dict(run.cfg), step=state.step, epoch=state.epoch,
                    step_in_epoch=state.step_in_epoch, best_val_score=state.best_val_score,
                    best_val_metric=run.objective.metric, run_id=state.run_id, history=state.history,
                    optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(), rng=rngs,
                    averager=run.averager.state_dict(), averaged_model=run.averager.averaged_state_dict())
    with run.timings.timed("checkpoint_s"):
        return save_checkpoint(run.folder.checkpoints / name, ck)


def _validate(run: _Run, state: TrainState) -> dict[str, Any]:
    """Validation loss and CER; ``last.pt`` (and ``best.pt`` when the CER improved); log and report."""
    with run.timings.timed("validation_s"):
        metrics = run.objective.validate(run.model, run.loader("val", False), run.device,
                                         run.cfg.run.val_max_batches, run.autocast)
        run.averager.after_validation(run.model, metrics["val_loss"], state.step)
    row = {"step": state.step, "epoch": state.epoch, "lr": run.scheduler.get_last_lr()[0], **metrics}
    state.history.append(row)
    score = metrics[run.objective.metric]
    improved = score < state.best_val_score
    state.best_val_score = min(state.best_val_score, score)
    path = _save(run, state, LAST)
    if improved:  # metrics are reduced over ranks, so every rank agrees (saving gathers RNG states)
        _save(run, state, BEST)
    if run.logger:
        run.logger.log(row, state.step)
    name = run.objective.metric.removeprefix("val_").upper()
    print0(f"[train] step {state.step} epoch {state.epoch}: val loss {metrics['val_loss']:.3f} "
           f"{name} {score:.2%} (best {state.best_val_score:.2%})")
    if run.report is not None:
        run.report(row, path.parent if path is not None else None)
    return row
