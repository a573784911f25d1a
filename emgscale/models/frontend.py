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

from emgscale.models.common import drop, time_mask
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

    def forward(self, x: Tensor, affine: "tuple[Tensor, Tensor] | None" = None,
                valid: Tensor | None = None) -> Tensor:
        """(B, T, C, K) (any strides) -> (B, T, D).

        With ``affine = (scale, shift)`` ((C, 1) each, :meth:`~emgscale.features.Featurizer.forward_deferred`),
        the MLP reads ``x * scale + shift`` per electrode, zero on the frames where ``valid`` (B, T) is False,
        without forming it: the first layer's weights take ``scale`` and its bias ``W @ shift``, so the
        backward computes no gradient of ``x``. ``valid`` None: every frame is valid.
        """
        first: nn.Linear = self.mlp[0]  # type: ignore[assignment]
        d = first.out_features
        w = first.weight.view(d, self.num_electrodes, self.num_bins)
        w_cat = torch.cat([w.roll(-o, dims=1) for o in self.offsets], 0)  # (R*D, C, K)
        b_cat = first.bias.repeat(len(self.offsets))
        B, T = x.shape[:2]
        if affine is None:
            z = F.linear(x.reshape(B, T, -1), w_cat.flatten(1), b_cat)
        else:
            scale, shift = affine
            from_shift = w_cat.sum(2) @ shift.view(-1)  # (R*D,): what the shift adds on a valid frame
            if valid is None:
                z = F.linear(x.reshape(B, T, -1), (w_cat * scale).flatten(1), b_cat + from_shift)
            else:  # padding frames are zero after the norm: their outputs are the bias alone
                z = F.linear(x.reshape(B, T, -1), (w_cat * scale).flatten(1), b_cat)
                z = torch.addcmul(z, valid.unsqueeze(-1).to(z.dtype), from_shift)
        h = self.mlp[1](z)  # ReLU in place on the base tensor, not a view
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

    def forward(self, x: Tensor, affine: "tuple[Tensor, Tensor] | None" = None,
                lengths: Tensor | None = None) -> Tensor:
        """(B, T, bands, C, K) -> (B, T, bands * D); with ``affine = (scale, shift)`` ((bands, C, 1) each)
        and the valid ``lengths`` (B,), the features' deferred norm (:meth:`RotationInvariantMLP.forward`)."""
        if affine is None:
            return self.dropout(torch.cat([mlp(x[:, :, i]) for i, mlp in enumerate(self.mlps)], -1))
        T = x.shape[1]
        valid = None if lengths is None or bool((lengths >= T).all()) else time_mask(lengths.to(x.device), T)
        scale, shift = affine
        return self.dropout(torch.cat([mlp(x[:, :, i], (scale[i], shift[i]), valid)
                                       for i, mlp in enumerate(self.mlps)], -1))


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
