"""``Streamer``: push raw EMG as it arrives, get each output frame of a causal model as soon as it is final.

>>> s = Streamer(model)                       # a causal CTCModel (put in eval mode)
>>> for chunk in chunks:                      # any sizes, e.g. 80 samples = 40 ms at 2 kHz
...     new = s.push(chunk)                   # (k, 99) log-probs of the frames now complete
>>> tail = s.flush()                          # end of session: the frames the offline forward adds
>>> s.reset()                                 # next session

Pushing a session in pieces of any size gives the log-probs of the offline forward of the whole
session (eval mode, float tolerance), because every stage keeps its state between calls
(:mod:`emgscale.stream.step`). Raw samples wait in a small buffer until they complete a unit of
``unit_samples`` (the model's input samples per output frame).

Bad input is repaired, never carried in the state: a value that is NaN, infinite or beyond
``max_abs_sample`` (the largest magnitude whose power spectrum float32 holds; a property of the
features, not of the EMG's units) is replaced by the last valid value of its channel (0 before any),
counted in ``repaired_values`` and logged once per session; the output is then the offline forward
of the repaired session. A live session thus survives a glitch (a dropped packet, a saturated ADC)
where one NaN would otherwise poison every later frame through the recurrent and rolling state. As a
last guard, a step whose output or new state is not finite (a model whose weights overflow) raises
ValueError and is not applied.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from emgscale.features import NUM_BANDS, NUM_ELECTRODES
from emgscale.stream.step import StreamStep

log = logging.getLogger("emgscale.stream")


class Streamer:
    """Stateful streaming inference of one session at a time (see the module docstring).

    Args:
        model: a causal :class:`~emgscale.models.CTCModel`; it is put in eval mode.
        step: the function run per step, ``step(samples, *state) -> (log_probs, *state)``; default
            the eager :class:`StreamStep` (pass an exported one, :func:`emgscale.stream.export_step`).
        units_per_step: run exactly this many output frames per step call (what an export made for
            a fixed size needs; samples wait until there are enough); None = all that are ready.

    Attributes:
        core: the :class:`StreamStep` (geometry and initial state).
        sample_rate_hz: input rate.
        max_abs_sample: larger input magnitudes are repaired like NaN (see the module docstring).
        samples_pushed: raw samples received since ``reset``.
        frames_out: output frames returned since ``reset``.
        repaired_values: input values repaired since ``reset`` (NaN, inf or beyond ``max_abs_sample``).
    """

    def __init__(self, model: torch.nn.Module, step: Callable[..., Any] | None = None,
                 units_per_step: int | None = None) -> None:
        self.model = model.eval()
        self.core = StreamStep(model)
        self.step = step if step is not None else self.core
        if units_per_step is not None and units_per_step < 1:
            raise ValueError(f"units_per_step must be >= 1, got {units_per_step}")
        self.units_per_step = units_per_step
        self._step_samples = self.core.unit_samples * (units_per_step or 1)
        self.sample_rate_hz = float(model.input_sample_rate_hz)
        self.num_classes = int(model.num_classes)
        # power <= 2 n_fft (|taps|_1 max|x|)^2 (the DFT basis is window / |window|_2): this bound keeps it
        # 50x below float32's largest value for decimation filters of gain |taps|_1 up to 2.
        self.max_abs_sample = float(np.sqrt(np.finfo(np.float32).max) / (20 * np.sqrt(model.featurizer.n_fft)))
        self.reset()

    # ------------------------------------------------------------------ geometry
    @property
    def unit_samples(self) -> int:
        """Raw samples per output frame (the step granularity)."""
        return self.core.unit_samples

    @property
    def lookahead_samples(self) -> int:
        """An output frame aligned to sample ``j * unit_samples`` reads samples up to that plus this many."""
        return int(self.model.span_samples[1])

    @property
    def buffering_samples(self) -> int:
        """Longest wait, in samples, between the last sample an output frame reads and its emission
        (frames are computed a whole unit at a time; chunking adds up to one chunk more)."""
        return self.unit_samples - self.model.featurizer.samples_per_frame

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the session: the next ``push`` starts a new one from the model's initial state."""
        self.state = self.core.init_state()
        self._pending = np.zeros((0, NUM_BANDS, NUM_ELECTRODES), dtype=np.float32)
        self._primed = False
        self._skip = self.core.skip_frames
        self._last_valid = np.zeros(NUM_BANDS * NUM_ELECTRODES, dtype=np.float32)
        self.samples_pushed = 0
        self.frames_out = 0
        self.repaired_values = 0
        self.finished = False

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.num_classes), dtype=np.float32)

    def _repair(self, x: np.ndarray) -> np.ndarray:
        """(n, 2, 16) float32 with each bad value held at its channel's last valid value."""
        flat = x.reshape(len(x), NUM_BANDS * NUM_ELECTRODES)
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(flat) <= self.max_abs_sample)  # NaN compares False
        if bad.any():
            if not self.repaired_values:
                log.warning("streaming input holds NaN, infinite or out-of-range values (first at sample %d): "
                            "each is replaced by the last valid value of its channel",
                            self.samples_pushed + int(np.argmax(bad.any(1))))
            self.repaired_values += int(bad.sum())
            last = np.where(bad, -1, np.arange(len(flat))[:, None])
            np.maximum.accumulate(last, axis=0, out=last)  # index of the last valid value so far, -1 = none
            flat = np.where(last >= 0, flat[np.maximum(last, 0), np.arange(flat.shape[1])], self._last_valid)
            x = flat.reshape(x.shape)
        if len(flat):
            self._last_valid = flat[-1].copy()
        return x

    @torch.no_grad()
    def _run(self, samples: np.ndarray) -> np.ndarray:
        out = self.step(torch.from_numpy(samples), *self.state)
        # A float64 sum is finite iff every value is (float32 values cannot overflow it): one cheap pass.
        if not bool(torch.stack([t.sum(dtype=torch.float64) for t in out if t.is_floating_point()]).isfinite().all()):
            bad = [n for n, t in zip(["log_probs", *self.core.state_names], out)
                   if t.is_floating_point() and not bool(torch.isfinite(t).all())]
            if bad:
                raise ValueError(f"the streaming step's {bad[0]} became non-finite on finite input (the model's "
                                 f"weights overflow); the step was not applied")
        lp, self.state = out[0], list(out[1:])
        lp = lp.float().numpy()
        if self._skip:
            drop = min(self._skip, len(lp))
            lp, self._skip = lp[drop:], self._skip - drop
        self.frames_out += len(lp)
        return lp

    def _consume(self) -> np.ndarray:
        if not self._primed:
            need = self.core.prime_samples
            if len(self._pending) < need:
                return self._empty()
            raw = np.concatenate([np.zeros((self.core.half_taps, NUM_BANDS, NUM_ELECTRODES), np.float32),
                                  self._pending[:need]])
            self.state[0] = torch.from_numpy(raw)
            self._pending, self._primed = self._pending[need:], True
        u = self.unit_samples
        out = []
        while len(self._pending) >= self._step_samples:
            units = self.units_per_step or len(self._pending) // u
            out.append(self._run(np.ascontiguousarray(self._pending[:units * u])))
            self._pending = self._pending[units * u:]
        return np.concatenate(out) if out else self._empty()

    def push(self, samples: Any) -> np.ndarray:
        """Feed the next raw samples of the session.

        Args:
            samples: (n, 2, 16) EMG (numpy or torch, any float dtype), n >= 0. A NaN, infinite or
                out-of-range value is repaired (held at its channel's last valid value; see the module
                docstring), never passed to the model.

        Returns:
            (k, 99) float32 log-probs of the output frames completed by these samples (k >= 0), in
            order; frame ``frames_out - k + i`` of the session.

        Raises:
            ValueError: a bad shape, or a step that turned non-finite (not applied).
        """
        if self.finished:
            raise RuntimeError("push after flush: call reset() to start a new session")
        x = samples.detach().cpu().numpy() if hasattr(samples, "detach") else np.asarray(samples)
        if x.ndim != 3 or x.shape[1:] != (NUM_BANDS, NUM_ELECTRODES):
            raise ValueError(f"expected samples of shape (n, {NUM_BANDS}, {NUM_ELECTRODES}), got {x.shape}")
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, then repaired
            x = self._repair(x.astype(np.float32, copy=False))
        self._pending = np.concatenate([self._pending, x])
        self.samples_pushed += len(x)
        return self._consume()

    def expected_frames(self, samples: int | None = None) -> int:
        """Output frames of the offline forward of ``samples`` (default: all pushed) input samples."""
        n = self.samples_pushed if samples is None else samples
        if n < self.model.min_input_samples:
            return 0
        return int(self.model.output_lengths(torch.tensor([n]))[0])

    def flush(self) -> np.ndarray:
        """End the session: the frames the offline forward computes from its right zero padding.

        Returns:
            (k, 99) log-probs; afterwards ``frames_out == expected_frames()``.
        """
        if self.finished:
            return self._empty()
        self.finished = True
        target = self.expected_frames()
        out = []
        while self.frames_out < target:  # at most a few units: decimation padding, a partial stride
            missing = max(self._step_samples - len(self._pending), 0) if self._primed else \
                self.core.prime_samples - len(self._pending)
            self._pending = np.concatenate([self._pending, np.zeros((missing,) + self._pending.shape[1:],
                                                                    np.float32)])
            before = self.frames_out
            out.append(self._consume())
            if self.frames_out > target:
                out[-1] = out[-1][: len(out[-1]) - (self.frames_out - target)]
                self.frames_out = target
            if self.frames_out == before and self._primed and missing == 0:
                break  # pragma: no cover - cannot happen: a full unit always yields a frame
        return np.concatenate(out) if out else self._empty()
