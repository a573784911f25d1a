"""Checkpoints: model, optimiser, scheduler, step, RNG state, resolved config and averaging state.

A checkpoint is one ``torch.save`` file written atomically. It carries ``format_version`` so that later
code keeps loading it; :func:`load_model` rebuilds the model from the config stored inside, so a
checkpoint file is all evaluation needs.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emgscale.common import atomic_torch_save

FORMAT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from: torch (CPU and CUDA), numpy, Python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: "str | Path", **state: Any) -> Path:
    """Write ``state`` (plus ``format_version``) atomically to ``path``."""
    path = Path(path)
    atomic_torch_save({"format_version": FORMAT_VERSION, **state}, path)
    return path


def load_checkpoint(path: "str | Path", map_location: "str | torch.device" = "cpu") -> dict[str, Any]:
    """Read a checkpoint file or the ``last.pt`` inside a checkpoint folder.

    Raises:
        FileNotFoundError: nothing there.
        ValueError: not an emgscale checkpoint, or from a newer format.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises a variety of errors on a truncated pickle/zip
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
    if version is None:
        raise ValueError(f"{path}: not an emgscale checkpoint (no format_version)")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version} is newer than this emgscale ({FORMAT_VERSION})")
    return ckpt


def load_model(path: "str | Path", which: str = "model", map_location: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """Rebuild the model stored in a checkpoint, in eval mode, with its training config.

    Args:
        path: checkpoint file (or run's checkpoint folder).
        which: ``"model"`` for the trained weights, ``"averaged"`` for the SWAD/SWA average when present.

    Returns:
        ``(model, cfg)`` where ``cfg`` is the :class:`~emgscale.train.TrainConfig` it was trained with.
    """
    from emgscale.config import from_dict
    from emgscale.models import build_model
    from emgscale.train import TrainConfig

    ckpt = load_checkpoint(path, map_location)
    cfg = from_dict(TrainConfig, ckpt["config"])
    model = build_model(cfg.model)
    key = "averaged_model" if which == "averaged" else "model"
    if ckpt.get(key) is None:
        raise ValueError(f"{path}: checkpoint has no '{key}' weights")
    model.load_state_dict(ckpt[key])
    model.eval()
    return model, cfg
