"""The model config: which encoder, and the settings of every stage.

Torch-free (like :mod:`emgscale.features.config`), so a config file is parsed and checked before torch
is imported: a typo comes back in a fraction of a second. Each encoder module builds its encoder from
its section here (:mod:`emgscale.models.tds` from :class:`TDSConfig`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emgscale.features.config import AugmentConfig, FeatureConfig

if TYPE_CHECKING:
    from emgscale.models.attention import AttentionMask

#: The built-in ``model.arch`` names (:data:`emgscale.models.ENCODERS` holds these and any registered
#: with :func:`emgscale.models.register_encoder`).
BUILTIN_ARCHS = ("tds", "lstm", "gru", "cnn_rnn", "conformer", "transformer", "s4d", "splash")
#: ``tds.feature_order`` values.
FEATURE_ORDERS = ("channel_major", "width_major")


@dataclass
class FrontendConfig:
    """Front-end settings.

    Attributes:
        kind: ``"rotation_mlp"`` (reference) or ``"flatten"``.
        mlp_features: hidden sizes of the per-band MLP (each layer Linear + ReLU); the output is
            ``2 * mlp_features[-1]`` features (768 for the reference's ``[384]``).
        offsets: electrode roll offsets pooled over (reference ``[-1, 0, 1]``).
        pooling: ``"mean"`` (reference) or ``"max"`` over the offsets.
        dropout: dropout on the front-end output.
    """

    kind: str = "rotation_mlp"
    mlp_features: list[int] = field(default_factory=lambda: [384])
    offsets: list[int] = field(default_factory=lambda: [-1, 0, 1])
    pooling: str = "mean"
    dropout: float = 0.0


@dataclass
class TDSConfig:
    """TDS-Conv encoder settings.

    Attributes:
        block_channels: conv channels of each block (each must divide the input features); one
            (conv block, fully connected block) pair per entry.
        kernel_width: temporal kernel of the conv blocks, in frames.
        dropout: dropout on the output of each fully connected block (0 = the reference).
        feature_order: ``"channel_major"`` (the reference's function) or ``"width_major"`` (emgscale's
            encoder before it matched the reference; for checkpoints trained with it).
    """

    block_channels: list[int] = field(default_factory=lambda: [24, 24, 24, 24])
    kernel_width: int = 32
    dropout: float = 0.0
    feature_order: str = "channel_major"


@dataclass
class RNNConfig:
    """LSTM / GRU encoder settings (``arch: lstm`` or ``arch: gru``).

    Attributes:
        hidden_size: units per direction.
        num_layers: stacked layers.
        bidirectional: also run backwards (not causal).
        dropout: between layers and on the output.
    """

    hidden_size: int = 384
    num_layers: int = 3
    bidirectional: bool = False
    dropout: float = 0.1


@dataclass
class CNNRNNConfig:
    """CNN + RNN hybrid settings (``arch: cnn_rnn``).

    Attributes:
        conv_channels: output channels of each conv layer (Conv1d, LayerNorm, GELU, dropout).
        kernel_size: temporal kernel of every conv layer, in frames.
        strides: temporal stride of each conv layer (same length as ``conv_channels``); their product
            is the subsampling (2 -> 62.5 Hz outputs at 125 Hz features).
        causal: causal convs (left padding); requires ``bidirectional: false``.
        rnn_type: ``"gru"`` or ``"lstm"``.
        hidden_size: RNN units per direction.
        num_layers: RNN layers.
        bidirectional: bidirectional RNN.
        dropout: after each conv layer, between RNN layers and on the output.
    """

    conv_channels: list[int] = field(default_factory=lambda: [256, 256])
    kernel_size: int = 5
    strides: list[int] = field(default_factory=lambda: [2, 1])
    causal: bool = False
    rnn_type: str = "gru"
    hidden_size: int = 256
    num_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.1


@dataclass
class TransformerConfig:
    """Transformer encoder settings (attention settings shared with the Conformer).

    Attributes:
        d_model: model width.
        num_layers: blocks.
        num_heads: attention heads (``d_model / num_heads`` must be even).
        ffn_dim: feed-forward hidden size.
        dropout: on attention weights, FFN activations and block outputs.
        subsampling_strides: one masked strided Conv1d per entry before the blocks (product = the
            subsampling; ``[2]`` -> 62.5 Hz at 125 Hz features); empty = a Linear projection.
        subsampling_kernel: kernel of the subsampling convs, in frames.
        attention: ``"local"``, ``"chunk"`` or ``"full"`` (see :mod:`emgscale.models.attention`).
        left_frames, right_frames: ``local`` window, in subsampled frames.
        chunk_frames, left_chunks: ``chunk`` geometry, in subsampled frames.
        causal: causal subsampling convs and attention (no future frames).
        rope_base: rotary position base.
    """

    d_model: int = 256
    num_layers: int = 6
    num_heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    subsampling_strides: list[int] = field(default_factory=lambda: [2])
    subsampling_kernel: int = 3
    attention: str = "local"
    left_frames: int = 64
    right_frames: int = 64
    chunk_frames: int = 32
    left_chunks: int = 2
    causal: bool = False
    rope_base: float = 10000.0

    def attention_mask(self) -> "AttentionMask":
        """The attention pattern these settings describe (:class:`~emgscale.models.attention.AttentionMask`)."""
        from emgscale.models.attention import AttentionMask  # torch: only when a model is built

        return AttentionMask(self.attention, self.left_frames, self.right_frames, self.chunk_frames,
                             self.left_chunks, self.causal)


@dataclass
class ConformerConfig(TransformerConfig):
    """Conformer settings: the :class:`TransformerConfig` fields plus the convolution module.

    Attributes:
        conv_kernel: depthwise conv kernel of the convolution module, in subsampled frames.
    """

    d_model: int = 192
    ffn_dim: int = 768
    conv_kernel: int = 15


@dataclass
class S4DConfig:
    """S4D encoder settings (``arch: s4d``).

    Attributes:
        d_model: channels of the front end and of every S4D layer (H).
        d_state: real state size per channel (N, even): ``N / 2`` complex modes and their conjugates.
        num_layers: S4D blocks.
        kernel_size: temporal kernel of the causal front-end conv, in feature frames (>= ``stride``).
        stride: front-end subsampling (125 Hz features: 5 -> 25 Hz outputs, 4 -> 31.25 Hz).
        dt_min, dt_max: range of the log-uniform initial step ``dt`` (in output frames; the paper's
            0.001 .. 0.1).
        prenorm: LayerNorm before each block (and one at the end) instead of after each residual.
        dropout: after the front end and twice in each block (the paper's placement).
    """

    d_model: int = 256
    d_state: int = 64
    num_layers: int = 6
    kernel_size: int = 10
    stride: int = 5
    dt_min: float = 0.001
    dt_max: float = 0.1
    prenorm: bool = False
    dropout: float = 0.1


@dataclass
class SplashConfig:
    """Split-and-share encoder settings (``arch: splash``, SplashNet, Hadidi et al. 2025).

    One per-hand network (a rotation-invariant MLP, then TDS blocks) whose weights every band shares; the
    bands' outputs are concatenated before the CTC head. It reads the flattened features
    (``frontend.kind: flatten``) and runs its own per-hand MLP.

    Attributes:
        mlp_features: hidden sizes of the per-hand rotation-invariant MLP (its last = the per-hand width D;
            SplashNet-mini 384, SplashNet 528).
        offsets: electrode roll offsets the MLP pools over.
        pooling: ``"mean"`` or ``"max"`` over the offsets.
        block_channels: conv channels of each per-hand TDS block (each must divide D; SplashNet-mini
            ``[24, 24, 24, 24]``, SplashNet ``[24, 24, 48, 48]``).
        kernel_width: temporal kernel of the TDS conv blocks, in frames.
        dropout: on the MLP output and after each fully connected block.
        mirror_right: feed the second band's electrodes in reverse order (electrode ``i`` at index
            ``C - 1 - i``), so that, if the bands are worn as mirror images, one index means one anatomy on
            both hands. False (SplashNet) feeds both bands as recorded.
    """

    mlp_features: list[int] = field(default_factory=lambda: [384])
    offsets: list[int] = field(default_factory=lambda: [-1, 0, 1])
    pooling: str = "mean"
    block_channels: list[int] = field(default_factory=lambda: [24, 24, 24, 24])
    kernel_width: int = 32
    dropout: float = 0.0
    mirror_right: bool = False


@dataclass
class ModelConfig:
    """Everything that defines a model (YAML files under ``configs/models/`` override it under ``model:``).

    Attributes:
        arch: encoder registry name: ``tds``, ``lstm``, ``gru``, ``cnn_rnn``, ``conformer``,
            ``transformer``, ``s4d``, ``splash`` (see :data:`emgscale.models.ENCODERS`). Only the section of the chosen
            arch is used; each has its own ``dropout``.
        features: spectral features, rate, electrode subset, normalisation.
        augment: training augmentations (inside the model, train mode only).
        frontend: per-frame front end feeding the encoder.
        tds, rnn, cnn_rnn, conformer, transformer, s4d, splash: encoder settings (``rnn`` serves ``lstm`` and
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
    splash: SplashConfig = field(default_factory=SplashConfig)
    head_blank_prior: float = 0.0
