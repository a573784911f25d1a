"""Split-and-share encoder (``arch: splash``): SplashNet's per-hand network, its weights shared by both hands.

SplashNet (Hadidi, Chan, Feghhi, Kao, NeurIPS 2025) processes each wrist band on its own with one set of
weights: per band, a rotation-invariant MLP over the band's electrodes (the reference's front end, one
copy instead of two), then a stack of TDS blocks; the bands' outputs are concatenated before the CTC
head, the only place the hands meet. Both bands run as one batch of ``bands * B`` sequences, so the
shared weights cost one matmul per layer.

The encoder reads the flattened features (``frontend.kind: flatten``: ``(B, T, bands * C * K)``) and
runs its own per-hand MLP (``splash.mlp_features``)::

    (B, T, bands*C*K) -> (B*bands, T, C, K) -> MLP, pooled over rolls -> (B*bands, T, D)
                      -> TDS blocks -> (B*bands, T', D) -> (B, T', bands*D)   [band 0 | band 1]

Mirroring (``mirror_right``): the second band's electrode order is reversed (electrode ``i`` fed at index
``C - 1 - i``) before the shared network. A reversal is a reflection of the electrode ring; the other
reflections differ from it by a rotation, which the rotation-invariant MLP and band-rotation
augmentation absorb up to ±1 electrode. emg2qwerty's documentation does not state the bands'
orientation on the two wrists, so the default feeds both bands as recorded (as SplashNet does).

Causal as the TDS encoder: output frame ``j`` reads feature frames ``j .. j + shrink`` and is aligned to
the last of them; it streams with the TDS blocks' state for each band (batch ``bands``), and the first
``shrink`` frames of a stream are junk (``stream_skip_frames``), as for ``arch: tds``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emgscale.models.common import Encoder, drop, zero_padding
from emgscale.models.config import ModelConfig, SplashConfig, TDSConfig
from emgscale.models.frontend import RotationInvariantMLP
from emgscale.models.streaming import LengthsOrState, StreamState
from emgscale.models.tds import TDSConvEncoder


class SplashEncoder(Encoder):
    """One per-hand network (rotation-invariant MLP + TDS blocks) applied to every band; see the module docstring.

    Args:
        num_bands: bands in the input (2 for emg2qwerty).
        num_electrodes: electrodes per band in the features (C).
        num_bins: features per electrode (K: 6 for ``log_bands``, 33 for the log spectrogram).
        cfg: the settings.
    """

    def __init__(self, num_bands: int, num_electrodes: int, num_bins: int, cfg: SplashConfig) -> None:
        super().__init__()
        if min(num_bands, num_electrodes, num_bins) < 1:
            raise ValueError(f"splash needs bands, electrodes and bins >= 1, got {num_bands}, {num_electrodes}, "
                             f"{num_bins}")
        if not cfg.mlp_features or not cfg.block_channels:
            raise ValueError("splash.mlp_features and splash.block_channels must be non-empty")
        width = cfg.mlp_features[-1]
        bad = [c for c in cfg.block_channels if c < 1 or width % c]
        if bad:
            raise ValueError(f"splash.block_channels {bad} must divide the per-hand width "
                             f"splash.mlp_features[-1] = {width}")
        self.num_bands, self.num_electrodes, self.num_bins = num_bands, num_electrodes, num_bins
        self.mirror_right = bool(cfg.mirror_right)
        self.mlp = RotationInvariantMLP(num_electrodes, num_bins, list(cfg.mlp_features), list(cfg.offsets),
                                        cfg.pooling)
        self.dropout = drop(cfg.dropout)
        self.tds = TDSConvEncoder(width, TDSConfig(block_channels=list(cfg.block_channels),
                                                   kernel_width=cfg.kernel_width, dropout=cfg.dropout))
        self.in_features = num_bands * num_electrodes * num_bins
        self.out_features = num_bands * width
        self.span = self.tds.span
        self.stream_skip_frames = self.tds.stream_skip_frames

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, in_features: int) -> "SplashEncoder":
        """The encoder of ``arch: splash`` (the :data:`~emgscale.models.ENCODERS` factory).

        Raises:
            ValueError: a front end other than ``flatten``, or ``in_features`` that do not split into
                bands x electrodes x bins.
        """
        if cfg.frontend.kind != "flatten":
            raise ValueError(f"arch splash runs its own per-hand MLP (splash.mlp_features): set frontend.kind: "
                             f"flatten, got {cfg.frontend.kind!r}")
        f = cfg.features
        bands = f.num_bands
        electrodes = len(f.channels) if f.channels is not None else f.num_electrodes
        if in_features % (bands * electrodes):
            raise ValueError(f"splash: {in_features} input features do not split into {bands} bands x "
                             f"{electrodes} electrodes")
        return cls(bands, electrodes, in_features // (bands * electrodes), cfg.splash)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """``L - num_blocks * (kernel_width - 1)``, clamped at 0 (the TDS blocks')."""
        return self.tds.output_lengths(lengths)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, bands * C * K), (B,) -> (B, T - shrink, bands * D), (B,)."""
        if x.shape[1] <= self.tds.shrink:
            raise ValueError(f"splash needs more than {self.tds.shrink} frames, got {x.shape[1]}")
        out_lengths = self.output_lengths(lengths)
        return zero_padding(self.encode(x, lengths), out_lengths), out_lengths

    def hands(self, x: Tensor) -> Tensor:
        """(B, T, bands * C * K) -> (B * bands, T, C, K), sequence ``b * bands + i`` = band ``i`` of ``b``,
        the second band's electrodes reversed when ``mirror_right``."""
        B, T = x.shape[:2]
        h = x.view(B, T, self.num_bands, self.num_electrodes, self.num_bins)
        if self.mirror_right and self.num_bands > 1:
            h = torch.cat([h[:, :, :1], h[:, :, 1:2].flip(3), h[:, :, 2:]], 2)
        return h.transpose(1, 2).reshape(B * self.num_bands, T, self.num_electrodes, self.num_bins)

    def encode(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        B = x.shape[0]
        h = self.dropout(self.mlp(self.hands(x)))  # (B * bands, T, D)
        per_hand = lengths if isinstance(lengths, StreamState) else lengths.repeat_interleave(self.num_bands)
        y = self.tds.encode(h, per_hand)  # (B * bands, T', D)
        return y.view(B, self.num_bands, *y.shape[1:]).transpose(1, 2).flatten(2)  # (B, T', bands * D)

    def init_state(self) -> list[Tensor]:
        """Each TDS conv block's last ``kernel_width - 1`` input frames, one row per band: ``(bands, K - 1, D)``."""
        return [s.expand(self.num_bands, *s.shape[1:]).clone() for s in self.tds.init_state()]


__all__ = ["SplashConfig", "SplashEncoder"]
