"""Features, normalisation, resampling and augmentations (emgscale.features)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emgscale.features import (AugmentConfig, Decimator, FeatureConfig, Featurizer, MaskedBatchNorm, RollingNorm,
                               SpectralFeatures, log_band_matrix, spec_augment)

torch.set_num_threads(1)

NO_AUG = AugmentConfig(band_rotation=0, temporal_jitter_samples=0, time_masks=0, freq_masks=0)


def emg(batch: int = 2, samples: int = 800, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, samples, 2, 16, generator=g) * 20.0


def test_log_spectrogram_shape_and_frames_formula() -> None:
    """(B, T, 2, 16) -> (B, (T - 64)//16 + 1, 2, 16, 33) for many lengths."""
    sf = SpectralFeatures("log_spectrogram", 64, 16)
    for n in (64, 65, 79, 80, 1000, 10000):
        x = emg(1, n)
        y, frames = sf(x, torch.tensor([n]))
        assert y.shape == (1, (n - 64) // 16 + 1, 2, 16, 33)
        assert int(frames[0]) == (n - 64) // 16 + 1


def test_log_spectrogram_matches_numpy_normalized_power() -> None:
    """Bins equal log10(|rfft(hann * frame)|^2 / sum(hann^2) + 1e-6), as torchaudio normalized=True."""
    x = emg(1, 200)
    y, _ = SpectralFeatures("log_spectrogram", 64, 16)(x, torch.tensor([200]))
    w = np.hanning(65)[:64]  # periodic Hann
    sig = x[0, :, 1, 5].double().numpy()
    for t in (0, 3, 8):
        frame = sig[t * 16: t * 16 + 64]
        expect = np.log10(np.abs(np.fft.rfft(frame * w)) ** 2 / np.sum(w ** 2) + 1e-6)
        np.testing.assert_allclose(y[0, t, 1, 5].numpy(), expect, rtol=1e-4, atol=1e-4)


def test_log_spectrogram_equals_torch_stft() -> None:
    """The DFT-matmul spectrogram equals torch.stft(center=False, Hann) power / window energy, for 2 sizes."""
    x = emg(2, 700)
    for n_fft, hop in ((64, 16), (16, 4)):
        y, _ = SpectralFeatures("log_spectrogram", n_fft, hop)(x, torch.tensor([700, 700]))
        w = torch.hann_window(n_fft, dtype=torch.float64)
        spec = torch.stft(x.double().permute(0, 2, 3, 1).reshape(-1, 700), n_fft, hop, window=w, center=False,
                          return_complex=True)
        power = spec.abs().pow(2) / w.pow(2).sum()
        ref = power.view(2, 2, 16, n_fft // 2 + 1, -1).permute(0, 4, 1, 2, 3)
        ours = 10 ** y.double() - 1e-6
        assert torch.allclose(ours, ref, rtol=1e-3, atol=1e-6 * float(ref.max()))  # fp32 rounding only


def test_log_bands_average_the_spectrogram_power() -> None:
    """log_bands = log10(mean of the power bins of each log-spaced band + 1e-6); every band non-empty."""
    m = log_band_matrix(33, 6)
    assert m.shape == (33, 6) and torch.allclose(m.sum(0), torch.ones(6))  # each band averages >= 1 bin
    assert torch.allclose((m > 0).sum(1).float(), torch.ones(33))  # each bin in exactly one band
    x = emg(1, 300)
    spec, _ = SpectralFeatures("log_spectrogram", 64, 16)(x, torch.tensor([300]))
    bands, _ = SpectralFeatures("log_bands", 64, 16, num_log_bands=6)(x, torch.tensor([300]))
    assert bands.shape == spec.shape[:-1] + (6,)
    expect = torch.log10((10 ** spec.double() - 1e-6) @ m.double() + 1e-6)
    assert torch.allclose(bands.double(), expect, atol=1e-4)


def test_decimator_equals_scipy_resample_poly() -> None:
    """Decimation by 2, 4 and 8 equals scipy.signal.resample_poly(x, 1, factor) sample for sample."""
    from scipy.signal import resample_poly

    x = emg(1, 1001)
    for factor in (2, 4, 8):
        y, n = Decimator(factor)(x, torch.tensor([1001]))
        expect = resample_poly(x[0].double().numpy(), 1, factor, axis=0)
        assert y.shape[1] == expect.shape[0] == int(n[0]) == -(-1001 // factor)
        np.testing.assert_allclose(y[0].numpy(), expect, atol=1e-3 * float(x.abs().max()))


@pytest.mark.parametrize("rate", [1000.0, 500.0, 250.0])
def test_resampling_passes_low_tone_and_blocks_tone_above_new_nyquist(rate: float) -> None:
    """A tone at 0.6x the new Nyquist keeps its power; one at 1.5x (which would alias) loses > 40 dB."""
    t = torch.arange(8000) / 2000.0
    factor = int(2000 / rate)
    dec = Decimator(factor)

    def power_out(freq: float) -> float:
        x = torch.sin(2 * np.pi * freq * t).view(1, -1, 1, 1).repeat(1, 1, 2, 16)
        y, _ = dec(x, torch.tensor([8000]))
        return float(y[0, 200:-200].pow(2).mean())

    nyq = rate / 2
    assert abs(power_out(0.6 * nyq) - 0.5) < 0.05
    assert power_out(1.5 * nyq) < 0.5 * 1e-4


def test_rate_scaling_keeps_125hz_frames() -> None:
    """At 1000/500/250 Hz n_fft/hop scale to 32/8, 16/4, 8/2: 125 Hz frames, 17/9/5 bins; bad ratios raise."""
    for rate, n_fft, bins in ((1000.0, 32, 17), (500.0, 16, 9), (250.0, 8, 5)):
        f = Featurizer(FeatureConfig(sample_rate_hz=rate))
        assert (f.n_fft, f.num_bins, f.frame_rate_hz, f.samples_per_frame) == (n_fft, bins, 125.0, 16)
        feats, frames = f.eval()(emg(1, 4000), torch.tensor([4000]))
        assert feats.shape[1] == int(frames[0]) == int(f.output_lengths(torch.tensor([4000]))[0])
    with pytest.raises(ValueError, match="integer"):
        Featurizer(FeatureConfig(sample_rate_hz=800.0))


def test_channel_subset_picks_the_right_electrodes() -> None:
    """channels=[0,4,8,12] gives exactly the features of those electrodes of the full model, per band."""
    x = emg(2, 600)
    cfg = FeatureConfig(norm="none")
    full, _ = Featurizer(cfg).eval()(x, torch.tensor([600, 600]))
    sub, _ = Featurizer(dataclasses.replace(cfg, channels=[0, 4, 8, 12])).eval()(x, torch.tensor([600, 600]))
    assert sub.shape[3] == 4
    assert torch.equal(sub, full[:, :, :, [0, 4, 8, 12]])
    with pytest.raises(ValueError, match="channels"):
        Featurizer(FeatureConfig(channels=[0, 16]))


def test_augmentations_are_identity_in_eval_mode() -> None:
    """With every augmentation on, eval output equals the un-augmented featurizer, and train output differs."""
    aug = AugmentConfig(amplitude_scale=0.3, channel_mask_prob=0.2)
    x, lengths = emg(2, 900), torch.tensor([900, 700])
    plain = Featurizer(FeatureConfig(), None).eval()
    augmented = Featurizer(FeatureConfig(), aug)
    augmented.load_state_dict(plain.state_dict())
    augmented.eval()
    a, fa = augmented(x, lengths)
    b, fb = plain(x, lengths)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    augmented.train()
    c, _ = augmented(x, lengths)
    assert not torch.equal(c[:, : a.shape[1]], a[:, : c.shape[1]])


def test_band_rotation_is_a_roll_of_each_band() -> None:
    """Training with only band rotation: each band equals torch.roll of the input by some offset in -1..1."""
    x = emg(4, 400)
    aug = dataclasses.replace(NO_AUG, band_rotation=1)
    f_aug = Featurizer(FeatureConfig(norm="none"), aug).train()
    f_ref = Featurizer(FeatureConfig(norm="none")).eval()
    torch.manual_seed(3)
    y, _ = f_aug(x, torch.full((4,), 400))
    seen = set()
    for b in range(4):
        for band in range(2):
            matches = [r for r in (-1, 0, 1) if torch.allclose(
                y[b, :, band], f_ref(x[b:b + 1].roll(r, dims=3), torch.tensor([400]))[0][0, :, band], atol=1e-5)]
            assert len(matches) == 1
            seen.add(matches[0])
    assert len(seen) > 1


def test_temporal_jitter_trims_and_misaligns_bands() -> None:
    """Jitter shortens each sequence by |d| <= max and shifts band 0 against band 1 by d samples."""
    from emgscale.features.augment import temporal_jitter

    x = torch.arange(300, dtype=torch.float32).view(1, 300, 1, 1).repeat(3, 1, 2, 4)
    lengths = torch.tensor([300, 300, 250])
    torch.manual_seed(0)
    y, new = temporal_jitter(x, lengths, 20)
    d = lengths - new
    assert bool((d >= 0).all()) and bool((d <= 20).all())
    for b in range(3):
        n = int(new[b])
        shift = y[b, :n, 0, 0] - y[b, :n, 1, 0]  # band-0 sample index minus band-1 index
        assert bool((shift.abs() == d[b]).all())
        assert bool((y[b, n:] == 0).all())


def test_spec_augment_masks_within_limits() -> None:
    """Masks hit only valid frames, each time-mask run is < time_mask_frames, at most the configured counts."""
    cfg = AugmentConfig(time_masks=2, time_mask_frames=5, freq_masks=0, iid_masks=False, mask_value=-7.0)
    x = torch.randn(16, 60, 2, 3, 4).abs() + 1.0
    lengths = torch.tensor([60] * 8 + [30] * 8)
    torch.manual_seed(1)
    y = spec_augment(x, lengths, cfg)
    masked = (y == -7.0).all(-1).all(-1).all(-1)  # (B, T): whole frame masked (iid_masks=False)
    assert bool((masked == (y == -7.0).any(-1).any(-1).any(-1)).all())
    assert int(masked.sum(1).max()) <= 2 * 4 and int(masked.sum()) > 0
    assert not bool(masked[8:, 30:].any())
    fcfg = AugmentConfig(time_masks=0, freq_masks=1, freq_mask_bins=3, mask_value=-7.0)
    z = spec_augment(x, lengths, fcfg)
    assert int((z == -7.0).sum(-1).max()) <= 2


def test_augmentation_draws_follow_the_global_rng() -> None:
    """Same torch seed -> identical augmented features (resume from a checkpointed RNG state is exact)."""
    f = Featurizer(FeatureConfig(), AugmentConfig(amplitude_scale=0.2, channel_mask_prob=0.1)).train()
    x, lengths = emg(2, 900), torch.tensor([900, 800])
    torch.manual_seed(5)
    a, la = f(x, lengths)
    torch.manual_seed(5)
    b, lb = f(x, lengths)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_masked_batchnorm_equals_batchnorm2d_and_ignores_padding() -> None:
    """Without padding it equals nn.BatchNorm2d(32) (output and running stats); padding changes nothing."""
    x = torch.randn(3, 20, 2, 16, 5) * 2 + 1
    ours, ref = MaskedBatchNorm(32), torch.nn.BatchNorm2d(32)
    y = ours(x, torch.full((3,), 20))
    r = ref(x.reshape(3, 20, 32, 5).permute(0, 2, 1, 3)).permute(0, 2, 1, 3).reshape(x.shape)
    assert torch.allclose(y, r, atol=1e-5)
    assert torch.allclose(ours.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-5)
    a, b = MaskedBatchNorm(32), MaskedBatchNorm(32)
    short = x[:1, :12]
    padded = torch.cat([short, torch.randn(1, 8, 2, 16, 5) * 100], 1)
    ya = a(short, torch.tensor([12]))
    yb = b(padded, torch.tensor([12]))
    assert torch.allclose(ya, yb[:, :12], atol=1e-5) and bool((yb[:, 12:] == 0).all())
    assert torch.allclose(a.running_var, b.running_var, atol=1e-6)


def test_rolling_norm_is_causal_and_normalises() -> None:
    """Rolling norm output at frame t ignores later frames, and equals (x - mean)/std over the window."""
    norm = RollingNorm(32, window_frames=10)
    x = torch.randn(1, 40, 2, 16, 5) * 3 + 2
    y = norm(x, torch.tensor([40]))
    x2 = x.clone()
    x2[:, 25:] = 99.0
    y2 = norm(x2, torch.tensor([40]))
    assert torch.allclose(y[:, :25], y2[:, :25])
    win = x[0, 21:31, 1, 3].double()  # frame 30, window of 10
    expect = (x[0, 30, 1, 3].double() - win.mean()) / torch.sqrt(win.var(unbiased=False) + 1e-5)
    assert torch.allclose(y[0, 30, 1, 3].double(), expect, atol=1e-4)


def test_featurizer_padding_invariance() -> None:
    """Eval-mode features of a padded batch equal each sequence alone (every norm and rate)."""
    x, lengths = emg(3, 1000), torch.tensor([1000, 777, 530])
    for cfg in (FeatureConfig(), FeatureConfig(norm="rolling", sample_rate_hz=500.0),
                FeatureConfig(kind="log_bands", norm="none", channels=[1, 2])):
        f = Featurizer(cfg).eval()
        y, frames = f(x, lengths)
        for b in range(3):
            n = int(lengths[b])
            alone, fa = f(x[b:b + 1, :n], lengths[b:b + 1])
            assert int(fa[0]) == int(frames[b]) == alone.shape[1]
            assert torch.allclose(alone[0], y[b, : alone.shape[1]], atol=1e-4)
            assert bool((y[b, int(frames[b]):] == 0).all())
