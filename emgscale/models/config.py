"""The model config: which encoder, and the settings of every stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from emgscale.features.config import AugmentConfig, FeatureConfig
from emgscale.models.conformer import ConformerConfig
from emgscale.models.frontend import FrontendConfig
from emgscale.models.rnn import CNNRNNConfig, RNNConfig
from emgscale.models.s4d import S4DConfig
from emgscale.models.tds import TDSConfig
from emgscale.models.transformer import TransformerConfig


@dataclass
class ModelConfig:
    """Everything that defines a model (YAML files under ``configs/models/`` override it under ``model:``).

    Attributes:
        arch: encoder registry name: ``tds``, ``lstm``, ``gru``, ``cnn_rnn``, ``conformer``,
            ``transformer``, ``s4d`` (see :data:`emgscale.models.ENCODERS`). Only the section of the chosen
            arch is used; each has its own ``dropout``.
        features: spectral features, rate, electrode subset, normalisation.
        augment: training augmentations (inside the model, train mode only).
        frontend: per-frame front end feeding the encoder.
        tds, rnn, cnn_rnn, conformer, transformer, s4d: encoder settings (``rnn`` serves ``lstm`` and
            ``gru``; ``rnn.bidirectional`` picks BiLSTM / BiGRU).
        num_classes: outputs of the head; 0 = the CTC charset (98 keys + blank). A frame classifier
            (``loss.kind: frame_ce``) sets its number of labels (6 for the finger dataset).
        head_blank_prior: when > 0, initialise the output layer's bias to the label prior: blank
            gets probability ``head_blank_prior`` (its frame frequency, ~0.9 for 4 s windows at
            62.5 Hz), the 98 keys share the rest evenly. 0 keeps PyTorch's default init (the reference).
    """

    arch: str = "tds"
    num_classes: int = 0
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    tds: TDSConfig = field(default_factory=TDSConfig)
    rnn: RNNConfig = field(default_factory=RNNConfig)
    cnn_rnn: CNNRNNConfig = field(default_factory=CNNRNNConfig)
    conformer: ConformerConfig = field(default_factory=ConformerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    s4d: S4DConfig = field(default_factory=S4DConfig)
    head_blank_prior: float = 0.0
