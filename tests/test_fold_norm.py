"""The features' batch norm taken into the rotation-invariant MLP's first layer (CTCModel.fold_norm)."""

from __future__ import annotations

import pytest
import torch

from emgscale.features.norm import MaskedBatchNorm
from emgscale.models.config import FrontendConfig
from emgscale.models.frontend import MultiBandRotationInvariantMLP


def _grads(modules):
    return [p.grad.clone() for m in modules for p in m.parameters()]


@pytest.mark.parametrize("lengths", [[40, 40, 40], [40, 31, 25]])
def test_folded_norm_equals_norm_then_mlp_in_float64(lengths):
    """The MLP on ``x * scale + shift`` (padding zero) and the MLP with the norm taken into its weights give the
    same outputs and the same gradients of every norm and MLP parameter (float64, to 1e-12), padded or not."""
    torch.manual_seed(0)
    norm = MaskedBatchNorm(32).double()
    mlp = MultiBandRotationInvariantMLP(2, 16, 33, FrontendConfig(mlp_features=[48, 24])).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x, lens = torch.randn(3, 40, 2, 16, 33, dtype=torch.float64) + 3.0, torch.tensor(lengths)
    valid = (torch.arange(40)[None] < lens[:, None]).double()[..., None, None, None]
    outs, grads = [], []
    for fold in (False, True):
        for p in [*norm.parameters(), *mlp.parameters()]:
            p.grad = None
        if fold:
            scale, shift, zeroed, _ = norm.scale_shift(x, lens)
            assert torch.equal(zeroed, x * valid)
            out = mlp(zeroed, (scale, shift), lens)
        else:
            out = mlp(norm(x, lens))
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append(_grads([norm, mlp]))
    assert torch.allclose(outs[0], outs[1], atol=1e-12, rtol=0)
    assert all(torch.allclose(a, b, atol=1e-12 * float(a.abs().max()), rtol=0) for a, b in zip(*grads))


def test_ctc_model_folds_the_norm_without_changing_its_outputs():
    """A CTC model with a batch-norm featurizer and the rotation-invariant MLP gives the same log-probabilities
    (float32, 1e-5) with and without the fold, in training (same random draws) and evaluation, and with the
    fold its features need no gradient."""
    from emgscale.models import build_model
    from emgscale.train import load_train_config

    torch.manual_seed(0)
    model = build_model(load_train_config([], ["model.arch=cnn_rnn", "model.frontend.mlp_features=[24]",
                                               "model.cnn_rnn.conv_channels=[16]", "model.cnn_rnn.strides=[2]",
                                               "model.cnn_rnn.hidden_size=16"]).model)
    assert model.fold_norm and model.featurizer.defers_norm
    x, lens = torch.randn(3, 4000, 2, 16) * 50, torch.tensor([4000, 3100, 2500])
    for train in (True, False):
        model.train(train)
        got = []
        for fold in (False, True):
            model.fold_norm = fold
            torch.manual_seed(1)
            got.append(model(x, lens))
        assert torch.equal(got[0][1], got[1][1])
        assert torch.allclose(got[0][0], got[1][0], atol=1e-5, rtol=0)
    feats, *_ = model.featurizer.forward_deferred(x, lens)
    assert not feats.requires_grad
