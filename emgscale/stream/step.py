"""The streaming step of a causal :class:`~emgscale.models.CTCModel`: a pure function of (samples, state).

``StreamStep(model)(samples (n, 2, 16), *state) -> (log_probs (m, 99), *new_state)`` takes
``n = m * unit_samples`` new raw samples (``unit_samples`` = the model's ``samples_per_frame``, so
every stage gets whole multiples of its stride) and returns ``m`` new output frames. All state is in
the fixed-shape tensors of ``init_state()``, listed by ``state_names``; the step has no Python-side
state, so ``torch.export`` captures it whole (:mod:`emgscale.stream.export`).

Two startup rules live outside the step, in :class:`~emgscale.stream.Streamer`:

* the raw-sample cache (state 0: the last ``overlap_samples`` raw samples, which the decimation
  filter and the STFT window need besides the new ones) starts as ``half_taps`` zeros (the offline
  left padding of the decimation filter) then the first ``prime_samples`` samples of the session;
* the first ``skip_frames`` output frames are junk (TDS blocks have no padding) and are dropped.

With those, the concatenated output of the steps is the offline forward of the whole sequence.
The feature normalisation and the encoder bring their own streaming steps (``init_state`` /
``streaming_forward``, :mod:`emgscale.models.streaming`); the step only chains them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emgscale.features import NUM_BANDS, NUM_ELECTRODES
from emgscale.features.augment import select_electrodes
from emgscale.models.streaming import NotStreamable


class StreamStep(nn.Module):
    """One streaming step of ``model`` (see the module docstring); shares the model's weights.

    Args:
        model: a :class:`~emgscale.models.CTCModel` whose stages are all causal (put in eval mode).

    Attributes:
        unit_samples: raw samples per output frame; ``n`` must be a multiple of it.
        overlap_samples: raw samples kept between steps (state 0).
        half_taps: the decimation filter's half length (0 without decimation).
        prime_samples: session samples that go into the raw cache before the first step.
        skip_frames: junk output frames at the start of a session.
        state_names: one name per state tensor.

    Raises:
        NotStreamable: a stage needs future input (bidirectional RNN, non-causal conv or attention,
            full attention).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model.eval()
        f = model.featurizer
        self.featurizer, self.frontend, self.head = f, model.frontend, model.head
        self.decimation = f.decimation
        self.half_taps = f.decimator.half_taps
        self.overlap_samples = 2 * self.half_taps + (f.n_fft - f.hop_samples) * f.decimation
        self.prime_samples = self.overlap_samples - self.half_taps
        self.unit_samples = int(model.samples_per_frame)
        self.norm, self.encoder = f.norm, model.encoder
        if not hasattr(self.norm, "streaming_forward"):
            raise NotStreamable(f"no streaming step for feature normalisation {type(self.norm).__name__}")
        self.skip_frames = int(self.encoder.stream_skip_frames)
        self._norm_n, self._enc_n = len(self.norm.init_state()), len(self.encoder.init_state())
        self.state_names = (["raw"] + [f"norm.{i}" for i in range(self._norm_n)] + ["pos"]
                            + [f"encoder.{i}" for i in range(self._enc_n)])

    def init_state(self) -> list[Tensor]:
        """The state at the start of a session (the raw cache still to be primed)."""
        raw = torch.zeros(self.overlap_samples, NUM_BANDS, NUM_ELECTRODES)
        return [raw, *self.norm.init_state(), torch.zeros((), dtype=torch.long), *self.encoder.init_state()]

    def features(self, raw: Tensor) -> Tensor:
        """(L, 2, 16) raw samples (cache + new) -> (1, T, 2, C, K) log features, before normalisation."""
        f = self.featurizer
        x = f.scale_input(select_electrodes(raw.unsqueeze(0).float(), f.channel_index, 0))
        if self.decimation > 1:  # without padding: the raw cache holds the context
            x = f.decimator.filter(x, 0)
        feats, _ = f.spectral(x, torch.full((1,), x.shape[1], dtype=torch.long))
        return feats

    def forward(self, samples: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """``samples`` (n, 2, 16) float32, n a multiple of ``unit_samples``; ``state`` as ``init_state``.

        Returns:
            ``(log_probs (n / unit_samples, 99) float32, *new_state)``.
        """
        raw, norm_state, pos, enc_state = (state[0], state[1:1 + self._norm_n], state[1 + self._norm_n],
                                           state[2 + self._norm_n:])
        buf = torch.cat([raw, samples.to(raw.dtype)], 0)
        feats = self.features(buf)
        feats, *norm_new = self.norm.streaming_forward(feats, *norm_state)
        x = self.frontend(feats)
        y, *enc_new = self.encoder.streaming_forward(x, pos, *enc_state)
        lp = self.head(y).float().log_softmax(-1)[0]
        return (lp, buf[buf.shape[0] - self.overlap_samples:], *norm_new, pos + lp.shape[0], *enc_new)


__all__ = ["StreamStep"]
