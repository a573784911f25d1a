"""The training objective's settings (the ``loss`` section of :class:`~emgscale.train.config.TrainConfig`).

Torch-free, and apart from both the config and the objectives that use it
(:mod:`emgscale.train.objective`), so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The built-in ``loss.kind`` names (:data:`emgscale.train.objective.OBJECTIVES` holds these and any
#: registered there).
BUILTIN_OBJECTIVES = ("ctc", "frame_ce")


@dataclass
class LossConfig:
    """The training objective (the ``loss`` section of the training config).

    Attributes:
        kind: a key of :data:`emgscale.train.objective.OBJECTIVES` (``ctc``; ``frame_ce``: a label per output frame,
            :mod:`emgscale.train.frames`).
        aux: auxiliary loss added to CTC: ``"none"`` (the reference) or ``"keys"`` (keystroke-time
            cross-entropy, see the module docstring; needs ``label_time_s`` in the samples).
        aux_weight: weight of the auxiliary loss at step 0.
        aux_decay_steps: the weight falls linearly to 0 at this step (0: constant weight).
        aux_offset_ms: the target window is centred this long before each press (EMG leads it).
        aux_width_ms: width of the target window around that centre.
        distill_from: a teacher checkpoint (file or run's checkpoint folder): its per-frame posteriors are
            soft targets beside CTC (:mod:`emgscale.train.distill`); None: no distillation.
        distill_weight: weight of the distillation term (KL per valid frame, times ``T^2``).
        distill_temperature: T, the temperature both distributions are softened by (> 0).
        distill_delay_ms: the teacher's posteriors are read this much later (a causal student emits after
            the EMG it needs; a bidirectional teacher may emit earlier).
    """

    kind: str = "ctc"
    aux: str = "none"
    aux_weight: float = 1.0
    aux_decay_steps: int = 0
    aux_offset_ms: float = 100.0
    aux_width_ms: float = 80.0
    distill_from: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    distill_delay_ms: float = 0.0
