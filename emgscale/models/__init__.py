"""CTC models for EMG-to-text: a shared wrapper (:class:`CTCModel`) around registered encoders.

Encoders (``model.arch``): ``tds`` (the paper's TDS-Conv baseline), ``lstm`` / ``gru`` (uni- or
bidirectional), ``cnn_rnn`` (strided conv front end + BiGRU/BiLSTM), ``conformer`` and ``transformer``
(conv subsampling + local/chunked/full rotary attention), ``s4d`` (causal strided conv + diagonal
state-space layers). All follow one contract,
``forward(x (B, T, C), lengths (B,)) -> (y (B, T', D), out_lengths (B,))``, with padding never changing
a sequence's output. Build a model with ``build_model(ModelConfig(...))``.

Meta's released reference checkpoints (Lightning ``TDSConvCTCModule``) load with
``import_reference(path)``; ``export_reference(model)`` goes back (:mod:`emgscale.models.reference`).
braindecode's ``EMG2QwertyNet`` state dicts load with ``import_braindecode(path, kwargs)``;
``export_braindecode(model)`` goes back (:mod:`emgscale.models.braindecode`).
"""

from emgscale.models.braindecode import export_braindecode, import_braindecode, read_braindecode
from emgscale.models.common import Encoder, Span
from emgscale.models.config import ModelConfig
from emgscale.models.conformer import ConformerConfig
from emgscale.models.ctc import ENCODERS, CTCModel, build_model, count_parameters, forward_batch, register_encoder
from emgscale.models.frontend import FrontendConfig
from emgscale.models.rnn import CNNRNNConfig, RNNConfig
from emgscale.models.reference import (ReferenceCheckpoint, export_reference, import_reference,
                                      is_reference_checkpoint, read_reference, reference_as_checkpoint)
from emgscale.models.s4d import S4DConfig
from emgscale.models.tds import TDSConfig
from emgscale.models.transformer import TransformerConfig

__all__ = [
    "CNNRNNConfig", "CTCModel", "ConformerConfig", "ENCODERS", "Encoder", "FrontendConfig", "ModelConfig",
    "RNNConfig", "ReferenceCheckpoint", "S4DConfig", "Span", "TDSConfig", "TransformerConfig", "build_model",
    "count_parameters", "export_braindecode", "export_reference", "forward_batch", "import_braindecode",
    "import_reference", "is_reference_checkpoint", "read_braindecode", "read_reference", "reference_as_checkpoint",
    "register_encoder",
]
