"""Applying a fine-tune mode to a model, and the optimiser's parameter groups (layer-wise rates).

The modes and their settings are in :mod:`emgscale.train.finetune_config` (torch-free); the adapters in
:mod:`emgscale.models.lora`. The loop calls :func:`prepare_finetune` after loading ``run.init_from`` and
applying ``run.freeze``, saves :func:`plain_state_dict` (adapters merged: a checkpoint of a LoRA fine-tune
loads into the plain model) and resumes through :func:`load_plain_weights`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from emgscale.common import print0
from emgscale.models.checkpoint import load_weights
from emgscale.models.lora import add_lora, has_lora, load_merged, merged_state_dict
from emgscale.train.finetune_config import FinetuneConfig

#: The normalisation modules ``mode=frontend`` trains (by class name, so the featurizer's masked batch norm and
#: rolling norm count, as would a norm an encoder defines itself).
_NORM_SUFFIX = "Norm"


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) or \
        type(module).__name__.endswith(_NORM_SUFFIX)


def frontend_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters ``mode=frontend`` trains: normalisation layers, the front end
    (``frontend.*`` and the encoder's ``finetune_frontend`` sub-modules) and the head."""
    prefixes = ["frontend.", "head."]
    encoder = getattr(model, "encoder", None)
    prefixes += [f"encoder.{name}." for name in getattr(encoder, "finetune_frontend", ())]
    norms = [name + "." for name, m in model.named_modules() if name and _is_norm(m)]
    return {n for n, _ in model.named_parameters() if any(n.startswith(p) for p in prefixes + norms)}


def block_of(name: str) -> str:
    """The block a parameter belongs to for layer-wise rates: ``featurizer``, ``frontend``, ``head``, or an
    encoder child, split by its index when it is a list of blocks (``encoder.tds_conv_blocks.3``,
    ``encoder.rnn``)."""
    parts = name.split(".")
    if parts[0] != "encoder" or len(parts) < 3:
        return parts[0]
    return ".".join(parts[:3]) if parts[2].isdigit() else ".".join(parts[:2])


def param_groups(model: nn.Module, lr: float, layer_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: one group (at ``lr``) when ``layer_decay`` is 1, else
    one per block (:func:`block_of`; depth by registration order) at ``lr * layer_decay ** (blocks above
    it)``, from the top: the head's group (at ``lr``) first.

    Raises:
        ValueError: no parameter is trainable.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameter left (run.freeze and finetune.mode freeze them all)")
    if layer_decay == 1.0:
        return [{"params": [p for _, p in trainable]}]
    order = list(dict.fromkeys(block_of(n) for n, _ in model.named_parameters()))
    groups: dict[str, dict[str, Any]] = {}
    for n, p in trainable:
        b = block_of(n)
        depth_from_top = len(order) - 1 - order.index(b)
        groups.setdefault(b, {"params": [], "lr": lr * layer_decay ** depth_from_top, "block": b})
        groups[b]["params"].append(p)
    return list(groups.values())[::-1]  # the head's first: the loop logs the first group's rate


def prepare_finetune(model: nn.Module, cfg: FinetuneConfig, lr: float, fine_tuning: bool) -> list[dict[str, Any]]:
    """Apply ``cfg.mode`` to ``model`` (in place: freeze, add adapters) and return the optimiser's groups.

    Args:
        model: the model, already loaded from ``run.init_from`` and with ``run.freeze`` applied.
        cfg: the ``finetune`` section.
        lr: ``optim.lr`` (the head's rate).
        fine_tuning: whether ``run.init_from`` is set (the config check refuses the modes without it; this
            guards direct callers).

    Returns:
        Parameter groups for the optimiser (:func:`param_groups`).

    Raises:
        ValueError: a mode other than ``full`` (or ``layer_decay`` < 1) without ``run.init_from``.
    """
    if not fine_tuning and (cfg.mode != "full" or cfg.layer_decay != 1.0):
        raise ValueError(f"finetune.mode={cfg.mode} / layer_decay={cfg.layer_decay}: needs run.init_from")
    total = sum(p.numel() for p in model.parameters())
    if cfg.mode == "frontend":
        keep = frontend_parameters(model)
        for n, p in model.named_parameters():
            if n not in keep:
                p.requires_grad_(False)
    elif cfg.mode == "lora":
        for n, p in model.named_parameters():
            if not n.startswith("head."):
                p.requires_grad_(False)
        adapted = add_lora(model, "encoder", cfg.lora_rank, cfg.lora_alpha)
        print0(f"[train] LoRA rank {cfg.lora_rank} (alpha {cfg.lora_alpha:g}) on {len(adapted)} encoder weights")
    if fine_tuning:
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print0(f"[train] fine-tune ({cfg.mode}): {trained:,} of {total:,} parameters train"
               + (f", layer-wise rates x{cfg.layer_decay:g} per block" if cfg.layer_decay != 1.0 else ""))
    return param_groups(model, lr, cfg.layer_decay)


def trainable_count(model: nn.Module) -> int:
    """Parameters that train (adapters included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a checkpoint stores: ``model.state_dict()``, adapters merged into plain weights."""
    return merged_state_dict(model) if has_lora(model) else model.state_dict()


def load_plain_weights(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load a checkpoint's (plain) weights into ``model``; into an adapted model they load as its base,
    the adapters restarting from zero (a resumed LoRA fine-tune continues from the merged weights).

    Raises:
        ValueError: the weights do not fit the model (named by ``where``).
    """
    if not has_lora(model):
        load_weights(model, weights, where)
        return
    try:
        load_merged(model, weights)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: its weights do not fit this model ({e})") from None
