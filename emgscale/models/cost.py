"""What a model costs to run: parameters, forward MFLOPs per second of EMG, streaming look-ahead.

>>> from emgscale.models import ModelConfig
>>> model_cost(ModelConfig(arch="tds"))            # doctest: +SKIP
{'params': 5312099, 'mflops_per_s': 1234.5, 'lookahead_ms': None}

* ``params``: trainable and frozen parameters of the built model (:func:`count_parameters`).
* ``mflops_per_s``: ``torch.utils.flop_counter.FlopCounterMode`` on one eval-mode forward of
  ``seconds`` of EMG (batch 1), divided by ``seconds``. It counts matmuls, convolutions and attention;
  elementwise work is not counted, nor are oneDNN's fused LSTM kernels (LSTM rows count only the layers
  around the recurrence). An encoder that says what the counter cannot see (``recurrent_flops(frames)``,
  S4D: its recurrence, its streaming form, since its offline FFT convolution is invisible) has that added.
  The same rule as ``benchmarks/bench_models.py``.
* ``lookahead_ms``: for a model that streams (its feature normalisation and its encoder have streaming
  steps, :mod:`emgscale.models.streaming`), how far past an output frame's aligned sample that frame reads
  (``span_samples[1]``, what :attr:`emgscale.stream.Streamer.lookahead_samples` reports), in ms;
  None for an offline model (it reads the whole future: bidirectional RNNs, non-causal convolutions,
  global attention).
"""

from __future__ import annotations

from typing import Any

import torch

from emgscale.models.config import ModelConfig
from emgscale.models.streaming import NotStreamable


def is_streamable(model: torch.nn.Module) -> bool:
    """True when every stage of a :class:`~emgscale.models.CTCModel` has a streaming step (what
    :class:`emgscale.stream.StreamStep` needs): the feature normalisation and the encoder."""
    if not hasattr(model.featurizer.norm, "streaming_forward"):
        return False
    try:
        model.encoder.init_state()
    except NotStreamable:
        return False
    return True


def forward_flops(model: torch.nn.Module, samples: int) -> int:
    """Forward FLOPs of one eval-mode pass over ``samples`` raw samples (batch 1), with the encoder's
    ``recurrent_flops`` added where it has them (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    f = model.featurizer  # (B, T, bands, electrodes); FLOPs do not depend on values
    emg = torch.randn(1, samples, f.num_bands, f.num_electrodes) * 20.0
    lengths = torch.full((1,), samples)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(emg, lengths)
    finally:
        model.train(was_training)
    flops = fc.get_total_flops()
    recurrent = getattr(getattr(model, "encoder", None), "recurrent_flops", None)
    if recurrent is not None:
        flops += recurrent(int(model.output_lengths(lengths)[0]))
    return int(flops)


def model_cost(model_cfg: ModelConfig, seconds: float = 4.0) -> dict[str, Any]:
    """Parameters, forward MFLOPs per second of EMG and streaming look-ahead of the model ``model_cfg`` builds.

    Args:
        model_cfg: the model (e.g. ``load_train_config(files, overrides).model``).
        seconds: EMG duration of the forward pass counted (longer than the model's receptive field, so the
            count is per second of a long session; default 4 s, the reference's training window).

    Returns:
        ``{"params": int, "mflops_per_s": float, "lookahead_ms": float | None}`` (None: offline model).

    Raises:
        ValueError: ``seconds`` is not positive or gives the model no output frame.
    """
    from emgscale.models.ctc import build_model, count_parameters

    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    torch.manual_seed(0)
    model = build_model(model_cfg)
    rate = float(model.input_sample_rate_hz)
    samples = int(round(seconds * rate))
    if samples < int(model.min_input_samples):
        raise ValueError(f"{seconds} s ({samples} samples) is shorter than the model's shortest input "
                         f"({model.min_input_samples} samples)")
    right = model.span_samples[1]
    lookahead = 1e3 * right / rate if is_streamable(model) and right is not None else None
    return {"params": count_parameters(model), "mflops_per_s": forward_flops(model, samples) / 1e6 / seconds,
            "lookahead_ms": lookahead}
