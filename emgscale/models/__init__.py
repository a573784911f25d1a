"""CTC models for EMG-to-text: a shared wrapper (:class:`CTCModel`) around registered encoders.

Encoders (``model.arch``): ``tds`` (the paper's TDS-Conv baseline), ``lstm`` / ``gru`` (uni- or
bidirectional), ``cnn_rnn`` (strided conv front end + BiGRU/BiLSTM), ``conformer`` and ``transformer``
(conv subsampling + local/chunked/full rotary attention), ``s4d`` (causal strided conv + diagonal
state-space layers), ``splash`` (SplashNet's split-and-share: one per-hand MLP + TDS stack whose
weights both bands share). All follow one contract,
``forward(x (B, T, C), lengths (B,)) -> (y (B, T', D), out_lengths (B,))``, with padding never changing
a sequence's output. Build a model with ``build_model(ModelConfig(...))``.

Names load lazily: ``ModelConfig`` and the encoder settings (:mod:`emgscale.models.config`) come without
torch, so a config is checked before torch is imported.

Meta's released reference checkpoints (Lightning ``TDSConvCTCModule``) load with
``import_reference(path)``; ``export_reference(model)`` goes back (:mod:`emgscale.models.reference`).
braindecode's ``EMG2QwertyNet`` state dicts load with ``import_braindecode(path, kwargs)``;
``export_braindecode(model)`` goes back (:mod:`emgscale.models.braindecode`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Encoder": "common", "Span": "common", "ModelConfig": "config", "ConformerConfig": "config",
    "FrontendConfig": "config", "CNNRNNConfig": "config", "RNNConfig": "config", "S4DConfig": "config",
    "SplashConfig": "config", "TDSConfig": "config", "TransformerConfig": "config", "BUILTIN_ARCHS": "config", "ENCODERS": "ctc",
    "CTCModel": "ctc", "build_model": "ctc", "count_parameters": "ctc", "forward_batch": "ctc",
    "register_encoder": "ctc", "model_cost": "cost", "ReferenceCheckpoint": "reference", "export_reference": "reference",
    "import_reference": "reference", "is_reference_checkpoint": "reference", "read_reference": "reference",
    "reference_as_checkpoint": "reference", "export_braindecode": "braindecode",
    "import_braindecode": "braindecode", "read_braindecode": "braindecode",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"emgscale.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'emgscale.models' has no attribute {name!r}")
