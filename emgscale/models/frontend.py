"""Per-frame front ends: (B, T, 2, C, K) features -> (B, T, D) encoder input.

``rotation_mlp`` is the reference's ``MultiBandRotationInvariantMLP``: per band, an MLP is applied to
the electrode ring rolled by each offset in ``offsets`` and the results are pooled, making the band's
embedding (nearly) invariant to small band rotations; the two band embeddings are concatenated.
``flatten`` just concatenates all features (``2 * C * K``).

The rolled copies are never materialised: ``Linear(roll(x, o))`` equals ``x @ roll(W, -o)^T``, so the
first layer runs as one matmul against the stacked rolled weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgscale.models.common import drop
from emgscale.models.config import FrontendConfig


class RotationInvariantMLP(nn.Module):
    """One band: MLP over the rolled electrode ring, pooled over the roll offsets.

    Args:
        num_electrodes: C.
        num_bins: K.
        mlp_features: hidden sizes.
        offsets: roll offsets.
        pooling: ``"mean"`` or ``"max"``.
    """

    def __init__(self, num_electrodes: int, num_bins: int, mlp_features: list[int], offsets: list[int],
                 pooling: str) -> None:
        super().__init__()
        if not mlp_features or not offsets:
            raise ValueError("frontend.mlp_features and frontend.offsets must be non-empty")
        if pooling not in ("mean", "max"):
            raise ValueError(f"frontend.pooling must be 'mean' or 'max', got {pooling!r}")
        self.num_electrodes, self.num_bins = num_electrodes, num_bins
        self.offsets, self.pooling = list(offsets), pooling
        layers: list[nn.Module] = []
        n_in = num_electrodes * num_bins
        for n_out in mlp_features:
            layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]  # a Linear's backward needs no output
            n_in = n_out
        self.mlp = nn.Sequential(*layers)
        self.out_features = n_in

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, K) (any strides) -> (B, T, D)."""
        first: nn.Linear = self.mlp[0]  # type: ignore[assignment]
        d = first.out_features
        w = first.weight.view(d, self.num_electrodes, self.num_bins)
        w_cat = torch.cat([w.roll(-o, dims=1) for o in self.offsets], 0).flatten(1)  # (R*D, C*K)
        b_cat = first.bias.repeat(len(self.offsets))
        B, T = x.shape[:2]
        h = self.mlp[1](F.linear(x.reshape(B, T, -1), w_cat, b_cat))  # ReLU in place on the base tensor, not a view
        h = self.mlp[2:](h.view(B, T, len(self.offsets), d))  # further layers, per rotation
        return h.mean(2) if self.pooling == "mean" else h.amax(2)


class MultiBandRotationInvariantMLP(nn.Module):
    """A :class:`RotationInvariantMLP` per band (separate weights), outputs concatenated: (B, T, 2 * D)."""

    def __init__(self, num_bands: int, num_electrodes: int, num_bins: int, cfg: FrontendConfig) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(RotationInvariantMLP(num_electrodes, num_bins, cfg.mlp_features, cfg.offsets,
                                                       cfg.pooling) for _ in range(num_bands))
        self.dropout = drop(cfg.dropout)
        self.out_features = num_bands * self.mlps[0].out_features

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, bands, C, K) -> (B, T, bands * D)."""
        return self.dropout(torch.cat([mlp(x[:, :, i]) for i, mlp in enumerate(self.mlps)], -1))


class Flatten(nn.Module):
    """(B, T, bands, C, K) -> (B, T, bands * C * K), with dropout."""

    def __init__(self, num_bands: int, num_electrodes: int, num_bins: int, cfg: FrontendConfig) -> None:
        super().__init__()
        self.dropout = drop(cfg.dropout)
        self.out_features = num_bands * num_electrodes * num_bins

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x.flatten(2))


def build_frontend(cfg: FrontendConfig, num_bands: int, num_electrodes: int, num_bins: int) -> nn.Module:
    """The front end named by ``cfg.kind``; its ``out_features`` is the encoder's input size."""
    if cfg.kind == "rotation_mlp":
        return MultiBandRotationInvariantMLP(num_bands, num_electrodes, num_bins, cfg)
    if cfg.kind == "flatten":
        return Flatten(num_bands, num_electrodes, num_bins, cfg)
    raise ValueError(f"frontend.kind must be 'rotation_mlp' or 'flatten', got {cfg.kind!r}")
