"""The S4D encoder (emgscale.models.s4d): convolution mode == recurrence, S4D-Lin initialisation, ZOH,
output lengths at the front end's stride, settings, and a tiny training run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from emgscale.config import from_dict
from emgscale.models import ModelConfig, build_model
from emgscale.models import s4d as s4d_module
from emgscale.models.s4d import S4D, S4DConfig, S4DEncoder

from _overfit import overfit_one_batch

torch.set_num_threads(1)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "emgscale" / "configs" / "models"


def trained_like(layer: S4D, seed: int = 0) -> S4D:
    """``layer`` with its parameters moved off the initialisation (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def both_modes(layer: S4D, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(convolution mode, recurrence from the zero state) of ``layer`` on ``u`` (B, L, H)."""
    B, L, _ = u.shape
    with torch.no_grad():
        conv = layer(u, torch.full((B,), L))
        rec, _ = layer.recurrence(u, layer.init_state()[0].expand(B, -1, -1, -1).to(u.dtype))
    return conv, rec


@pytest.mark.parametrize("length", [1, 2, 40, 127, 250])
@pytest.mark.parametrize("trained", [False, True])
def test_convolution_mode_equals_recurrence_in_float32(length: int, trained: bool) -> None:
    """Kernel convolution (FFT) and the step-by-step recurrence agree to 1e-5 in float32."""
    torch.manual_seed(0)
    layer = S4D(16, 32, 0.001, 0.1)
    if trained:
        trained_like(layer)
    u = torch.randn(2, length, 16, generator=torch.Generator().manual_seed(1))
    conv, rec = both_modes(layer, u)
    assert conv.shape == rec.shape == u.shape
    torch.testing.assert_close(conv, rec, atol=1e-5, rtol=0)


def test_convolution_mode_equals_recurrence_in_float64_on_long_sequences() -> None:
    """In float64 the two modes agree to 1e-10 over 3000 frames (the kernel built in pieces): the maths is
    the same, float32 differences are rounding."""
    torch.manual_seed(0)
    layer = trained_like(S4D(8, 16, 0.001, 0.1)).double()
    u = torch.randn(1, 3000, 8, dtype=torch.float64)
    assert 3000 > s4d_module.KERNEL_CHUNK_FRAMES
    conv, rec = both_modes(layer, u)
    torch.testing.assert_close(conv, rec, atol=1e-10, rtol=0)


def test_recurrence_carries_its_state_across_pieces() -> None:
    """The recurrence fed in pieces (state out -> state in) gives the convolution of the whole sequence."""
    torch.manual_seed(0)
    layer = trained_like(S4D(8, 16, 0.001, 0.1))
    u = torch.randn(1, 90, 8)
    conv, _ = both_modes(layer, u)
    state, out = layer.init_state()[0], []
    with torch.no_grad():
        for a, b in ((0, 1), (1, 33), (33, 33), (33, 90)):
            y, state = layer.recurrence(u[:, a:b], state)
            out.append(y)
    torch.testing.assert_close(torch.cat(out, 1), conv, atol=1e-5, rtol=0)


def test_s4d_lin_initialisation() -> None:
    """At initialisation A_n = -1/2 + i pi n in every channel, dt is log-uniform in [dt_min, dt_max], C is
    standard complex normal (each part of variance 1/2) and D standard normal."""
    torch.manual_seed(0)
    layer = S4D(512, 64, 0.001, 0.1)
    a_real, a_imag = -layer.log_A_real.exp(), layer.A_imag
    assert a_real.shape == a_imag.shape == (512, 32)
    torch.testing.assert_close(a_real, torch.full((512, 32), -0.5))
    torch.testing.assert_close(a_imag, (math.pi * torch.arange(32.0)).expand(512, 32))
    dt = layer.log_dt.detach().exp()
    assert 0.001 <= float(dt.min()) and float(dt.max()) <= 0.1
    log_dt = layer.log_dt.detach()  # uniform in log space: mean at the midpoint, variance (range^2 / 12)
    span = math.log(0.1) - math.log(0.001)
    assert abs(float(log_dt.mean()) - (math.log(0.1) + math.log(0.001)) / 2) < 0.1 * span
    assert abs(float(log_dt.var()) - span ** 2 / 12) < 0.15 * span ** 2 / 12
    c = layer.C.detach()
    assert c.shape == (512, 32, 2) and abs(float(c.var()) - 0.5) < 0.02
    assert abs(float(layer.D.detach().var()) - 1.0) < 0.2


def test_zoh_discretisation_and_kernel_match_complex_arithmetic() -> None:
    """The real-arithmetic Ā, C' and kernel equal exp(dt A), C (exp(dt A) - 1) / A and 2 Re(C' Ā^l) computed
    with complex numbers."""
    torch.manual_seed(0)
    layer = trained_like(S4D(6, 10, 0.001, 0.1)).double()
    with torch.no_grad():
        A = torch.complex(-layer.log_A_real.exp(), layer.A_imag)
        dtA = layer.log_dt.exp()[:, None] * A
        c_prime = torch.complex(layer.C[..., 0], layer.C[..., 1]) * (dtA.exp() - 1) / A
        log_r, theta, c_re, c_im = layer.discrete()
        torch.testing.assert_close(torch.polar(log_r.exp(), theta), dtA.exp())
        torch.testing.assert_close(torch.complex(c_re, c_im), c_prime)
        ls = torch.arange(50, dtype=torch.float64)
        ref = 2 * torch.einsum("hn,hnl->hl", c_prime, (dtA[..., None] * ls).exp()).real
        torch.testing.assert_close(layer.kernel(50), ref)


@pytest.mark.parametrize("stride,rate_hz", [(5, 25.0), (4, 31.25)])
def test_output_lengths_follow_the_stride(stride: int, rate_hz: float) -> None:
    """The encoder gives ceil(L / stride) frames, and the model reports the new frame rate and lengths."""
    cfg = from_dict(ModelConfig, {"arch": "s4d", "frontend": {"mlp_features": [16]},
                                  "s4d": {"d_model": 8, "d_state": 4, "num_layers": 1, "kernel_size": stride + 2,
                                          "stride": stride}})
    model = build_model(cfg).eval()
    assert model.encoder.subsampling == stride
    assert model.samples_per_frame == 16 * stride and model.frame_rate_hz == pytest.approx(rate_hz)
    assert model.span_samples[0] is None and model.left_context_frames is None  # the state remembers all
    enc = model.encoder
    lengths = torch.arange(1, 3 * stride + 2)
    torch.testing.assert_close(enc.output_lengths(lengths), -(-lengths // stride))
    with torch.no_grad():
        for n in (2000, 2001, 2000 + 16 * stride):
            y, out = model(torch.randn(1, n, 2, 16), torch.tensor([n]))
            assert y.shape[1] == int(out[0]) == int(model.output_lengths(torch.tensor([n]))[0])


@pytest.mark.parametrize("setting,key", [({"d_state": 5}, "s4d.d_state"), ({"d_model": 0}, "s4d.d_model"),
                                         ({"num_layers": 0}, "s4d.num_layers"), ({"stride": 0}, "s4d.stride"),
                                         ({"kernel_size": 3, "stride": 4}, "s4d.kernel_size"),
                                         ({"dt_min": 0.2, "dt_max": 0.1}, "s4d.dt_min"),
                                         ({"dropout": 1.0}, "dropout")])
def test_bad_settings_raise_one_line_naming_the_key(setting: dict, key: str) -> None:
    """An impossible s4d setting raises ValueError whose one-line message names the key."""
    with pytest.raises(ValueError, match=key) as err:
        S4DEncoder(24, S4DConfig(**setting))
    assert "\n" not in str(err.value)


def test_tiny_training_run_lowers_the_loss() -> None:
    """configs/models/s4d_tiny.yaml trained 30 Adam steps on one batch halves its CTC loss."""
    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, yaml.safe_load((CONFIG_DIR / "s4d_tiny.yaml").read_text())["model"])
    model = build_model(cfg).train()
    losses = overfit_one_batch(model)
    assert losses[-1] < 0.5 * losses[0], losses


def test_state_is_real_and_sized_by_the_config() -> None:
    """The streaming state is the front-end conv's last kernel - 1 frames, then (1, 2, H, N/2) per layer."""
    enc = S4DEncoder(24, S4DConfig(d_model=8, d_state=6, num_layers=3, kernel_size=7, stride=5))
    shapes = [tuple(t.shape) for t in enc.init_state()]
    assert shapes == [(1, 6, 24)] + [(1, 2, 8, 3)] * 3
    assert all(t.dtype == torch.float32 for t in enc.init_state())
    assert enc.recurrent_flops(10) == 10 * 3 * (11 * 8 * 3 + 3 * 8)
    assert enc.stream_skip_frames == 0
