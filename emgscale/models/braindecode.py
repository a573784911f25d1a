"""braindecode's ``EMG2QwertyNet`` <-> emgscale: import and export of its state dicts.

braindecode (>= 1.5) ships ``braindecode.models.EMG2QwertyNet``, its port of the reference's
``TDSConvCTCModule``; the weights it hosts (``braindecode/emg2qwerty-generic``) are Meta's generic model
in its parameter names. A braindecode model is saved as ``torch.save(model.state_dict())`` (the hub's
``pytorch_model.bin``) beside its constructor arguments (the hub's ``config.json``, a flat dict; or a
``{"kwargs": {...}}`` file such as ``../shared/braindecode-models/emg2qwertynet_default.json``).

Layout: ``EMG2QwertyNet.state_dict()`` is the reference module's (``model.0.batch_norm.*``,
``model.1.mlps.*``, ``model.3.tds_conv_blocks.*``) with the head renamed ``model.4.*`` ->
``final_layer.*`` and, when ``drop_prob > 0``, the second fully connected layer of each block at
``fc_block.3`` (a ``Dropout`` sits at index 2). So the tensors are mapped by the reference's own rules
(:mod:`emgscale.models.reference`) plus those two renames, bit for bit both ways.

What the state dict shows is read from it (bands and electrodes, STFT bins, MLP widths, block
channels, kernel width, classes, whether there is dropout); what it cannot show (``hop_length``,
``sfreq``, ``rotation_offsets``, ``pooling``, the parity of ``n_fft``, ``drop_prob``) comes from the
constructor arguments, else braindecode's defaults. An argument that contradicts the shapes, or a
model emgscale's TDS cannot compute (another activation, ``log_eps`` other than 1e-6, another number
of classes), is one error naming the difference. braindecode's output is logits; emgscale's model
ends in ``log_softmax`` (same argmax, same CTC loss). Training-only arguments (``spec_augment`` and
its mask settings, ``log_softmax``, ``return_feature``, ``n_times``, ``input_window_seconds``,
``chs_info``) do not change emissions and are not carried: a fine-tune uses emgscale's
``model.augment`` (the reference's recipe by default). ``drop_prob`` becomes ``model.tds.dropout``
(emgscale drops the block's output; braindecode also after its hidden layer: training only).

The file is read with ``torch.load(weights_only=True)``; braindecode is not needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from emgscale.data.charset import charset
from emgscale.features.config import REFERENCE_RATE_HZ, AugmentConfig, FeatureConfig
from emgscale.features.spectral import LOG_FLOOR
from emgscale.models.config import ModelConfig
from emgscale.models.ctc import CTCModel, build_model
from emgscale.models.frontend import FrontendConfig
from emgscale.models.reference import ReferenceCheckpoint, _rules  # the reference's layout rules: one mapping
from emgscale.models.tds import TDSConfig

__all__ = ["BRAINDECODE_DEFAULTS", "braindecode_kwargs", "export_braindecode", "import_braindecode",
           "read_braindecode", "read_kwargs"]

CLASS_NAME = "braindecode.models.EMG2QwertyNet"
#: ``EMG2QwertyNet.__init__``'s arguments and defaults (braindecode 1.8.1).
BRAINDECODE_DEFAULTS: dict[str, Any] = {
    "n_outputs": 99, "n_chans": 32, "sfreq": 2000.0, "num_bands": 2, "electrodes_per_band": 16, "n_fft": 64,
    "hop_length": 16, "log_eps": 1e-6, "mlp_features": [384], "rotation_offsets": [-1, 0, 1], "pooling": "mean",
    "block_channels": [24, 24, 24, 24], "kernel_width": 32, "log_softmax": False, "activation": "torch.nn.ReLU",
    "drop_prob": 0.0, "spec_augment": False, "n_time_masks": 3, "time_mask_param": 25, "n_freq_masks": 2,
    "freq_mask_param": 4, "spec_augment_prob": 1.0, "return_feature": False, "n_times": None,
    "input_window_seconds": None, "chs_info": None,
}
#: How braindecode's config.json names ReLU (a dotted path), and the other spellings accepted.
RELU_NAMES = ("torch.nn.modules.activation.ReLU", "torch.nn.ReLU", "nn.ReLU", "ReLU", None)
#: Arguments the shapes cannot tell, always recorded with an import.
_SHAPE_FREE = ("sfreq", "n_fft", "hop_length", "rotation_offsets", "pooling", "drop_prob")
_MLP = re.compile(r"model\.1\.mlps\.(\d+)\.mlp\.(\d+)\.weight")
_CONV = re.compile(r"model\.3\.tds_conv_blocks\.(\d+)\.conv2d\.weight")


# --- reading the two files ------------------------------------------------------------------------

def read_kwargs(path: "str | Path") -> dict[str, Any]:
    """Constructor arguments from a JSON file: ``{"kwargs": {...}, ...}`` or a flat dict (hub ``config.json``).

    Raises:
        ValueError: not JSON, or not an object of arguments (names the file).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such kwargs file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if isinstance(raw, dict) and "kwargs" in raw:
        if raw.get("class", CLASS_NAME) != CLASS_NAME:
            raise ValueError(f"{path}: class is {raw['class']!r}, not {CLASS_NAME}")
        raw = raw["kwargs"]
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of EMG2QwertyNet arguments")
    return {k: v for k, v in raw.items() if k != "braindecode_version"}


def _sidecar(path: Path) -> Path | None:
    """The kwargs file that goes with a state dict: ``<stem>.json``, or ``config.json`` beside ``pytorch_model.bin``."""
    for cand in (path.with_suffix(".json"), path.parent / "config.json" if path.name == "pytorch_model.bin" else None):
        if cand is not None and cand.is_file():
            return cand
    return None


def _load_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ValueError(f"{path}: no such state dict file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickled class, a truncated zip...
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise ValueError(f"{path}: not a readable state dict ({msg})") from None
    if isinstance(sd, dict) and "state_dict" in sd and "hyper_parameters" in sd:
        raise ValueError(f"{path}: a Lightning checkpoint, not a braindecode state dict (use import-reference)")
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                     for k, v in sd.items()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return dict(sd)


# --- arguments and shapes -> emgscale config ------------------------------------------------------

def _resolve_kwargs(kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(BRAINDECODE_DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown EMG2QwertyNet argument(s) {', '.join(map(repr, unknown))}")
    return {**BRAINDECODE_DEFAULTS, **kwargs}


def _shapes(sd: dict[str, Tensor], path: Path) -> dict[str, Any]:
    """What the state dict's shapes say about the constructor (keys as :data:`BRAINDECODE_DEFAULTS`)."""
    def need(key: str) -> Tensor:
        if key not in sd:
            raise ValueError(f"{path}: not an EMG2QwertyNet state dict (no tensor {key})")
        return sd[key]

    bn = need("model.0.batch_norm.weight").shape[0]
    mlp = sorted((int(m.group(1)), int(m.group(2)), tuple(t.shape)) for k, t in sd.items() if (m := _MLP.fullmatch(k)))
    convs = sorted((int(m.group(1)), tuple(t.shape)) for k, t in sd.items() if (m := _CONV.fullmatch(k)))
    if not mlp or not convs:
        raise ValueError(f"{path}: not an EMG2QwertyNet state dict (no model.1.mlps.* or model.3.tds_conv_blocks.*)")
    num_bands = max(b for b, _, _ in mlp) + 1
    band0 = [s for b, _, s in mlp if b == 0]
    if bn < num_bands or bn % num_bands or band0[0][1] % (bn // num_bands):
        raise ValueError(f"{path}: {num_bands} MLPs, {bn} BatchNorm channels and MLP input {band0[0][1]} "
                         "do not fit together")
    electrodes = bn // num_bands
    if any(len(s) != 4 or s[0] != s[1] or s[2] != 1 for _, s in convs) or len({s[3] for _, s in convs}) != 1:
        raise ValueError(f"{path}: conv2d weights {[s for _, s in convs]} are not (C, C, 1, kernel_width) of one width")
    return {"n_outputs": need("final_layer.weight").shape[0], "num_bands": num_bands,
            "electrodes_per_band": electrodes, "n_bins": band0[0][1] // electrodes,
            "mlp_features": [s[0] for s in band0], "block_channels": [s[0] for _, s in convs],
            "kernel_width": convs[0][1][3], "dropout": any(".fc_block.3." in k for k in sd)}


def _model_config(kw: dict[str, Any], given: set[str], shapes: dict[str, Any], where: str) -> ModelConfig:
    """The emgscale model of ``EMG2QwertyNet(**kw)`` whose state dict has ``shapes``; errors name what differs.

    ``given``: the arguments the user gave (the others are braindecode's defaults, and lose to the shapes)."""
    problems = []
    for key in ("n_outputs", "num_bands", "electrodes_per_band", "mlp_features", "block_channels", "kernel_width"):
        value = list(kw[key]) if isinstance(kw[key], (list, tuple)) else kw[key]
        if key in given and value != shapes[key]:
            problems.append(f"{key} {value!r} but the state dict has {shapes[key]!r}")
    n_bins = shapes["n_bins"]
    n_fft = kw["n_fft"] if "n_fft" in given else 2 * (n_bins - 1)
    if not isinstance(n_fft, int) or n_fft // 2 + 1 != n_bins:
        problems.append(f"n_fft {n_fft!r} but the state dict has {n_bins} frequency bins")
    if shapes["n_outputs"] != charset().num_classes:
        problems.append(f"n_outputs {shapes['n_outputs']} is not emgscale's {charset().num_classes} classes "
                        "(98 keys + blank)")
    if kw["n_chans"] != shapes["num_bands"] * shapes["electrodes_per_band"]:
        problems.append(f"n_chans {kw['n_chans']!r} is not num_bands x electrodes_per_band")
    if kw["activation"] not in RELU_NAMES:
        problems.append(f"activation {kw['activation']!r} (emgscale's TDS uses ReLU)")
    if not isinstance(kw["log_eps"], (int, float)) or float(kw["log_eps"]) != LOG_FLOOR:
        problems.append(f"log_eps {kw['log_eps']!r} (emgscale's log floor is {LOG_FLOOR:g})")
    if kw["pooling"] not in ("mean", "max"):
        problems.append(f"pooling {kw['pooling']!r} (mean or max)")
    offsets = list(kw["rotation_offsets"]) if isinstance(kw["rotation_offsets"], (list, tuple)) else None
    if offsets is None or not all(isinstance(o, int) for o in offsets):
        problems.append(f"rotation_offsets {kw['rotation_offsets']!r} (a list of ints)")
    hop, sfreq, drop = kw["hop_length"], kw["sfreq"], kw["drop_prob"]
    if not isinstance(hop, int) or hop < 1:
        problems.append(f"hop_length {hop!r} (a positive int)")
    if not isinstance(sfreq, (int, float)) or sfreq <= 0:
        problems.append(f"sfreq {sfreq!r} (a positive number)")
    if not isinstance(drop, (int, float)) or not 0 <= drop < 1:
        problems.append(f"drop_prob {drop!r} (in [0, 1))")
    elif shapes["dropout"] != (drop > 0):
        problems.append(f"drop_prob {drop!r} but the state dict {'has' if shapes['dropout'] else 'has no'} dropout "
                        "layers (fc_block.3)")
    if problems:
        raise ValueError(f"{where}: this EMG2QwertyNet is not expressible as emgscale's TDS: {'; '.join(problems)}")
    at_reference_rate = float(sfreq) == REFERENCE_RATE_HZ
    return ModelConfig(
        arch="tds",
        features=FeatureConfig(kind="log_spectrogram", n_fft=n_fft, hop_samples=hop, scale_with_rate=at_reference_rate,
                               sample_rate_hz=float(sfreq), input_sample_rate_hz=float(sfreq),
                               num_bands=shapes["num_bands"], num_electrodes=shapes["electrodes_per_band"],
                               norm="batch"),
        augment=AugmentConfig() if shapes["num_bands"] == 2 else AugmentConfig(temporal_jitter_samples=0),
        frontend=FrontendConfig(kind="rotation_mlp", mlp_features=shapes["mlp_features"], offsets=offsets or [0],
                                pooling=kw["pooling"], dropout=0.0),
        tds=TDSConfig(block_channels=shapes["block_channels"], kernel_width=shapes["kernel_width"],
                      dropout=float(drop), feature_order="channel_major"))


def _bd_key(ref_key: str, dropout: bool) -> str:
    """The reference's state_dict name -> braindecode's (see the module docstring)."""
    if ref_key.startswith("model.4."):
        return "final_layer." + ref_key[len("model.4."):]
    if dropout and ".fc_block.2." in ref_key:
        return ref_key.replace(".fc_block.2.", ".fc_block.3.")
    return ref_key


# --- public API -----------------------------------------------------------------------------------

def read_braindecode(path: "str | Path", kwargs: "Mapping[str, Any] | str | Path | None" = None,
                     overrides: "Mapping[str, Any] | None" = None) -> ReferenceCheckpoint:
    """Read an ``EMG2QwertyNet`` state dict into emgscale's names, layout and model config.

    Args:
        path: the ``torch.save``'d state dict (``.pt`` / the hub's ``pytorch_model.bin``), or a folder
            holding ``pytorch_model.bin`` and ``config.json`` (a hub snapshot).
        kwargs: the constructor arguments: a dict, or a JSON file (:func:`read_kwargs`). None: the
            ``<stem>.json`` beside the file (``config.json`` beside ``pytorch_model.bin``) if there is
            one, else braindecode's defaults.
        overrides: arguments that win over ``kwargs`` (the CLI's ``--arg name=value``).

    Returns:
        a :class:`~emgscale.models.reference.ReferenceCheckpoint` whose ``hyper_parameters`` are the
        constructor arguments used (``epoch`` / ``global_step`` 0: a state dict has no counters).

    Raises:
        ValueError: unreadable file, unknown argument, an argument contradicting the shapes, a
            configuration emgscale cannot compute, a missing or extra tensor; one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        kwargs = path / "config.json" if kwargs is None and (path / "config.json").is_file() else kwargs
        path = path / "pytorch_model.bin"
    if kwargs is None:
        kwargs = _sidecar(path)
    where = str(path)
    if isinstance(kwargs, (str, Path)):
        where = f"{path} with {kwargs}"
        kwargs = read_kwargs(kwargs)
    sd = _load_state(path)
    given = {**(kwargs or {}), **(overrides or {})}
    kw = _resolve_kwargs(given, where)
    cfg = _model_config(kw, set(given), _shapes(sd, path), where)
    try:
        target = build_model(cfg).state_dict()
    except ValueError as e:
        raise ValueError(f"{where}: the arguments do not make a TDS model ({e})") from None
    dropout = cfg.tds.dropout > 0
    rules = {key: (_bd_key(rule.ref_key, dropout), rule) for key, rule in _rules(cfg, list(target)).items()}
    names = {name for name, _ in rules.values()}
    missing = sorted(names - set(sd))
    extra = sorted(set(sd) - names)
    if missing or extra:
        what = [f"missing tensor {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []
        what += [f"tensor {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''} does not map"] if extra else []
        raise ValueError(f"{where}: state dict does not match EMG2QwertyNet ({'; '.join(what)})")
    state: dict[str, Tensor] = {}
    for key, (name, rule) in rules.items():
        want = tuple(rule.to_ref(target[key]).shape)
        if tuple(sd[name].shape) != want:
            raise ValueError(f"{where}: tensor {name} has shape {tuple(sd[name].shape)}, expected {want}")
        state[key] = rule.from_ref(sd[name]).to(target[key].dtype)
    return ReferenceCheckpoint(cfg, state, {k: v for k, v in kw.items() if k in given or k in _SHAPE_FREE})


def import_braindecode(path: "str | Path", kwargs: "Mapping[str, Any] | str | Path | None" = None,
                       overrides: "Mapping[str, Any] | None" = None) -> CTCModel:
    """The emgscale model (eval mode) computing an ``EMG2QwertyNet``'s function (with ``log_softmax``).

    Args:
        path, kwargs, overrides: as :func:`read_braindecode`.
    """
    r = read_braindecode(path, kwargs, overrides)
    model = build_model(r.model_cfg)
    model.load_state_dict(r.state_dict)
    return model.eval()


def braindecode_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """``EMG2QwertyNet`` constructor arguments computing the model of ``cfg``.

    Raises:
        ValueError: ``cfg`` is not a model ``EMG2QwertyNet`` can hold (names what differs).
    """
    f, fe, t = cfg.features, cfg.frontend, cfg.tds
    problems = []
    if cfg.arch != "tds" or t.feature_order != "channel_major":
        problems.append(f"model.arch {cfg.arch!r} / tds.feature_order {t.feature_order!r} (needs tds, channel_major)")
    if (f.kind, f.norm, f.channels) != ("log_spectrogram", "batch", None):
        problems.append("model.features must be the log spectrogram of every electrode with batch norm")
    if f.sample_rate_hz != f.input_sample_rate_hz:
        problems.append("model.features.sample_rate_hz must equal input_sample_rate_hz (no decimation)")
    if fe.kind != "rotation_mlp":
        problems.append(f"model.frontend.kind {fe.kind!r} (needs rotation_mlp)")
    if cfg.num_classes:
        problems.append(f"model.num_classes {cfg.num_classes} (needs the CTC charset)")
    if problems:
        raise ValueError(f"not expressible as braindecode's EMG2QwertyNet: {'; '.join(problems)}")
    scale = f.sample_rate_hz / REFERENCE_RATE_HZ if f.scale_with_rate else 1.0
    n_fft, hop = max(2, round(f.n_fft * scale)), max(1, round(f.hop_samples * scale))  # as the Featurizer rounds
    return {"n_outputs": charset().num_classes, "n_chans": f.num_bands * f.num_electrodes,
            "sfreq": float(f.sample_rate_hz),
            "num_bands": f.num_bands, "electrodes_per_band": f.num_electrodes, "n_fft": n_fft, "hop_length": hop,
            "mlp_features": list(fe.mlp_features), "rotation_offsets": list(fe.offsets), "pooling": fe.pooling,
            "block_channels": list(t.block_channels), "kernel_width": t.kernel_width, "drop_prob": float(t.dropout)}


def export_braindecode(model: CTCModel) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An emgscale TDS model as ``(EMG2QwertyNet state_dict, constructor kwargs)``.

    ``EMG2QwertyNet(**kwargs).load_state_dict(state)`` gives braindecode's model of the same function
    (logits; emgscale's log-probabilities are their ``log_softmax``).

    Args:
        model: a :class:`CTCModel` whose config :func:`braindecode_kwargs` accepts.

    Raises:
        ValueError: the model is not one ``EMG2QwertyNet`` can hold (names what differs).
    """
    kwargs = braindecode_kwargs(model.cfg)
    dropout = model.cfg.tds.dropout > 0
    state = model.state_dict()
    out = {_bd_key(rule.ref_key, dropout): rule.to_ref(state[key].detach().cpu()).clone()
           for key, rule in _rules(model.cfg, list(state)).items()}
    return out, kwargs
