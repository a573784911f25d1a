"""Meta's released emg2qwerty models <-> emgscale: import and export of the reference's TDS checkpoints.

The reference (facebookresearch/emg2qwerty) trains ``TDSConvCTCModule`` with PyTorch Lightning; its
released ``models/generic.ckpt`` and ``models/personalized-*/user*.ckpt`` are Lightning checkpoints:
a ``torch.save`` zip holding ``state_dict`` (keys ``model.0.batch_norm.*`` ... ``model.4.*``),
``hyper_parameters`` (``in_features``, ``mlp_features``, ``block_channels``, ``kernel_width`` and the
``optimizer`` / ``lr_scheduler`` / ``decoder`` configs), ``epoch``, ``global_step`` and Lightning's
loop, callback and optimizer state.

Why a restricted unpickler: ``hyper_parameters`` pickles ``omegaconf`` objects (``DictConfig``,
``ListConfig``, their ``Metadata`` and value nodes), so ``torch.load(weights_only=True)`` refuses the
file, and ``weights_only=False`` would run whatever callables the pickle names — a downloaded
checkpoint could execute arbitrary code — and would need omegaconf installed. Here the file goes
through torch's own weights-only unpickler (tensors and storages only), with the handful of
omegaconf / typing / collections names these checkpoints use mapped to inert stand-ins (a class that
just stores its pickled state, a marker for a type name, a function returning ``{}``); the stand-ins
are then turned into plain dicts, lists and scalars. No pickled callable of the file's choosing is
ever run, and omegaconf is not needed. Any other global (an enum, a custom class) is refused with
an error naming it.

Layout: emgscale's TDS stores each block's LayerNorm / fully connected weights in its width-major
order and its conv kernel as ``(K, 1)`` (see :mod:`emgscale.models.tds`); the mapping below permutes
them exactly, so import -> export gives back the reference's tensors bit for bit. Not in the
checkpoint, taken from the reference's configs: ``hop_length`` 16 and ``n_fft`` (from ``in_features``
= 16 x (n_fft / 2 + 1)) of its ``LogSpectrogram``, rotation offsets (-1, 0, 1) with mean pooling, and
the training augmentations (emgscale's defaults are the reference's).
"""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from emgscale.config import to_dict
from emgscale.data.charset import charset
from emgscale.features.config import REFERENCE_RATE_HZ, FeatureConfig
from emgscale.models.config import ModelConfig
from emgscale.models.ctc import CTCModel, build_model
from emgscale.models.frontend import FrontendConfig
from emgscale.models.tds import TDSConfig, to_channel_major, to_width_major

__all__ = ["ReferenceCheckpoint", "export_reference", "import_reference", "is_reference_checkpoint",
           "read_reference", "reference_as_checkpoint", "reference_lightning_checkpoint"]

NUM_ELECTRODES = 16
HOP_LENGTH = 16  # the reference's LogSpectrogram hop (config/transforms/log_spectrogram.yaml)
REQUIRED_HPARAMS = ("in_features", "mlp_features", "block_channels", "kernel_width")
TRAINING_HPARAMS = ("optimizer", "lr_scheduler", "decoder")  # kept in hyper_parameters, not model settings
LIGHTNING_VERSION = "1.8.6"  # what the reference pins; written into exported checkpoints


# --- safe loading -------------------------------------------------------------------------------

class _Container:
    """Stand-in for an omegaconf DictConfig / ListConfig: keeps the pickled state."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DictConfig(_Container):
    pass


class _ListConfig(_Container):
    pass


class _Node(_Container):
    """Stand-in for an omegaconf value node (AnyNode, IntegerNode, ...): the value is ``state['_val']``."""


class _Metadata(_Container):
    """Stand-in for omegaconf Metadata / ContainerMetadata (type annotations only; dropped)."""


class _TypeName(str):
    """A type named in omegaconf metadata (``typing.Any``, ``builtins.list``, ...), kept as its name."""


def _empty_dict(*_: Any) -> dict[str, Any]:
    return {}  # omegaconf's resolver cache: a defaultdict(dict) that is always empty when pickled


_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode",
          "InterpolationResultNode", "StringInterpolationResultNode")
_SAFE_GLOBALS: list[tuple[Any, str]] = [
    (_DictConfig, "omegaconf.dictconfig.DictConfig"), (_ListConfig, "omegaconf.listconfig.ListConfig"),
    (_Metadata, "omegaconf.base.Metadata"), (_Metadata, "omegaconf.base.ContainerMetadata"),
    *[(_Node, f"omegaconf.nodes.{n}") for n in _NODES],
    (_empty_dict, "collections.defaultdict"),
    *[(_TypeName(n), n) for n in ("typing.Any", "builtins.list", "builtins.dict", "builtins.int",
                                   "builtins.float", "builtins.str", "builtins.bool", "builtins.tuple")],
]


def _plain(obj: Any) -> Any:
    """Stand-ins and containers -> plain dicts, lists and scalars."""
    if isinstance(obj, _DictConfig):
        content = obj.state.get("_content")
        return {k: _plain(v) for k, v in content.items()} if isinstance(content, dict) else content
    if isinstance(obj, _ListConfig):
        content = obj.state.get("_content")
        return [_plain(v) for v in content] if isinstance(content, list) else content
    if isinstance(obj, _Node):
        return _plain(obj.state.get("_val"))
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _load(path: Path) -> dict[str, Any]:
    """The checkpoint's top-level dict, loaded without running pickled code (see the module docstring)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a global outside the allowlist: name it
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it pickles {found.group(1)}, which is not allowed" if found else "refused by the weights-only unpickler"
        raise ValueError(f"{path}: not a readable reference checkpoint ({what})") from None
    except Exception as e:  # truncated zip, missing storage record...
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]  # torch's first sentence
        raise ValueError(f"{path}: not a readable reference checkpoint ({msg})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path}: not a PyTorch Lightning checkpoint (no 'state_dict' / 'hyper_parameters')")
    return ckpt


#: A Lightning checkpoint's pickle (names, hyper-parameters, no tensor data) is kilobytes; a bigger one is
#: not read into memory to be scanned.
_MAX_PICKLE_BYTES = 64 << 20


def is_reference_checkpoint(path: "str | Path") -> bool:
    """Whether ``path`` is a Lightning checkpoint of the reference's ``TDSConvCTCModule``.

    Cheap and safe: reads only the pickle inside the zip and lists its strings (``pickletools.genops``
    never executes anything); no tensor is loaded. False for emgscale checkpoints, folders and
    anything unreadable.

    Args:
        path: a file.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) != 1 or zf.getinfo(names[0]).file_size > _MAX_PICKLE_BYTES:
                return False
            data = zf.read(names[0])
        strings = {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    except Exception:
        return False
    need = {"pytorch-lightning_version", "state_dict", "hyper_parameters", *REQUIRED_HPARAMS,
            "model.3.tds_conv_blocks.0.conv2d.weight"}
    return need <= strings


# --- the layout mapping -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Rule:
    """How one emgscale tensor maps to one reference tensor (``kind``: same | conv | vec | mat)."""

    ref_key: str
    kind: str = "same"
    channels: int = 0

    def to_ref(self, t: Tensor) -> Tensor:
        if self.kind == "conv":
            return t.transpose(2, 3).contiguous()  # (C, C, K, 1) -> (C, C, 1, K)
        if self.kind == "vec":
            return to_channel_major(t, self.channels)
        if self.kind == "mat":
            return to_channel_major(to_channel_major(t, self.channels).T, self.channels).T.contiguous()
        return t

    def from_ref(self, t: Tensor) -> Tensor:
        if self.kind == "conv":
            return t.transpose(2, 3).contiguous()
        if self.kind == "vec":
            return to_width_major(t, self.channels)
        if self.kind == "mat":
            return to_width_major(to_width_major(t, self.channels).T, self.channels).T.contiguous()
        return t


def _rules(cfg: ModelConfig, keys: list[str]) -> dict[str, _Rule]:
    """emgscale state_dict key -> its :class:`_Rule`, for a TDS model of ``cfg`` with these keys."""
    rules: dict[str, _Rule] = {}
    for key in keys:
        parts = key.split(".")
        if parts[:2] == ["featurizer", "norm"]:
            rules[key] = _Rule("model.0.batch_norm." + ".".join(parts[2:]))
        elif parts[0] == "frontend":
            rules[key] = _Rule("model.1." + ".".join(parts[1:]))
        elif parts[0] == "head":
            rules[key] = _Rule("model.4." + ".".join(parts[1:]))
        elif parts[:2] == ["encoder", "tds_conv_blocks"]:
            ref_key = "model.3." + ".".join(parts[1:])
            channels = cfg.tds.block_channels[int(parts[2]) // 2]
            if parts[3] == "conv2d":
                rules[key] = _Rule(ref_key, "conv" if parts[4] == "weight" else "same")
            elif parts[3] == "fc_block" and parts[5] == "weight":
                rules[key] = _Rule(ref_key, "mat", channels)
            else:  # fc biases, LayerNorm weight and bias
                rules[key] = _Rule(ref_key, "vec", channels)
        else:
            raise ValueError(f"emgscale tensor {key!r} has no counterpart in the reference's TDSConvCTCModule")
    return rules


def _model_config(hp: dict[str, Any], path: Path) -> ModelConfig:
    """The emgscale model config of a reference checkpoint's ``hyper_parameters``."""
    unknown = sorted(set(hp) - set(REQUIRED_HPARAMS) - set(TRAINING_HPARAMS))
    missing = [k for k in REQUIRED_HPARAMS if k not in hp]
    if unknown or missing:
        what = [f"unknown {', '.join(map(repr, unknown))}"] if unknown else []
        what += [f"missing {', '.join(map(repr, missing))}"] if missing else []
        raise ValueError(f"{path}: hyper_parameters not those of TDSConvCTCModule ({'; '.join(what)})")

    def ints(name: str) -> list[int]:
        v = hp[name]
        if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, int) and x > 0 for x in v):
            raise ValueError(f"{path}: hyper_parameters.{name} must be a list of positive ints, got {v!r}")
        return list(v)

    in_features, kernel_width = hp["in_features"], hp["kernel_width"]
    if not isinstance(in_features, int) or in_features % NUM_ELECTRODES or in_features // NUM_ELECTRODES < 2:
        raise ValueError(f"{path}: hyper_parameters.in_features {in_features!r} is not 16 x (n_fft // 2 + 1)")
    if not isinstance(kernel_width, int) or kernel_width < 1:
        raise ValueError(f"{path}: hyper_parameters.kernel_width must be a positive int, got {kernel_width!r}")
    n_fft = 2 * (in_features // NUM_ELECTRODES - 1)
    return ModelConfig(
        arch="tds",
        features=FeatureConfig(kind="log_spectrogram", n_fft=n_fft, hop_samples=HOP_LENGTH, norm="batch",
                               sample_rate_hz=REFERENCE_RATE_HZ, input_sample_rate_hz=REFERENCE_RATE_HZ),
        frontend=FrontendConfig(kind="rotation_mlp", mlp_features=ints("mlp_features"), offsets=[-1, 0, 1],
                                pooling="mean", dropout=0.0),
        tds=TDSConfig(block_channels=ints("block_channels"), kernel_width=kernel_width, dropout=0.0,
                      feature_order="channel_major"))


def reference_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the reference's ``TDSConvCTCModule`` for ``cfg`` and its shape, computed from the
    settings alone (nothing allocated), in the reference's names and layout.

    A test holds it equal to the shapes of the built model mapped by :func:`export_reference`.
    """
    bands, width = 2, NUM_ELECTRODES
    in_features = NUM_ELECTRODES * (cfg.features.n_fft // 2 + 1)
    mlp, channels, k = cfg.frontend.mlp_features, cfg.tds.block_channels, cfg.tds.kernel_width
    nf = bands * mlp[-1]
    shapes: dict[str, tuple[int, ...]] = {f"model.0.batch_norm.{n}": (bands * width,)
                                          for n in ("weight", "bias", "running_mean", "running_var")}
    shapes["model.0.batch_norm.num_batches_tracked"] = ()
    for b in range(bands):
        for j, (out, inp) in enumerate(zip(mlp, [in_features, *mlp[:-1]])):
            shapes |= {f"model.1.mlps.{b}.mlp.{2 * j}.weight": (out, inp), f"model.1.mlps.{b}.mlp.{2 * j}.bias": (out,)}
    for i, c in enumerate(channels):
        conv, fc = f"model.3.tds_conv_blocks.{2 * i}.", f"model.3.tds_conv_blocks.{2 * i + 1}."
        shapes |= {conv + "conv2d.weight": (c, c, 1, k), conv + "conv2d.bias": (c,),
                   conv + "layer_norm.weight": (nf,), conv + "layer_norm.bias": (nf,),
                   fc + "fc_block.0.weight": (nf, nf), fc + "fc_block.0.bias": (nf,),
                   fc + "fc_block.2.weight": (nf, nf), fc + "fc_block.2.bias": (nf,),
                   fc + "layer_norm.weight": (nf,), fc + "layer_norm.bias": (nf,)}
    num_classes = cfg.num_classes or charset().num_classes
    return shapes | {"model.4.weight": (num_classes, nf), "model.4.bias": (num_classes,)}


def _check_tensors(ref: dict[str, Any], shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """The file's tensors are exactly those ``shapes`` names, each of that shape (one line naming the first
    that is not), so a model built from the hyper-parameters is no bigger than the file's own tensors."""
    missing = [k for k in shapes if k not in ref]
    extra = sorted(set(ref) - set(shapes))
    if missing or extra:
        what = [f"missing tensor {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []
        what += [f"tensor {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''} does not map"] if extra else []
        raise ValueError(f"{path}: state_dict does not match its hyper_parameters ({'; '.join(what)})")
    for key, want in shapes.items():
        t = ref[key]
        if not isinstance(t, Tensor) or tuple(t.shape) != want:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{path}: tensor {key} has shape {got}, expected {want} from hyper_parameters")


# --- public API ---------------------------------------------------------------------------------

@dataclass
class ReferenceCheckpoint:
    """A reference checkpoint, read into emgscale's terms.

    Attributes:
        model_cfg: the emgscale model config computing the reference module's function.
        state_dict: every tensor of the reference module, in emgscale's names and layout.
        hyper_parameters: the checkpoint's ``hyper_parameters`` as plain containers.
        epoch: Lightning's ``epoch``.
        global_step: Lightning's ``global_step``.
    """

    model_cfg: ModelConfig
    state_dict: dict[str, Tensor]
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    global_step: int = 0


def read_reference(path: "str | Path") -> ReferenceCheckpoint:
    """Read a reference ``TDSConvCTCModule`` Lightning checkpoint, mapping every tensor.

    Args:
        path: the ``.ckpt`` file.

    Raises:
        ValueError: unreadable or truncated file, unknown or missing hyper-parameters, a missing,
            extra or wrongly shaped tensor; one line naming the file and the problem.
    """
    path = Path(path)
    ckpt = _load(path)
    hp = _plain(ckpt["hyper_parameters"])
    if not isinstance(hp, dict):
        raise ValueError(f"{path}: hyper_parameters is not a mapping")
    cfg = _model_config(hp, path)
    ref = ckpt["state_dict"]
    if not isinstance(ref, dict):
        raise ValueError(f"{path}: state_dict is not a mapping of tensors")
    _check_tensors(ref, reference_shapes(cfg), path)  # before anything the hyper-parameters size is allocated
    try:
        target = build_model(cfg).state_dict()
    except ValueError as e:
        raise ValueError(f"{path}: hyper_parameters do not make a TDS model ({e})") from None
    rules = _rules(cfg, list(target))
    _check_tensors(ref, {r.ref_key: tuple(r.to_ref(target[k]).shape) for k, r in rules.items()}, path)
    state = {key: rule.from_ref(ref[rule.ref_key]).to(target[key].dtype) for key, rule in rules.items()}
    return ReferenceCheckpoint(cfg, state, hp, int(ckpt.get("epoch", 0) or 0), int(ckpt.get("global_step", 0) or 0))


def reference_as_checkpoint(path: "str | Path") -> dict[str, Any]:
    """The keys of an emgscale checkpoint that loading a model needs, from a reference checkpoint.

    Args:
        path: the reference ``.ckpt`` file.

    Returns:
        ``{"model": state_dict, "config": {"model": ...}, "step", "epoch", "source": "reference:<path>"}``.
    """
    r = read_reference(path)
    return {"model": r.state_dict, "config": {"model": to_dict(r.model_cfg)}, "step": r.global_step,
            "epoch": r.epoch, "source": f"reference:{path}"}


def import_reference(path: "str | Path") -> CTCModel:
    """The emgscale model (eval mode) computing a reference checkpoint's function.

    Args:
        path: the reference ``.ckpt`` file.
    """
    r = read_reference(path)
    model = build_model(r.model_cfg)
    model.load_state_dict(r.state_dict)
    return model.eval()


def _check_exportable(cfg: ModelConfig) -> None:
    f, fe, t = cfg.features, cfg.frontend, cfg.tds
    problems = []
    if cfg.arch != "tds":
        problems.append(f"model.arch is {cfg.arch!r}, not 'tds'")
    if t.feature_order != "channel_major":
        problems.append("model.tds.feature_order is not 'channel_major'")
    if (f.kind, f.norm, f.channels, f.hop_samples) != ("log_spectrogram", "batch", None, HOP_LENGTH):
        problems.append("model.features must be the log spectrogram (hop 16) of all 16 electrodes with batch norm")
    if f.sample_rate_hz != REFERENCE_RATE_HZ or f.input_sample_rate_hz != REFERENCE_RATE_HZ or f.n_fft % 2:
        problems.append("model.features must run at 2000 Hz with an even n_fft")
    if (fe.kind, list(fe.offsets), fe.pooling) != ("rotation_mlp", [-1, 0, 1], "mean"):
        problems.append("model.frontend must be rotation_mlp with offsets [-1, 0, 1] and mean pooling")
    if problems:
        raise ValueError(f"not expressible as the reference's TDSConvCTCModule: {'; '.join(problems)}")


def export_reference(model: CTCModel) -> dict[str, Tensor]:
    """An emgscale TDS model's weights in the reference's ``TDSConvCTCModule.state_dict()`` layout.

    Args:
        model: a :class:`CTCModel` with ``arch: tds`` whose config the reference can express.

    Raises:
        ValueError: the model is not one the reference's module can hold (names what differs).
    """
    _check_exportable(model.cfg)
    state = model.state_dict()
    return {rule.ref_key: rule.to_ref(state[key].detach().cpu()).clone()
            for key, rule in _rules(model.cfg, list(state)).items()}


def reference_lightning_checkpoint(model: CTCModel, *, epoch: int = 0, global_step: int = 0) -> dict[str, Any]:
    """A Lightning checkpoint dict the reference loads (``TDSConvCTCModule.load_from_checkpoint``).

    Its ``hyper_parameters`` hold the four model settings as plain values; the reference's
    ``optimizer`` / ``lr_scheduler`` / ``decoder`` come from its command line (``checkpoint=...`` passes them).

    Args:
        model: as :func:`export_reference`.
        epoch, global_step: written as Lightning's counters.
    """
    state = export_reference(model)
    cfg = model.cfg
    hp = {"in_features": NUM_ELECTRODES * (cfg.features.n_fft // 2 + 1),
          "mlp_features": list(cfg.frontend.mlp_features), "block_channels": list(cfg.tds.block_channels),
          "kernel_width": cfg.tds.kernel_width}
    return {"epoch": int(epoch), "global_step": int(global_step), "pytorch-lightning_version": LIGHTNING_VERSION,
            "state_dict": state, "hyper_parameters": hp}

