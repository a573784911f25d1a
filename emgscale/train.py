"""The one training loop: CTC models on one device, or on every rank of a DDP job (Ray Train wraps it).

``python -m emgscale.train [CONFIG.yaml ...] [dotted.key=value ...] [--resume]``

The loop takes a :class:`TrainConfig` and returns a :class:`TrainResult`. It never imports Ray:
distribution comes from an initialised ``torch.distributed`` process group (set up by Ray Train or
torchrun), and reporting is a callable passed in.

Per step: CTC loss on the model's log-probs and *its* output lengths, Adam/AdamW, linear warm-up then
cosine decay (the reference schedule), optional gradient clipping and bf16 autocast. Per epoch (and
every ``run.eval_every_steps``): validation loss and greedy CER; ``best.pt`` by val CER. ``last.pt``
every ``run.ckpt_every_steps`` and at the end, written atomically; ``--resume`` restores model,
optimiser, scheduler, step, data position and RNG state, so a killed run continues exactly.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from emgscale.checkpoint import BEST, LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from emgscale.common import is_main, print0, progress, rank, world_size
from emgscale.config import ConfigError, build_config, save_config, to_dict
from emgscale.loader import DataConfig, build_loader
from emgscale.models import ModelConfig, build_model
from emgscale.swad import SWADConfig, WeightAverager
from emgscale.train_log import MetricsLogger, ctc_loss, evaluate_ctc


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
    """Where the run writes, how long it runs, on what, and how it is distributed."""

    out_dir: str = "runs/default"
    seed: int = 1501
    max_epochs: int = 150
    max_steps: int = 0  # > 0: stop after this many steps (the schedule still spans max_epochs)
    steps_per_epoch: int = 0  # 0: the train loader's length
    eval_every_steps: int = 0  # 0: validate at the end of each epoch only
    val_max_batches: int = 0  # 0: the whole validation set
    ckpt_every_steps: int = 200
    log_every_steps: int = 10
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = False  # bf16 autocast (CPU and GPU)
    compile: bool = False  # torch.compile the model
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    init_from: str | None = None  # fine-tune: load model weights from this checkpoint
    tensorboard: bool = True
    # Distribution (emgscale.ray_train): workers > 1 or a Ray address runs on Ray Train.
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
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    swad: SWADConfig = field(default_factory=SWADConfig)


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: str
    steps: int
    epochs: int
    best_val_cer: float
    last_checkpoint: str | None
    best_checkpoint: str | None
    history: list[dict[str, Any]]
    wall_s: float


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress_ = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress_))


def _device(cfg: RunConfig) -> torch.device:
    if cfg.device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(cfg.device)


def _optimizer(cfg: OptimConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optim.optimizer: unknown optimizer {cfg.optimizer!r} (adam | adamw)")


def train(cfg: TrainConfig, *, resume: bool | str = False,
          report: Callable[[dict[str, Any], Path | None], None] | None = None) -> TrainResult:
    """Train a CTC model as ``cfg`` says; every rank of a DDP job calls this.

    Args:
        cfg: the resolved config.
        resume: True to continue from ``<out_dir>/checkpoints/last.pt`` when it exists, or a path
            to a checkpoint to continue from.
        report: called on every rank after each validation with the metrics and, on rank 0, the
            checkpoint folder just written (Ray Train's ``report`` goes here).

    Returns:
        The run's :class:`TrainResult`.
    """
    t_start = time.monotonic()
    out_dir = Path(cfg.run.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    world, rnk = world_size(), rank()
    if cfg.data.batch_size % world:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by {world} workers")
    local_batch = cfg.data.batch_size // world
    torch.manual_seed(cfg.run.seed + rnk)
    np.random.seed((cfg.run.seed + rnk) % 2**32)
    device = _device(cfg.run)
    torch.set_flush_denormal(True)  # denormals can slow CPU kernels (GRU, conv) by orders of magnitude

    model = build_model(cfg.model).to(device)
    if cfg.run.init_from:
        init = load_checkpoint(cfg.run.init_from)
        model.load_state_dict(init["model"])
        print0(f"[train] initialised weights from {cfg.run.init_from}")
    optimizer = _optimizer(cfg.optim, model.parameters())

    def train_loader(epoch: int):
        return build_loader(cfg.data, "train", train=True, seed=cfg.run.seed, epoch=epoch, rank=rnk,
                            world_size=world, batch_size=local_batch)

    steps_per_epoch = cfg.run.steps_per_epoch or len(train_loader(0))
    if steps_per_epoch <= 0:
        raise ConfigError("the training data yields no batch: check data.split / data.shards and the window size")
    total_steps = steps_per_epoch * cfg.run.max_epochs
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup, total_steps, cfg.optim.min_lr / cfg.optim.lr))
    averager = WeightAverager(cfg.swad)

    step, epoch, step_in_epoch, best_cer, history = 0, 0, 0, float("inf"), []
    restored_rng = None
    resume_path = ckpt_dir / LAST if resume is True else (Path(resume) if resume else None)
    if resume_path is not None and resume_path.exists():
        ck = load_checkpoint(resume_path)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        averager.load_state_dict(ck.get("averager") or {})
        step, epoch, step_in_epoch = ck["step"], ck["epoch"], ck["step_in_epoch"]
        best_cer, history = ck.get("best_val_cer", float("inf")), ck.get("history", [])
        restored_rng = ck["rng"][rnk % len(ck["rng"])]  # one state per rank
        print0(f"[train] resumed from {resume_path} at step {step} (epoch {epoch}, batch {step_in_epoch})")
    elif resume is not False and resume is not True:
        raise FileNotFoundError(f"{resume_path}: no checkpoint to resume from")

    if is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    resumed = resume_path is not None and resume_path.exists()
    logger = MetricsLogger(out_dir, tensorboard=cfg.run.tensorboard, resume_step=step if resumed else None) \
        if is_main() else None
    net: torch.nn.Module = model
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.run.compile:
        net = torch.compile(net)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.run.bf16)
    sample_rate = cfg.model.features.input_sample_rate_hz

    def save(name: str, extra: dict[str, Any] | None = None) -> Path | None:
        rngs = [rng_state()]
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, rng_state())
            rngs = gathered
        if not is_main():
            return None
        return save_checkpoint(
            ckpt_dir / name, model=model.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), step=step, epoch=epoch, step_in_epoch=step_in_epoch,
            rng=rngs, config=to_dict(cfg), best_val_cer=best_cer, history=history,
            averager=averager.state_dict(), averaged_model=averager.averaged_state_dict(), **(extra or {}))

    def validate() -> dict[str, Any]:
        nonlocal best_cer
        val = build_loader(cfg.data, "val", train=False, seed=cfg.run.seed, rank=rnk, world_size=world,
                           batch_size=local_batch)
        with torch.autocast(**autocast):
            metrics = evaluate_ctc(model, val, device, max_batches=cfg.run.val_max_batches)
        averager.after_validation(model, metrics["val_loss"], step)
        row = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **metrics}
        history.append(row)
        improved = metrics["val_cer"] < best_cer
        best_cer = min(best_cer, metrics["val_cer"])
        path = save(LAST)
        if improved:  # metrics are reduced over ranks, so every rank agrees (save gathers RNG states)
            save(BEST)
        if logger:
            logger.log(row, step)
        print0(f"[train] step {step} epoch {epoch}: val loss {metrics['val_loss']:.3f} CER {metrics['val_cer']:.2%}"
               f" (best {best_cer:.2%})")
        if report is not None:
            report(row, path.parent if path is not None else None)
        return row

    done = cfg.run.max_steps > 0 and step >= cfg.run.max_steps
    emg_seconds, t_rate = 0.0, time.monotonic()
    while epoch < cfg.run.max_epochs and not done:
        batches = _epoch_batches(train_loader, epoch, steps_per_epoch)
        for _ in range(step_in_epoch):  # fast-forward to the resumed position in this epoch
            next(batches)
        if restored_rng is not None:
            set_rng_state(restored_rng)
            restored_rng = None
        model.train()
        remaining = steps_per_epoch - step_in_epoch
        bar = progress(batches, total=remaining, desc=f"epoch {epoch}", unit="step",
                       postfix=lambda: {"loss": f"{last_loss:.3f}", "EMG-s/s": f"{rate:.1f}"})
        last_loss, rate = float("nan"), 0.0
        for batch in bar:
            batch = batch.to(device)
            with torch.autocast(**autocast):
                log_probs, out_lengths = net(batch.emg, batch.emg_lengths)
            loss = ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                         if cfg.optim.grad_clip > 0 else None)
            optimizer.step()
            scheduler.step()
            averager.after_step(model, step)
            step += 1
            step_in_epoch += 1
            last_loss = float(loss.detach())
            emg_seconds += float(batch.emg_lengths.sum()) / sample_rate * world
            if step % cfg.run.log_every_steps == 0:
                now = time.monotonic()
                rate = emg_seconds / max(now - t_rate, 1e-9)
                emg_seconds, t_rate = 0.0, now
                if logger:
                    logger.log({"step": step, "epoch": epoch, "train_loss": last_loss, "lr": scheduler.get_last_lr()[0],
                                "emg_s_per_s": rate, **({"grad_norm": float(grad_norm)} if grad_norm is not None else {})},
                               step)
            if cfg.run.ckpt_every_steps and step % cfg.run.ckpt_every_steps == 0:
                save(LAST)
            if cfg.run.eval_every_steps and step % cfg.run.eval_every_steps == 0:
                validate()
                model.train()
            if cfg.run.max_steps > 0 and step >= cfg.run.max_steps:
                break
        done = cfg.run.max_steps > 0 and step >= cfg.run.max_steps
        if step_in_epoch >= steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
            if not cfg.run.eval_every_steps or step % cfg.run.eval_every_steps:
                validate()
    if not history or history[-1]["step"] != step:
        validate()
    if averager.has_average():
        averager.finalize(model, lambda: build_loader(cfg.data, "train", train=False, seed=cfg.run.seed, rank=rnk,
                                                      world_size=world, batch_size=local_batch), device)
    last = save(LAST)
    if logger:
        logger.close()
    best = ckpt_dir / BEST
    return TrainResult(str(out_dir), step, epoch, best_cer, str(last) if last else None,
                       str(best) if best.exists() else None, history, time.monotonic() - t_start)


def _epoch_batches(make_loader: Callable[[int], Any], epoch: int, steps: int) -> Iterator[Any]:
    """Exactly ``steps`` batches for ``epoch``: passes over the training data (each seeded by
    ``(epoch, pass)``) until the epoch is full, so a fixed epoch length works with any amount of data."""
    made = 0
    for n_pass in itertools.count():
        got = 0
        for batch in make_loader(epoch * 1_000 + n_pass):
            yield batch
            made, got = made + 1, got + 1
            if made >= steps:
                return
        if got == 0:
            raise ConfigError(f"the training data yields no batch in epoch {epoch}: check data.split / data.shards")


def load_train_config(paths: list[str], overrides: list[str]) -> TrainConfig:
    """Defaults, then YAML files (each may hold any subset of the sections), then overrides."""
    return build_config(TrainConfig, paths, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emgscale.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", help="YAML config files and dotted.key=value overrides")
    parser.add_argument("--resume", nargs="?", const=True, default=False,
                        help="continue from <out_dir>/checkpoints/last.pt, or from the checkpoint given")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ns = parser.parse_args(argv)
    files = [a for a in ns.args if "=" not in a]
    overrides = [a for a in ns.args if "=" in a]
    try:
        cfg = load_train_config(files, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if ns.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    if cfg.run.workers > 1 or cfg.run.ray_address or os.environ.get("RAY_ADDRESS"):
        from emgscale.ray_train import fit

        result = fit(cfg, resume=ns.resume)
    else:
        result = train(cfg, resume=ns.resume)
    print0(f"[train] done: {result.steps} steps, best val CER {result.best_val_cer:.2%}, "
           f"checkpoints in {Path(result.out_dir) / 'checkpoints'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
