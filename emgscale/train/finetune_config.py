"""How a fine-tune adapts a trained model (the ``finetune`` section of the training config), and how long.

Torch-free, so that the config and the benchmarks read it without building a model; the modes are applied
to a model by :mod:`emgscale.train.finetune`.

Modes (all need ``run.init_from``; the head is trained in every mode):

* ``full``: every weight (today's fine-tune; with no ``run.init_from`` it is plain training).
* ``frontend``: only the normalisation layers (their affine weights; the featurizer's running statistics
  re-estimate themselves in train mode anyway) and the front end: the per-band rotation-invariant MLP
  (``frontend.*``) and any input layer an encoder names in its ``finetune_frontend`` attribute (a tuple of
  its own sub-module names, e.g. a per-hand encoder's input projection). A few % of the weights: what
  30 s of a new user's EMG can pin down without overfitting (electrode placement, skin impedance and
  amplitude differ between users; the keyboard and language do not).
* ``lora``: low-rank adapters ``W + (alpha / rank) * B @ A`` on the encoder's weight matrices (Linear,
  Conv1d/Conv2d and the recurrent layers' input and hidden matrices), base weights frozen, ``B`` zero at the
  start so the adapted model starts as the generic one (:mod:`emgscale.models.lora`). Checkpoints hold the
  adapters merged into plain weights: ``eval``, ``stream`` and further fine-tunes load them without knowing
  about LoRA.

``layer_decay`` (< 1) gives earlier layers lower learning rates (layer-wise rates): the head trains at
``optim.lr``, each block below it at ``layer_decay`` times the rate of the block above (blocks: the
featurizer, the front end, each numbered block of the encoder, in the order the model registers them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FINETUNE_MODES = ("full", "frontend", "lora")


@dataclass
class FinetuneConfig:
    """Which weights a fine-tune (``run.init_from``) trains, and at what rates (see the module docstring).

    Attributes:
        mode: ``full`` | ``frontend`` | ``lora``.
        lora_rank: the adapters' rank (``mode=lora``).
        lora_alpha: the adapters' scale numerator: the update is ``(lora_alpha / lora_rank) * B @ A``.
        layer_decay: each block's learning rate is this times the next block's (the head at ``optim.lr``);
            1 = one rate for all (the default).
    """

    mode: str = "full"
    lora_rank: int = 4
    lora_alpha: float = 8.0
    layer_decay: float = 1.0


#: The checks of the ``finetune`` section (:func:`emgscale.config.check_values` rules).
FINETUNE_RULES = {"finetune.mode": FINETUNE_MODES, "finetune.lora_rank": ">=1", "finetune.lora_alpha": ">0",
                  "finetune.layer_decay": lambda v: None if 0 < v <= 1 else "must be in (0, 1]"}


def finetune_problem(cfg: FinetuneConfig, init_from: "str | None", swad_mode: str) -> str | None:
    """Why ``cfg`` cannot run with these settings (one line), or None.

    Args:
        cfg: the ``finetune`` section.
        init_from: ``run.init_from``.
        swad_mode: ``swad.mode``.
    """
    if not init_from and (cfg.mode != "full" or cfg.layer_decay != 1.0):
        what = f"finetune.mode={cfg.mode}" if cfg.mode != "full" else f"finetune.layer_decay={cfg.layer_decay}"
        return f"{what}: fine-tunes a trained model; set run.init_from=CHECKPOINT (or leave the finetune section out)"
    if cfg.mode == "lora" and swad_mode != "off":
        return (f"finetune.mode=lora with swad.mode={swad_mode}: the weight average would hold the adapters, not "
                "plain weights; use swad.mode=off (or finetune.mode=full)")
    return None


#: Peak learning rate per mode. ``full`` keeps the rate of the ``small`` budget's fine-tunes (1e-3, the
#: generic model's final rate, so a fine-tune does not first undo what the generic model learnt); the cheap
#: modes train few weights that start at the generic model's values (the front end) or at zero (the
#: adapters' ``B``), so a higher rate moves them as far in the same steps without the whole network drifting.
FINETUNE_LR = {"full": 1e-3, "frontend": 3e-3, "lora": 3e-3}


def finetune_steps(minutes: float, steps_at_2_min: int) -> int:
    """Optimiser steps for ``minutes`` of a user's data: ``steps_at_2_min * sqrt(minutes / 2)``, never fewer
    than ``steps_at_2_min``.

    Why the square root above 2 minutes: a step reads one batch (16 x 4 s windows = 64 s of EMG at the
    ``small`` budget), so ``minutes`` of data take ~``minutes`` steps a pass. Steps that grow linearly with the
    data would give every amount the same passes: too many steps to be cheap at 6 minutes. The square root
    gives 5 minutes 95 steps and 6 minutes 104 (~17 passes over 6 minutes where a fixed 60 gave ~10).

    Why not below 2 minutes: the square root went on down to 30 / 42 steps at 0.5 / 1 min, and at the
    ``small`` budget those fine-tunes ended 2.4 / 3.6 points of test greedy CER worse than the fixed 60 steps
    they replaced (the timed ``bench all`` of issue 26): on 30 s - 1 min the generic model still had more
    to learn after 30-42 steps, and ``best.pt`` (the best of the fine-tune's validations) keeps a fine-tune that
    goes on too long from costing accuracy. So 60 / 60 / 60 / 95 / 104 steps at 0.5 / 1 / 2 / 5 / 6 min.
    """
    if minutes <= 0 or steps_at_2_min < 1:
        raise ValueError(f"finetune_steps: minutes ({minutes}) must be > 0 and steps_at_2_min ({steps_at_2_min}) >= 1")
    return max(steps_at_2_min, round(steps_at_2_min * math.sqrt(minutes / 2.0)))


def finetune_schedule(minutes: float, mode: str, steps_at_2_min: int | None) -> list[str]:
    """The ``dotted.key=value`` overrides of a fine-tune on ``minutes`` of a user's data in ``mode``.

    Steps (:func:`finetune_steps`) in one epoch validated :data:`VALIDATIONS` times, the mode's peak rate
    (:data:`FINETUNE_LR`), a 10 % linear warm-up (Adam's moments start at zero: a full-rate first step on
    a few windows can throw away the generic model's alignment) and a cosine decay to 1 % of the peak.

    Args:
        minutes: the user's training data (``data.max_minutes_per_user``; the whole split: its minutes).
        mode: a :data:`FINETUNE_MODES` name.
        steps_at_2_min: the budget's fine-tune steps, taken as those of 2 minutes of data; None where the
            budget counts fine-tunes in epochs over the data (``paper``: 150 epochs, so steps already grow
            with the data) — then only the mode's rate and the mode itself are set.

    Returns:
        Overrides, ``finetune.mode`` among them, to put after the budget's fine-tune overrides.

    Raises:
        ValueError: an unknown mode, or minutes <= 0.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune mode {mode!r} unknown; choose from {', '.join(FINETUNE_MODES)}")
    lr = FINETUNE_LR[mode]
    out = [f"finetune.mode={mode}", f"optim.lr={lr:g}", f"optim.min_lr={lr / 100:g}"]
    if mode == "lora":
        out.append("swad.mode=off")
    if steps_at_2_min is None:
        return out
    steps = finetune_steps(minutes, steps_at_2_min)
    # One epoch of `steps` steps (one data pipeline for the whole fine-tune) validated VALIDATIONS times at
    # evenly spaced steps (run.val_times), the last at the end.
    return [*out, "run.max_epochs=1", f"run.steps_per_epoch={steps}", f"run.val_times={min(VALIDATIONS, steps)}",
            f"optim.warmup_epochs={0.1 if steps >= 10 else 0:g}"]


#: Validations of a fine-tune: ``best.pt`` is the best of them, so a fine-tune that starts to learn its few
#: minutes by heart is caught (the ``small`` budget's fine-tunes validate as often).
VALIDATIONS = 3
