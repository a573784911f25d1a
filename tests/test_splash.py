"""SplashNet pieces: rolling normalisation with a warm-up (cumulative, per bin), electrode masks, and the
split-and-share encoder (``arch: splash``)."""

from __future__ import annotations

import pytest
import torch

from emgscale.features.norm import RollingNorm, build_norm
from emgscale.models.streaming import NotStreamable

from _overfit import overfit_one_batch


def _ref_norm(x: torch.Tensor, lo: int, hi: int, per_bin: bool, eps: float = 1e-5) -> torch.Tensor:
    """(x[:, t] - mean) / std over frames lo..hi-1 of a (1, T, 2, C, K) tensor, for every t (float64)."""
    win = x[:, lo:hi].double()
    dims = (1,) if per_bin else (1, 4)
    mean, var = win.mean(dims, keepdim=True), win.var(dims, unbiased=False, keepdim=True)
    return (x.double() - mean) / torch.sqrt(var + eps)


@pytest.mark.parametrize("per_bin", [False, True])
def test_cumulative_rolling_norm_uses_every_frame_so_far(per_bin: bool) -> None:
    """window_frames=None normalises frame t by the statistics of frames 0..t (per bin when asked)."""
    norm = RollingNorm(2 * 3, None, per_bin=per_bin, num_bins=4)
    x = torch.randn(1, 50, 2, 3, 4) * 2 + torch.arange(4.0)  # bins at different levels
    y = norm(x, torch.tensor([50]))
    for t in (0, 7, 49):
        assert torch.allclose(y[:, t].double(), _ref_norm(x, 0, t + 1, per_bin)[:, t], atol=1e-4), t


@pytest.mark.parametrize("window", [None, 12])
def test_warmup_frames_take_the_statistics_of_the_whole_warmup(window: int | None) -> None:
    """With a warm-up of W frames, frames < W use the statistics of frames 0..W-1; later frames are as without."""
    x = torch.randn(1, 40, 2, 3, 4) * 3 + 1
    plain = RollingNorm(6, window)(x, torch.tensor([40]))
    warm = RollingNorm(6, window, warmup_frames=10)(x, torch.tensor([40]))
    assert torch.allclose(warm[:, 10:], plain[:, 10:])
    assert torch.allclose(warm[:, :10].double(), _ref_norm(x, 0, 10, False)[:, :10], atol=1e-4)
    assert not torch.allclose(warm[:, :9], plain[:, :9])


def test_warmup_padding_invariance_and_short_sequences() -> None:
    """A padded batch equals each sequence alone; a sequence shorter than the warm-up uses all its frames."""
    norm = RollingNorm(6, None, warmup_frames=20, per_bin=True, num_bins=4)
    a, b = torch.randn(1, 30, 2, 3, 4), torch.randn(1, 8, 2, 3, 4)
    batch = torch.cat([a, torch.cat([b, torch.full((1, 22, 2, 3, 4), 7.0)], 1)])
    y = norm(batch, torch.tensor([30, 8]))
    assert torch.allclose(y[:1], norm(a, torch.tensor([30])))
    assert torch.allclose(y[1:, :8], norm(b, torch.tensor([8]))) and bool((y[1, 8:] == 0).all())
    assert torch.allclose(y[1:, :8].double(), _ref_norm(b, 0, 8, True), atol=1e-4)


@pytest.mark.parametrize("window,per_bin", [(None, True), (None, False), (9, True)])
def test_rolling_norm_streams_in_pieces_as_offline(window: int | None, per_bin: bool) -> None:
    """Fed in pieces, the streaming step gives the offline output (cumulative and per-bin forms too)."""
    norm = RollingNorm(6, window, per_bin=per_bin, num_bins=4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(1, 47, 2, 3, 4) * 2
    ref = norm(x, torch.tensor([47]))
    state, out, a = norm.init_state(), [], 0
    for n in (1, 5, 17, 3, 21):
        y, *state = norm.streaming_forward(x[:, a:a + n], *state)
        out.append(y)
        a += n
    assert torch.allclose(torch.cat(out, 1), ref, atol=1e-5)
    assert all(s.shape == t.shape for s, t in zip(state, norm.init_state()))


def test_warmup_does_not_stream_and_bad_values_are_refused() -> None:
    """A warm-up reads ahead: init_state raises NotStreamable naming the key; negative settings raise."""
    with pytest.raises(NotStreamable, match="rolling_warmup_s"):
        RollingNorm(6, None, warmup_frames=5).init_state()
    with pytest.raises(ValueError, match="rolling_warmup_s"):
        build_norm("rolling", 6, 125.0, 0.1, 1e-5, 1.0, rolling_warmup_s=-1.0)
    norm = build_norm("rolling", 6, 125.0, 0.1, 1e-5, 0.0, rolling_warmup_s=1.0, rolling_per_bin=True, num_bins=6)
    assert (norm.window_frames, norm.warmup_frames, norm.per_bin) == (None, 125, True)


def test_feature_config_keys_reach_the_norm() -> None:
    """features.rolling_window_s=0, rolling_warmup_s and rolling_per_bin arrive in the built featurizer."""
    from emgscale.features import FeatureConfig, Featurizer

    f = Featurizer(FeatureConfig(kind="log_bands", norm="rolling", rolling_window_s=0.0, rolling_warmup_s=1.0,
                                 rolling_per_bin=True))
    assert (f.norm.window_frames, f.norm.warmup_frames, f.norm.per_bin, f.norm.num_bins) == (None, 125, True, 6)
    assert f.span_samples[0] is None  # cumulative statistics: unbounded left context


def test_electrode_masks_are_contiguous_runs_per_band() -> None:
    """Each band of each window loses at most `masks` runs of contiguous electrodes, each < max_width wide."""
    from emgscale.features.augment import channel_mask
    from emgscale.features.spectral import floor_value

    torch.manual_seed(0)
    x = torch.randn(64, 5, 2, 16, 3)
    y = channel_mask(x, 0.0, masks=1, max_width=5)
    dead = (y == floor_value()).all(-1).all(1)  # (B, 2, 16): whole electrode dead over time and bins
    changed = (y != x).any(-1).any(1)
    assert torch.equal(dead, changed)  # masking is all-or-nothing per electrode
    widths = dead.sum(-1)
    assert int(widths.max()) <= 4 and int(widths.max()) > 0
    for row in dead.flatten(0, 1):  # one run: the dead electrodes are consecutive
        idx = row.nonzero().flatten()
        assert len(idx) == 0 or int(idx[-1] - idx[0]) + 1 == len(idx)
    assert torch.equal(channel_mask(x, 0.0), x)


def test_electrode_mask_config_arrives_and_is_checked() -> None:
    """augment.electrode_masks / electrode_mask_width drive the channel-mask augmentation; negatives are refused."""
    from emgscale.features.augment import augment, check_augment
    from emgscale.features.config import AugmentConfig

    off = {"temporal_jitter_samples": 0, "time_masks": 0, "freq_masks": 0}
    cfg = AugmentConfig(electrode_masks=2, electrode_mask_width=16, **off)
    torch.manual_seed(1)
    x = torch.randn(32, 6, 2, 16, 3)
    y, _ = augment(x, torch.full((32,), 6), cfg, "spectra")
    assert bool((y != x).any())
    y0, _ = augment(x, torch.full((32,), 6), AugmentConfig(**off), "spectra")
    assert torch.equal(y0, x)
    with pytest.raises(ValueError, match="augment.electrode_masks"):
        check_augment(AugmentConfig(electrode_masks=-1))


# --- the split-and-share encoder ----------------------------------------------------------------------------
def _splash_cfg(**splash):
    from emgscale.config import from_dict
    from emgscale.models import ModelConfig

    return from_dict(ModelConfig, {"arch": "splash", "frontend": {"kind": "flatten"},
                                   "features": {"kind": "log_bands", "norm": "rolling", "rolling_window_s": 0.0},
                                   "augment": {"temporal_jitter_samples": 0},
                                   "splash": {"mlp_features": [24], "block_channels": [4, 4], "kernel_width": 5,
                                              **splash}})


def _encoder(**splash):
    from emgscale.models.splash import SplashEncoder

    torch.manual_seed(0)
    return SplashEncoder(2, 16, 6, _splash_cfg(**splash).splash).eval()


def test_one_parameter_set_serves_both_hands() -> None:
    """Swapping the bands swaps the output halves (same weights per hand); parameters = one hand's network."""
    from emgscale.models.ctc import count_parameters

    enc = _encoder()
    x = torch.randn(3, 30, 2, 16, 6)
    lengths = torch.tensor([30, 30, 30])
    y, _ = enc(x.flatten(2), lengths)
    ys, _ = enc(x.flip(2).flatten(2), lengths)
    D = enc.out_features // 2
    assert torch.allclose(ys[..., :D], y[..., D:], atol=1e-6) and torch.allclose(ys[..., D:], y[..., :D], atol=1e-6)
    assert count_parameters(enc) == count_parameters(enc.mlp) + count_parameters(enc.tds)
    assert enc.mlp.mlp[0].in_features == 16 * 6 and enc.out_features == 2 * 24


def test_mirroring_feeds_right_electrode_i_at_index_c_minus_1_minus_i() -> None:
    """mirror_right: the right band's electrode i reaches the shared network at index C - 1 - i; left untouched."""
    x = torch.arange(2 * 16, dtype=torch.float32).view(1, 1, 2, 16, 1).expand(1, 2, 2, 16, 6).contiguous()
    plain, mirrored = _encoder(), _encoder(mirror_right=True)
    h, hm = plain.hands(x.flatten(2)), mirrored.hands(x.flatten(2))  # (2, T, 16, 6): left, right
    assert torch.equal(hm[0], h[0])
    for i in range(16):
        assert torch.equal(hm[1, :, 16 - 1 - i], x[0, :, 1, i]) and torch.equal(h[1, :, i], x[0, :, 1, i])


def test_shapes_lengths_and_padding_invariance() -> None:
    """(B, T, 2*C*K) -> (B, T - shrink, 2*D) with exact lengths; a padded batch equals each sequence alone."""
    enc = _encoder()
    a, b = torch.randn(1, 40, 2 * 16 * 6), torch.randn(1, 25, 2 * 16 * 6)
    batch = torch.cat([a, torch.cat([b, torch.randn(1, 15, 2 * 16 * 6) * 9], 1)])
    y, out = enc(batch, torch.tensor([40, 25]))
    assert y.shape == (2, 40 - 8, 48) and out.tolist() == [32, 17]
    assert torch.allclose(y[:1], enc(a, torch.tensor([40]))[0], atol=1e-5)
    assert torch.allclose(y[1:, :17], enc(b, torch.tensor([25]))[0], atol=1e-5) and bool((y[1, 17:] == 0).all())


def test_bad_settings_raise_naming_the_key() -> None:
    """A front end other than flatten, or block channels that do not divide the width, raise naming the key."""
    from emgscale.models import build_model

    cfg = _splash_cfg()
    cfg.frontend.kind = "rotation_mlp"
    with pytest.raises(ValueError, match="frontend.kind: flatten"):
        build_model(cfg)
    with pytest.raises(ValueError, match="splash.block_channels"):
        build_model(_splash_cfg(block_channels=[5]))


def test_tiny_splash_training_run_lowers_the_loss() -> None:
    """A tiny split-and-share CTC model trained 30 Adam steps on one batch halves its CTC loss."""
    from emgscale.models import build_model

    torch.manual_seed(0)
    model = build_model(_splash_cfg()).train()
    losses = overfit_one_batch(model)
    assert losses[-1] < 0.5 * losses[0], losses


def test_rolling_norm_moves_to_a_device_and_dtype() -> None:
    """Module.to() works on the rolling norm (no method shadows nn.Module's internals)."""
    norm = RollingNorm(6, None, warmup_frames=3).to(torch.float64)
    assert norm.weight.dtype == torch.float64


# --- the recipes --------------------------------------------------------------------------------------------
RECIPES = ("configs/recipes/splashnet.yaml", "configs/recipes/splashnet_mini.yaml",
           "configs/recipes/splashnet_small.yaml", "configs/recipes/splashnet_tiny.yaml")


def test_recipes_load_check_and_build_at_their_sizes() -> None:
    """Each recipe is a valid train config (16 s windows, arch splash) and SplashNet / -mini have ~1/2 / ~1/4 of
    the reference TDS's parameters, as the paper's."""
    from emgscale.models import build_model, count_parameters
    from emgscale.train.config import check_train_config, load_train_config

    sizes = {}
    for path in RECIPES:
        cfg = load_train_config([path], ["data.data_root=.", "data.split=pyproject.toml"])
        check_train_config(cfg)
        assert cfg.model.arch == "splash" and cfg.data.window.window_samples == 32000
        assert cfg.model.features.rolling_warmup_s == 1.0 and cfg.model.augment.time_masks == 0
        sizes[path] = count_parameters(build_model(cfg.model))
    tds = count_parameters(build_model(load_train_config(["configs/models/tds.yaml"], []).model))
    assert 0.4 < sizes[RECIPES[0]] / tds < 0.6 and 0.2 < sizes[RECIPES[1]] / tds < 0.3
    assert sizes[RECIPES[3]] < sizes[RECIPES[2]] < sizes[RECIPES[1]]


def test_recipe_streams_without_its_warmup() -> None:
    """The recipe's model refuses to stream with the 1 s warm-up; with rolling_warmup_s=0 it streams as offline."""
    import numpy as np

    from emgscale.models import build_model
    from emgscale.stream import Streamer
    from emgscale.train.config import load_train_config

    short = ["model.splash.kernel_width=4"]
    torch.manual_seed(0)
    model = build_model(load_train_config([RECIPES[3]], short).model).eval()
    with pytest.raises(NotStreamable, match="rolling_warmup_s"):
        Streamer(model)
    torch.manual_seed(0)
    model = build_model(load_train_config([RECIPES[3]], [*short, "model.features.rolling_warmup_s=0"]).model).eval()
    emg = (np.random.default_rng(0).standard_normal((3000, 2, 16)) * 20).astype(np.float32)
    with torch.no_grad():
        lp, ol = model(torch.from_numpy(emg)[None], torch.tensor([3000]))
    s, out = Streamer(model), []
    for a in range(0, 3000, 333):
        out.append(s.push(emg[a:a + 333]))
    out.append(s.flush())
    np.testing.assert_allclose(np.concatenate(out), lp[0, : int(ol[0])].numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_recipe_trains_and_evaluates_from_the_cli(tmp_path) -> None:
    """`python -m emgscale.train configs/recipes/splashnet_tiny.yaml ...` trains on 16 s windows, validates,
    writes a checkpoint that loads as arch splash, and `python -m emgscale.eval` scores it on whole sessions."""
    import json

    from emgscale.eval import load_model
    from emgscale.eval.__main__ import main as eval_main
    from emgscale.synth import SynthConfig, generate_corpus
    from emgscale.train.__main__ import main

    corpus = tmp_path / "synth"
    generate_corpus(SynthConfig(out=str(corpus), users=4, sessions_per_user=6, minutes=0.5, seed=3))
    out = tmp_path / "run"
    rc = main([RECIPES[3], f"data.data_root={corpus}", f"data.split={corpus / 'splits' / 'single_user.yaml'}",
               f"run.out_dir={out}", "data.batch_size=2", "run.tensorboard=false", "run.threads=1",
               "run.max_epochs=1", "run.steps_per_epoch=2"])
    assert rc == 0
    last = sorted(out.rglob("*.pt"))
    assert last, list(out.rglob("*"))
    model, cfg = load_model(last[-1])
    assert cfg.model.arch == "splash" and cfg.data.window.window_samples == 32000 and not model.training
    assert eval_main([str(last[-1]), "--split", "test", "--out", str(tmp_path / "r.json")]) == 0
    assert 0.0 <= json.loads((tmp_path / "r.json").read_text())["cer"]
