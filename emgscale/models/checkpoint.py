"""Checkpoints: one typed, versioned schema (:class:`Checkpoint`) that every reader and writer uses.

A checkpoint is one ``torch.save`` file written atomically: the model's weights, the resolved training
config (a plain dict, so the file is all evaluation needs), the loop's position (step, epoch, batch in
the epoch), optimiser / scheduler / RNG state for an exact resume, the validation history, and the
weight-averaging state and averaged weights when SWAD/SWA is on.

Reading:

* :func:`load_checkpoint` returns a :class:`Checkpoint`. Files are memory-mapped, so a reader that
  needs one field (the step, the config) does not read the optimiser state or the averaging sums.
* emgscale checkpoints hold only tensors and plain containers, so they load with
  ``torch.load(weights_only=True)``, and nothing else reads them: opening one runs no pickled code.
  A file the weights-only loader refuses is refused, naming what it pickles. Files written before
  format 2 pickle numpy's RNG state: they are refused with the command that converts a file one
  trusts (:func:`upgrade_legacy_checkpoint`, ``python -m emgscale.models upgrade-legacy``).
* Older formats are upgraded on read (:func:`upgrade_config` for the config inside), so a checkpoint
  keeps loading after the code moves on; a newer format is refused with a clear error.
* A folder stands for its ``last.pt`` (:func:`emgscale.run_folder.checkpoint_file`).
* :meth:`Checkpoint.model_config` is the typed model config inside; the whole typed training config is
  :meth:`emgscale.train.TrainConfig.from_checkpoint` (it lives above this module).
* :func:`load_weights` puts a checkpoint's weights into a model, or names the first tensor that does
  not fit (a changed architecture) in one line.
* A Lightning checkpoint of the official emg2qwerty code (Meta's ``generic.ckpt``, ``personalized-*.ckpt``)
  is recognised and imported (:mod:`emgscale.models.reference`, no pickled code run), so every place
  that takes a checkpoint takes those too.
"""

from __future__ import annotations

import math
import pickle
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emgscale.common import atomic_torch_save
from emgscale.config import from_dict
from emgscale.models.config import ModelConfig
from emgscale.models.reference import is_reference_checkpoint, reference_as_checkpoint
from emgscale.run_folder import checkpoint_file

#: 2: the data config nests its windowing under ``data.window``; RNG state holds no numpy objects.
#: 3: the TDS encoder computes the reference's function (``model.tds.feature_order: channel_major``);
#: older TDS checkpoints keep the layout they were trained with (``width_major``).
#: 4: ``best_val_cer`` became ``best_val_score`` with its metric named beside it (``best_val_metric``: a
#: frame classifier's best score is a frame error rate, not a CER); a ``run_id`` names the run.
FORMAT_VERSION = 4
_WINDOW_KEYS = ("window_samples", "stride_samples", "pad_left_samples", "pad_right_samples")


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds.

    Attributes:
        model: the model's ``state_dict``.
        config: the resolved training config as a plain dict (``emgscale.config.to_dict``).
        step, epoch, step_in_epoch: the loop's position when it was written.
        best_val_score: the best value so far of the validation metric ``best.pt`` is chosen by (lower
            is better).
        best_val_metric: that metric's name (``val_cer`` for CTC, ``val_error`` for frame classification).
        run_id: the run's identity, the same in every checkpoint of one run (also after a resume);
            empty in files written before format 4.
        history: one row of metrics per validation.
        optimizer, scheduler: their ``state_dict`` (None in weights-only files: not resumable).
        rng: one :func:`rng_state` per rank.
        averager: the weight averager's state (SWAD/SWA), opaque to everything but the averager.
        averaged_model: the averaged weights, when an average exists.
        source: where the weights come from (``emgscale``, or ``reference:<file>`` for an imported
            Lightning checkpoint of the official code).
        format_version: the schema version it was written with.
    """

    model: dict[str, torch.Tensor]
    config: dict[str, Any]
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_val_score: float = math.inf
    best_val_metric: str = "val_cer"
    run_id: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: list[dict[str, Any]] | None = None
    averager: dict[str, Any] | None = None
    averaged_model: dict[str, torch.Tensor] | None = None
    source: str = "emgscale"
    format_version: int = FORMAT_VERSION

    @property
    def resumable(self) -> bool:
        """True when the file can continue a run (optimiser and scheduler state are there)."""
        return self.optimizer is not None and self.scheduler is not None

    def weights(self, which: str = "model") -> dict[str, torch.Tensor]:
        """The trained (``model``) or averaged (``averaged``) weights.

        Raises:
            ValueError: ``averaged`` asked for where there is no average.
        """
        if which not in ("model", "averaged"):
            raise ValueError(f"which must be 'model' or 'averaged', got {which!r}")
        w = self.averaged_model if which == "averaged" else self.model
        if w is None:
            raise ValueError("this checkpoint has no averaged weights (SWAD/SWA found no average)")
        return w

    def model_config(self) -> ModelConfig:
        """The typed model config the weights were trained with.

        Raises:
            ConfigError: the stored model section does not fit today's :class:`ModelConfig`.
        """
        return from_dict(ModelConfig, self.config.get("model") or {}, "model")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "checkpoint") -> "Checkpoint":
        """Build (and upgrade) from what ``torch.load`` returned.

        Raises:
            ValueError: not an emgscale checkpoint, a newer format, missing or unknown fields.
        """
        version = data.get("format_version") if isinstance(data, dict) else None
        if version is None:
            raise ValueError(f"{where}: not an emgscale checkpoint (no format_version)")
        if version > FORMAT_VERSION:
            raise ValueError(f"{where}: checkpoint format {version} is newer than this emgscale ({FORMAT_VERSION})")
        names = {f.name for f in fields(cls)} | ({"best_val_cer"} if version < 4 else set())
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where}: unknown checkpoint fields {unknown}")
        missing = [k for k in ("model", "config") if data.get(k) is None]
        if missing:
            raise ValueError(f"{where}: checkpoint lacks {missing}")
        data = dict(data)
        data["config"] = upgrade_config(data["config"], version)
        if version < 4 and "best_val_cer" in data:
            data["best_val_score"] = data.pop("best_val_cer")
            loss = data["config"].get("loss")
            frames = isinstance(loss, dict) and loss.get("kind") == "frame_ce"
            data["best_val_metric"] = "val_error" if frames else "val_cer"
        if data.get("rng"):
            data["rng"] = [_plain_rng(r) for r in data["rng"]]
        data["format_version"] = FORMAT_VERSION
        return cls(**data)


def upgrade_config(config: dict[str, Any], version: int) -> dict[str, Any]:
    """A training config dict written by checkpoint format ``version`` in today's layout."""
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    data = config.get("data")
    if version < 2 and isinstance(data, dict) and any(k in data for k in _WINDOW_KEYS):
        window = {k: data.pop(k) for k in _WINDOW_KEYS if k in data}
        data["window"] = {**data.get("window", {}), **window}
    model = config.get("model")
    if version < 3 and isinstance(model, dict) and model.get("arch", "tds") == "tds":
        model["tds"] = {**(model.get("tds") or {})}
        model["tds"].setdefault("feature_order", "width_major")
    return config


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from: torch (CPU and this process's GPU), numpy, Python — as plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                        int(has_gauss), float(cached)],
             "python": _to_lists(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's: resume works with another GPU count
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, (list, tuple)) else cuda)


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def _plain_rng(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 RNG state (numpy objects inside) in today's plain form."""
    st = dict(state)
    if isinstance(st.get("numpy"), tuple):
        name, keys, pos, has_gauss, cached = st["numpy"]
        st["numpy"] = [name, torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)]
    if isinstance(st.get("python"), tuple):
        st["python"] = _to_lists(st["python"])
    return st


def weights_mismatch(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    """The first tensor of ``weights`` that does not fit ``model`` (in the model's order), in words; None when all fit."""
    mine = model.state_dict()
    extra = [k for k in weights if k not in mine]
    theirs = f"; the checkpoint has {extra[0]} {tuple(weights[extra[0]].shape)} instead" if extra else ""
    for name, t in mine.items():
        if name not in weights:
            return f"{name} {tuple(t.shape)} is in the model but not in the checkpoint{theirs}"
        if tuple(weights[name].shape) != tuple(t.shape):
            return f"{name} is {tuple(weights[name].shape)} in the checkpoint, {tuple(t.shape)} in the model"
    return f"{extra[0]} {tuple(weights[extra[0]].shape)} is in the checkpoint but not in the model" if extra else None


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: "str | Path") -> None:
    """``model.load_state_dict(weights)``, or one line naming the first tensor that does not fit.

    Args:
        model: the model built from this run's config.
        weights: a checkpoint's weights (:meth:`Checkpoint.weights`).
        where: the checkpoint's name in the message.

    Raises:
        ValueError: a tensor is missing, extra, or of another shape (a checkpoint of another architecture,
            or a model config changed since it was written).
    """
    problem = weights_mismatch(model, weights)
    if problem:
        raise ValueError(f"{where}: its weights do not fit this model ({problem}); a checkpoint of another "
                         "architecture or a changed model.* setting")
    model.load_state_dict(weights)


def save_checkpoint(path: "str | Path", ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically to ``path``.

    Raises:
        ValueError: a weight of the model or of the average is not finite (nothing is written).
    """
    for name, weights in (("model", ckpt.model), ("averaged_model", ckpt.averaged_model)):
        bad = [k for k, v in (weights or {}).items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f"{path}: refusing to write a checkpoint with non-finite {name} weights "
                             f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    path = Path(path)
    atomic_torch_save(ckpt.to_dict(), path)
    return path


def load_checkpoint(path: "str | Path", map_location: "str | torch.device" = "cpu") -> Checkpoint:
    """Read a checkpoint file, or the ``last.pt`` a folder stands for (:func:`~emgscale.run_folder.checkpoint_file`).

    Raises:
        FileNotFoundError: nothing there.
        ValueError: not a readable checkpoint (truncated, not a torch file), or from a newer format.
    """
    path = checkpoint_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if is_reference_checkpoint(path):  # a Lightning checkpoint of the official code (Meta's released models)
        return Checkpoint(**reference_as_checkpoint(path))
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:  # a global outside the weights-only allowlist: never run, named
        raise ValueError(_refusal(path, e)) from None
    except Exception as e:  # torch raises a variety of errors on a truncated pickle/zip
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return Checkpoint.from_dict(data, str(path))


#: What a format-1 checkpoint pickles beyond tensors and plain data (numpy's RNG state).
_LEGACY_GLOBALS = ("numpy.",)


def _unsafe_globals(path: Path, error: Exception | None = None) -> list[str]:
    """The globals of ``path``'s pickle that the weights-only loader refuses, found without running any."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint (torch's legacy format): the loader's error names the first one
        found = re.search(r"GLOBAL (\S+)", str(error or ""))
        return [found.group(1)] if found else []


def _refusal(path: Path, error: Exception) -> str:
    """The one line refusing a file the weights-only loader would not read."""
    names = _unsafe_globals(path, error)
    if names and all(n.startswith(_LEGACY_GLOBALS) for n in names):
        return (f"{path}: an emgscale checkpoint from before format 2 (it pickles numpy objects, which are not "
                f"loaded); if you trust the file, convert it once: python -m emgscale.models upgrade-legacy "
                f"{path} --out NEW.pt --i-trust-this-file")
    what = f"it pickles {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}" if names else "refused"
    return (f"{path}: not an emgscale checkpoint ({what}; checkpoints hold only tensors and plain data, and "
            "nothing else in a file is loaded or run)")


def _legacy_allowlist() -> dict[str, Any]:
    """numpy's array and dtype types by the names a pickle gives them (the RNG state of format 1)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype, "numpy.core.multiarray._reconstruct": _reconstruct,
            "numpy._core.multiarray._reconstruct": _reconstruct, "numpy.dtypes.UInt32DType": type(np.dtype("uint32"))}


def upgrade_legacy_checkpoint(src: "str | Path", dst: "str | Path") -> Path:
    """Convert a format-1 checkpoint (numpy RNG state inside) that you trust into today's format.

    The weights-only loader reads it with numpy's array and dtype types added to its allowlist (PyTorch
    does not vouch for those, hence the ``--i-trust-this-file`` of ``python -m emgscale.models
    upgrade-legacy``); a file whose pickle names anything else is refused without being loaded.

    Args:
        src: the old checkpoint.
        dst: the file to write (atomically; may not be ``src``'s path).

    Returns:
        ``dst``.

    Raises:
        FileNotFoundError: no ``src``.
        ValueError: ``src`` already loads (nothing to convert), pickles something else, or is not a
            format-1 checkpoint; ``dst`` is ``src``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such checkpoint")
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: write the converted checkpoint to another file (--out)")
    try:
        torch.load(src, map_location="cpu", weights_only=True, mmap=True)
        raise ValueError(f"{src}: already loads without conversion (nothing to upgrade)")
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(src, e)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{src}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    allowed = _legacy_allowlist()
    odd = [n for n in names if n not in allowed]
    if odd or not names:
        raise ValueError(f"{src}: not a format-1 emgscale checkpoint (it pickles {', '.join(odd[:3]) or 'nothing'} "
                         "beyond numpy arrays); not converted")
    # Still the weights-only loader: numpy's array and dtype types are the only globals it may build.
    with torch.serialization.safe_globals(list(set(allowed.values()))):
        data = torch.load(src, map_location="cpu", weights_only=True)
    if not (isinstance(data, dict) and data.get("format_version") == 1):
        raise ValueError(f"{src}: not a format-1 emgscale checkpoint")
    return save_checkpoint(dst, Checkpoint.from_dict(data, str(src)))
