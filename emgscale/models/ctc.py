"""The CTC model every architecture shares, and the encoder registry.

``CTCModel`` = :class:`~emgscale.features.Featurizer` (features, normalisation, training
augmentations) -> front end (per-band rotation-invariant MLP) -> encoder (``arch``) ->
``Linear(D, 99)`` -> ``log_softmax`` (float32; blank = 98).

Chunked (whole-session) inference, from the attributes set at construction:

* ``samples_per_frame``: input samples per output frame; ``frame_rate_hz`` = input rate / it.
* ``alignment_samples``: start chunks at multiples of this (``samples_per_frame``, or the attention
  chunk for ``attention: chunk`` models). Output frame ``j`` of a chunk starting at input sample ``s``
  is then output frame ``s // samples_per_frame + j`` of the whole sequence.
* ``left_context_frames`` / ``right_context_frames``: that many output frames at the start / end of a
  chunk may differ from whole-sequence inference (they saw the chunk's edge); all other frames equal
  it (eval mode). None = unbounded (recurrent or global attention): use the whole sequence, or an
  overlap generous enough for the tolerance wanted.
* ``span_samples``: ``(left, right)``: output frame ``j`` reads input samples
  ``j * samples_per_frame - left .. j * samples_per_frame + right`` (None = unbounded).
* ``min_input_samples``: the shortest input giving one output frame.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from emgscale.data.charset import charset
from emgscale.features import Featurizer
from emgscale.models.common import Encoder, Span
from emgscale.models.conformer import ConformerEncoder
from emgscale.models.config import ModelConfig
from emgscale.models.frontend import MultiBandRotationInvariantMLP, build_frontend
from emgscale.models.rnn import CNNRNNEncoder, RNNEncoder
from emgscale.models.s4d import S4DEncoder
from emgscale.models.splash import SplashEncoder
from emgscale.models.tds import TDSConvEncoder
from emgscale.models.transformer import TransformerEncoder

EncoderFactory = Callable[[ModelConfig, int], Encoder]

#: arch name -> ``factory(model_cfg, in_features) -> Encoder``; each encoder also says whether it streams
#: (``init_state`` / ``streaming_forward``, or NotStreamable: :mod:`emgscale.models.streaming`)
ENCODERS: dict[str, EncoderFactory] = {
    "tds": lambda cfg, n: TDSConvEncoder(n, cfg.tds),
    "lstm": lambda cfg, n: RNNEncoder("lstm", n, cfg.rnn),
    "gru": lambda cfg, n: RNNEncoder("gru", n, cfg.rnn),
    "cnn_rnn": lambda cfg, n: CNNRNNEncoder(n, cfg.cnn_rnn),
    "conformer": lambda cfg, n: ConformerEncoder(n, cfg.conformer),
    "transformer": lambda cfg, n: TransformerEncoder(n, cfg.transformer),
    "s4d": lambda cfg, n: S4DEncoder(n, cfg.s4d),
    "splash": lambda cfg, n: SplashEncoder.from_model_config(cfg, n),
}


def register_encoder(name: str, factory: EncoderFactory) -> None:
    """Make ``arch: name`` build ``factory(model_cfg, in_features)`` (an :class:`Encoder`)."""
    ENCODERS[name] = factory


class CTCModel(nn.Module):
    """Raw EMG -> per-frame log-probabilities over the 98 keys + blank (see the module docstring).

    Args:
        cfg: the model config.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch not in ENCODERS:
            raise ValueError(f"unknown model.arch {cfg.arch!r}; known: {', '.join(sorted(ENCODERS))}")
        self.cfg = cfg
        if cfg.num_classes < 0 or cfg.num_classes == 1:
            raise ValueError(f"model.num_classes must be 0 (the CTC charset) or >= 2, got {cfg.num_classes}")
        cs = charset()
        self.num_classes = cfg.num_classes or cs.num_classes
        self.blank = cs.blank if not cfg.num_classes else None  # frame classifiers have no blank
        self.featurizer = Featurizer(cfg.features, cfg.augment)
        self.frontend = build_frontend(cfg.frontend, self.featurizer.num_bands, self.featurizer.num_channels,
                                       self.featurizer.num_bins)
        self.encoder = ENCODERS[cfg.arch](cfg, self.frontend.out_features)
        self.head = nn.Linear(self.encoder.out_features, self.num_classes)
        #: Take the features' batch norm into the rotation-invariant MLP's first layer (the same outputs; its
        #: backward skips the gradient of the features: :meth:`emgscale.features.Featurizer.forward_deferred`).
        self.fold_norm = True
        if cfg.head_blank_prior and self.blank is not None:
            init_head_prior(self.head, self.blank, cfg.head_blank_prior)

        f = self.featurizer
        self.input_sample_rate_hz = float(cfg.features.input_sample_rate_hz)
        self.samples_per_frame = f.samples_per_frame * self.encoder.subsampling
        self.frame_rate_hz = self.input_sample_rate_hz / self.samples_per_frame
        self.alignment_samples = f.samples_per_frame * getattr(self.encoder, "alignment_frames",
                                                               self.encoder.subsampling)
        span = Span(f.span_samples[0], f.span_samples[1], f.samples_per_frame).then(self.encoder.span)
        self.span_samples = (span.left, span.right)
        self.left_context_frames = None if span.left is None else math.ceil(span.left / span.stride)
        self.min_input_samples = self._min_input_samples()
        self.right_context_frames = self._right_context(span)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Exact output frames for ``lengths`` input samples (eval mode; training jitter trims up to
        ``augment.temporal_jitter_samples`` more samples, and ``forward`` returns the real lengths)."""
        return self.encoder.output_lengths(self.featurizer.output_lengths(lengths))

    def _min_input_samples(self) -> int:
        lo, hi = 1, 1
        while int(self.output_lengths(torch.tensor([hi]))[0]) < 1:
            hi *= 2
        while lo < hi:
            mid = (lo + hi) // 2
            if int(self.output_lengths(torch.tensor([mid]))[0]) >= 1:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _right_context(self, span: Span) -> int | None:
        if span.right is None:
            return None
        s = span.stride
        n = torch.arange(s, dtype=torch.long) + 16 * (self.min_input_samples + span.right + s)
        last_exact = torch.div(n - 1 - span.right, s, rounding_mode="floor")
        return max(0, int((self.output_lengths(n) - 1 - last_exact).max()))

    def forward(self, emg: Tensor, lengths: Tensor, spectra: bool = False) -> tuple[Tensor, Tensor]:
        """Log-probabilities of a batch.

        Args:
            emg: raw float32 (B, T, bands, electrodes) at ``input_sample_rate_hz`` (2 x 16 by default;
                ``features.num_bands`` x ``features.num_electrodes``), zero-padded; with ``spectra``,
                precomputed spectra (B, T', bands, electrodes, K) from
                :meth:`~emgscale.features.Featurizer.spectra` (``data.feature_cache``).
            lengths: (B,) valid samples per sequence (valid frames with ``spectra``).
            spectra: ``emg`` holds spectra: the featurizer runs only its feature-space half
                (:meth:`~emgscale.features.Featurizer.from_spectra`).

        Returns:
            log_probs (B, T', 99) float32 (``log_softmax``; blank = 98; ``model.num_classes`` columns
            for a frame classifier; rows at or beyond
            ``out_lengths`` are padding) and out_lengths (B,) long. In training mode augmentations
            are applied and ``out_lengths`` accounts for the samples trimmed by temporal jitter.
        """
        return self.from_features(*self.featurize(emg, lengths, spectra))

    def featurize(self, emg: Tensor, lengths: Tensor, spectra: bool = False
                  ) -> tuple[Tensor, Tensor, "tuple[Tensor, Tensor] | None"]:
        """The featurizer's half of :meth:`forward`: features (B, T', bands, C, K), frame lengths (B,), and the
        norm's affine map ``(scale, shift)`` where it is left to the front end (:attr:`fold_norm`), else None."""
        if not spectra and emg.dim() == 4 and emg.shape[1] < self.min_input_samples:
            raise ValueError(f"input of {emg.shape[1]} samples is shorter than the model's minimum "
                             f"({self.min_input_samples} samples)")
        if self.fold_norm and self.featurizer.defers_norm and isinstance(self.frontend, MultiBandRotationInvariantMLP):
            # The norm's affine map goes into the front end's first layer: no gradient of the features.
            feats, frames, scale, shift = self.featurizer.forward_deferred(emg, lengths, spectra=spectra)
            return feats, frames, (scale, shift)
        feats, frames = self.featurizer.from_spectra(emg, lengths) if spectra else self.featurizer(emg, lengths)
        return feats, frames, None

    def from_features(self, feats: Tensor, frames: Tensor, affine: "tuple[Tensor, Tensor] | None" = None
                      ) -> tuple[Tensor, Tensor]:
        """The rest of :meth:`forward` on :meth:`featurize`'s output: front end, encoder, head, log-softmax."""
        x = self.frontend(feats) if affine is None else self.frontend(feats, affine, frames)
        y, out_lengths = self.encoder(x, frames)
        return self.head(y).float().log_softmax(-1), out_lengths


def forward_batch(net: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
    """``net`` (a :class:`CTCModel`, also inside DDP or ``torch.compile``) on a batch already on its device:
    on the batch's precomputed spectra when it carries them (``features``, ``data.feature_cache``), else on
    its raw ``emg``. The one place that chooses, for the loop, validation and norm re-estimation."""
    feats = getattr(batch, "features", None)
    if feats is not None:
        return net(feats, batch.feature_lengths, spectra=True)
    return net(batch.emg, batch.emg_lengths)


def init_head_prior(head: nn.Linear, blank: int, blank_prob: float) -> None:
    """Set ``head``'s bias so that, for zero features, blank has probability ``blank_prob`` and every
    other class an equal share of the rest (the label prior the CTC plateau otherwise learns first).

    Raises:
        ValueError: ``blank_prob`` outside (0, 1).
    """
    if not 0.0 < blank_prob < 1.0:
        raise ValueError(f"model.head_blank_prior must be in (0, 1), got {blank_prob}")
    with torch.no_grad():
        head.bias.fill_(math.log((1.0 - blank_prob) / (head.out_features - 1)))
        head.bias[blank] = math.log(blank_prob)


def build_model(cfg: ModelConfig) -> CTCModel:
    """The :class:`CTCModel` described by ``cfg``."""
    return CTCModel(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
