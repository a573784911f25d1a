"""Low-rank adapters (LoRA, Hu et al. 2021) on a model's weight matrices, and merging them back.

:func:`add_lora` re-parametrises each chosen weight ``W`` (out, in, *kernel) as
``W + (alpha / rank) * (B @ A).view_as(W)`` with ``A`` (rank, in * kernel) and ``B`` (out, rank); ``B``
starts at zero, so the adapted model starts equal to the base model, and only ``A`` and ``B`` train (the
base weight is frozen). It uses :mod:`torch.nn.utils.parametrize`, so every module (Linear, Conv1d,
Conv2d, GRU/LSTM — whose kernels read their weights by name) sees the adapted weight without a new
forward.

:func:`merged_state_dict` is what a checkpoint stores: the model's ``state_dict`` with each adapted weight
replaced by its merged value under its plain name (no adapter keys), so eval, streaming and a further
fine-tune load it with the plain model. :func:`merge_lora` folds the adapters into the model itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

#: Module types whose weights :func:`add_lora` adapts, and which of their parameters.
_TARGETS: tuple[tuple[type, tuple[str, ...]], ...] = (
    (nn.Linear, ("weight",)), (nn.Conv1d, ("weight",)), (nn.Conv2d, ("weight",)))


class LoRADelta(nn.Module):
    """The parametrisation ``W -> W + scale * (B @ A).view_as(W)`` of one weight.

    Args:
        weight: the base weight (out, in, *kernel); only its shape, dtype and device are read.
        rank: the adapter's rank (>= 1).
        alpha: the scale is ``alpha / rank``.
    """

    def __init__(self, weight: Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        out_features, in_features = weight.shape[0], weight[0].numel()
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's weight (and peft's A)

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A).view_as(weight)


def _targets(module: nn.Module) -> list[str]:
    """The names of ``module``'s own parameters :func:`add_lora` adapts."""
    for cls, names in _TARGETS:
        if isinstance(module, cls):
            return list(names)
    if isinstance(module, nn.RNNBase):  # input and hidden matrices of every layer and direction
        return [n for n, p in module.named_parameters(recurse=False) if n.startswith("weight_") and p.dim() == 2]
    return []


def add_lora(model: nn.Module, prefix: str, rank: int, alpha: float) -> list[str]:
    """Adapt every weight matrix under the sub-module ``prefix`` of ``model`` (see the module docstring);
    freezes those base weights.

    Args:
        model: the model (changed in place).
        prefix: a sub-module name, e.g. ``"encoder"``.
        rank, alpha: see :class:`LoRADelta`.

    Returns:
        The adapted weights' names (``encoder.convs.0.conv.weight`` ...).

    Raises:
        ValueError: ``prefix`` names no module, or no adaptable weight under it.
    """
    try:
        root = model.get_submodule(prefix)
    except AttributeError:
        raise ValueError(f"LoRA: the model has no sub-module {prefix!r}") from None
    adapted = []
    for name, module in list(root.named_modules()):
        for pname in _targets(module):
            base = getattr(module, pname)
            parametrize.register_parametrization(module, pname, LoRADelta(base, rank, alpha))
            module.parametrizations[pname].original.requires_grad_(False)
            adapted.append(".".join(p for p in (prefix, name, pname) if p))
    if not adapted:
        raise ValueError(f"LoRA: no Linear, Conv1d, Conv2d or RNN weight under {prefix!r}")
    return adapted


def _lora_parametrized(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, parameter name) of every weight :func:`add_lora` adapted."""
    out = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                if any(isinstance(p, LoRADelta) for p in plist):
                    out.append((name, module, pname))
    return out


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries adapters."""
    return bool(_lora_parametrized(model))


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with each adapted weight merged (``W + scale * B @ A``) under its plain name
    and no adapter keys: the state dict of the plain model (the model itself is unchanged)."""
    sd = model.state_dict()
    for name, module, pname in _lora_parametrized(model):
        stem = f"{name}.parametrizations.{pname}." if name else f"parametrizations.{pname}."
        for k in [k for k in sd if k.startswith(stem)]:
            del sd[k]
        with torch.no_grad():
            sd[f"{name}.{pname}" if name else pname] = getattr(module, pname).detach().clone()
    return sd


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (the model becomes a plain one, equal in output); returns ``model``."""
    for _, module, pname in _lora_parametrized(model):
        parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    return model


def load_merged(model: nn.Module, weights: dict[str, Tensor]) -> None:
    """Load plain (merged) ``weights`` into an adapted ``model``: each adapted weight's base takes the merged
    value and its ``B`` restarts at zero (so the model equals the plain one loaded with ``weights``).

    Raises:
        KeyError: ``weights`` lacks an adapted weight.
        ValueError: ``weights`` has other keys than the plain model's.
    """
    adapted = _lora_parametrized(model)
    plain = dict(weights)
    with torch.no_grad():
        for name, module, pname in adapted:
            key = f"{name}.{pname}" if name else pname
            plist = module.parametrizations[pname]
            plist.original.copy_(plain.pop(key))
            for p in plist:
                if isinstance(p, LoRADelta):
                    p.lora_B.zero_()
    own = {k for k in model.state_dict() if ".parametrizations." not in f".{k}"}
    if set(plain) != own:
        odd = sorted(set(plain) ^ own)
        raise ValueError(f"LoRA: the weights do not fit the model ({', '.join(odd[:3])} ...)")
    model.load_state_dict(plain, strict=False)  # strict: checked above; the adapters' own keys are not in it
