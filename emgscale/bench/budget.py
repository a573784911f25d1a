"""Budgets: how much compute a benchmark spends (epochs, model sizes, corpus size, users).

``tiny`` is for tests (seconds), ``small`` is sized so ``bench all --jobs 2`` fits an hour on 2 unloaded CPU
cores (400-step models, an 800-step generic model, the keystroke-time auxiliary loss and a label-prior
output bias; timed end to end: 49.5 min, ``benchmarks/bench_suite.py``, see benchmarks/README.md), ``paper`` uses the paper's settings (150 epochs, batch 32, full-size models)
and is meant for GPUs and Ray clusters (``run.workers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Budget:
    """Compute settings shared by every benchmark.

    Attributes:
        name: ``tiny`` | ``small`` | ``paper``.
        train: ``dotted.key=value`` overrides applied to every training run.
        finetune: overrides for fine-tuning runs (personalized, few-shot), on top of ``train``.
        generic: overrides for the generic (multi-user) model, on top of ``train`` (e.g. a longer run:
            one generic model serves zero_shot, personalized and few_shot).
        model_suffix: model config variant (``configs/models/<arch><suffix>.yaml`` when it exists).
        corpus: synthetic corpus flags (used only when no ``--data-root`` is given).
        max_heldout_users: evaluate at most this many held-out users (0 = all).
        lm_order: character n-gram order of the LM.
    """

    name: str
    train: tuple[str, ...]
    finetune: tuple[str, ...]
    model_suffix: str
    corpus: dict = field(default_factory=dict)
    generic: tuple[str, ...] = ()
    max_heldout_users: int = 0
    lm_order: int = 6


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        name="tiny",
        train=("run.max_epochs=2", "run.steps_per_epoch=3", "data.batch_size=4", "optim.warmup_epochs=0.5",
               "run.ckpt_every_steps=0", "run.log_every_steps=1", "run.tensorboard=false", "swad.n_converge=1",
               "swad.n_tolerance=1", "optim.lr=3e-3"),
        finetune=("run.max_epochs=1", "run.steps_per_epoch=2", "optim.warmup_epochs=0"),
        model_suffix="_tiny",
        corpus={"users": 4, "sessions_per_user": 6, "minutes": 0.3, "heldout_users": 2, "contact_artifact_prob": 0.0},
        max_heldout_users=1,
        lm_order=4,
    ),
    "small": Budget(
        name="small",
        # 400 steps of 16 x 4 s windows from scratch (the generic model, which serves zero_shot, personalized
        # and few_shot, 800). Adam 5e-3 with clipping, cosine only down to 1e-3 (a decay to ~0 stopped the
        # learning that had just begun), the keystroke-time auxiliary loss (loss.aux=keys, decayed to 0 over
        # the first half) and the output bias initialised to the label prior (blank 0.9): together they took
        # CNN+BiGRU-small off the CTC blank plateau by step 75 (53 % val CER at step 150) where the same recipe
        # without them was still on it at step 300 (benchmarks/README.md, bench_plateau.py). Fine-tunes start
        # from an aligned model: pure CTC, 60 steps as one epoch (one data pipeline per run: on a few minutes of
        # a user's data, rebuilding it per epoch or per pass cost as much as the steps; warm-up 8 steps and the
        # cosine as with the earlier 4 x 15) and 3 validations (best.pt picked among them), not one per 15 steps.
        # No data.feature_cache: it took ~15 % of a fine-tune step's CPU time (benchmarks/README.md,
        # bench_finetune.py), but every recipe here keeps the reference's temporal jitter, which needs raw EMG.
        train=("run.max_epochs=8", "run.steps_per_epoch=50", "data.batch_size=16", "optim.warmup_epochs=0.5",
               "optim.lr=5e-3", "optim.min_lr=1e-3", "optim.grad_clip=5", "run.ckpt_every_steps=50",
               "run.val_max_batches=4", "run.bf16=false", "swad.n_converge=2", "swad.n_tolerance=3",
               "loss.aux=keys", "loss.aux_weight=1", "loss.aux_decay_steps=200", "model.head_blank_prior=0.9"),
        finetune=("run.max_epochs=1", "run.steps_per_epoch=60", "optim.warmup_epochs=0.125", "optim.lr=1e-3",
                  "optim.min_lr=1e-5", "loss.aux=none", "run.val_times=3"),
        # SWAD looks for its valley only from step 400 (the aux loss has decayed): the blank plateau's flat
        # loss at steps 0-100 otherwise starts the valley at step 0 and the average takes in every step.
        generic=("run.max_epochs=16", "loss.aux_decay_steps=400", "swad.start_step=400"),
        model_suffix="_small",
        # 3-minute sessions: each held-out user has ~6 min of training EMG (few_shot goes up to 5 min).
        corpus={"users": 10, "sessions_per_user": 6, "minutes": 3.0, "heldout_users": 2},
        max_heldout_users=2,
    ),
    "paper": Budget(
        name="paper",
        # The reference: 32 windows per GPU (8 GPUs -> 256 for the generic model; 1 GPU for personalized ones).
        train=("run.max_epochs=150", "data.batch_size_per_device=32", "optim.warmup_epochs=10", "optim.lr=1e-3"),
        finetune=("run.max_epochs=150", "optim.warmup_epochs=10", "optim.lr=1e-3"),
        model_suffix="",
        corpus={"users": 108, "sessions_per_user": 10, "minutes": 20.0, "heldout_users": 8},
        max_heldout_users=0,
    ),
}


def get_budget(name: str) -> Budget:
    """The named budget, or a ValueError listing the valid names."""
    try:
        return BUDGETS[name]
    except KeyError:
        raise ValueError(f"unknown budget {name!r}; choose one of {sorted(BUDGETS)}") from None
