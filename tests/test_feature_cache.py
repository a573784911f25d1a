"""The feature cache (emgscale.loader.feature_cache): the featurizer's two halves, cached blocks, cached training."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from emgscale.config import ConfigError
from emgscale.data import EMGSession, WindowSpec
from emgscale.data.windows import SessionWindows, collate, read_window
from emgscale.features import AugmentConfig, FeatureConfig, Featurizer
from emgscale.features.augment import spec_augment, temporal_jitter
from emgscale.loader.feature_cache import FeatureCache, compute_spectra, edge_frames
from emgscale.features.norm import zero_padding
from emgscale.loader import DataConfig, build_loader

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
WIN = WindowSpec(window_samples=2000, pad_left_samples=300, pad_right_samples=100, jitter=True)
ALL_AUG = AugmentConfig(band_rotation=2, temporal_jitter_samples=60, amplitude_scale=0.25, channel_mask_prob=0.2)
NO_JITTER = AugmentConfig(band_rotation=2, temporal_jitter_samples=0, amplitude_scale=0.25, channel_mask_prob=0.2)
TINY_MODEL = ["model.arch=tds", "model.frontend.mlp_features=[32]", "model.tds.block_channels=[4,4]",
              "model.tds.kernel_width=8"]


def emg(batch: int = 3, samples: int = 3000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, samples, 2, 16, generator=g) * 20.0


def _forward_before_split(f: Featurizer, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Featurizer.forward`` as it was before the split (commit c86d01c), with its augmentations inlined."""
    lengths = lengths.to(dtype=torch.long).clamp(max=x.shape[1])
    x = zero_padding(x.float(), lengths)
    aug = f.aug if f.training else None
    B, T, bands, E = x.shape
    rotation = aug.band_rotation if aug else 0
    if rotation <= 0:
        x = x if f.channel_index is None else x.index_select(3, f.channel_index)
    else:
        idx = f.channel_index if f.channel_index is not None else torch.arange(E)
        offsets = torch.randint(-rotation, rotation + 1, (B, bands))
        src = (idx.view(1, 1, -1) - offsets.unsqueeze(-1)) % E
        x = x.gather(3, src.unsqueeze(1).expand(B, T, bands, src.shape[-1]))
    if aug is not None:
        if aug.temporal_jitter_samples > 0:
            x, lengths = temporal_jitter(x, lengths, aug.temporal_jitter_samples)
        if aug.amplitude_scale > 0:
            log_max = math.log1p(aug.amplitude_scale)
            x = x * torch.exp((torch.rand(B, 1, bands, 1) * 2 - 1) * log_max)
        if aug.channel_mask_prob > 0:
            x = x * (torch.rand(B, 1, bands, x.shape[3]) >= aug.channel_mask_prob).to(x.dtype)
    x, lengths = f.decimator(x, lengths)
    feats, frames = f.spectral(x, lengths)
    if aug is not None:
        feats = spec_augment(feats, frames, aug)
    return f.norm(feats, frames), frames


@pytest.mark.parametrize("rate,channels,norm", [(2000.0, None, "batch"), (1000.0, [0, 4, 8, 12], "rolling"),
                                                (2000.0, [1, 5, 9], "none")])
def test_raw_path_is_the_pre_split_forward_bit_for_bit(rate, channels, norm):
    """Training mode, every augmentation on (jitter too), same seed: forward equals the pre-split code bit for bit."""
    cfg = FeatureConfig(sample_rate_hz=rate, channels=channels, norm=norm)
    a, b = Featurizer(cfg, ALL_AUG).train(), Featurizer(cfg, ALL_AUG).train()
    x, lengths = emg(), torch.tensor([3000, 2500, 1900])
    torch.manual_seed(7)
    got, frames = a(x, lengths)
    torch.manual_seed(7)
    want, want_frames = _forward_before_split(b, x, lengths)
    assert torch.equal(got, want) and torch.equal(frames, want_frames)


@pytest.mark.parametrize("rate,kind", [(2000.0, "log_spectrogram"), (1000.0, "log_spectrogram"),
                                       (2000.0, "log_bands"), (250.0, "log_spectrogram")])
def test_halves_compose_to_the_featurizer_bit_for_bit(rate, kind):
    """Eval mode: from_spectra(spectra(x)) equals forward(x) bit for bit (padding, decimation, norm)."""
    f = Featurizer(FeatureConfig(sample_rate_hz=rate, kind=kind), ALL_AUG)
    f.train()(emg(4, 2000, seed=1), torch.full((4,), 2000))  # non-trivial running statistics
    f.eval()
    x, lengths = emg(), torch.tensor([3000, 2500, 1900])
    got, got_frames = f.from_spectra(*f.spectra(x, lengths))
    want, want_frames = f(x, lengths)
    assert torch.equal(got, want) and torch.equal(got_frames, want_frames)


def test_halves_with_a_channel_subset_agree_within_rounding():
    """With features.channels the raw path takes the spectrum of fewer electrodes (another matmul shape): the
    composed halves agree within 1e-3 (max abs diff measured 1e-4, at bins of near-cancelling power)."""
    for rate, channels in ((2000.0, [3]), (1000.0, [0, 4, 8, 12]), (500.0, [1, 2])):
        f = Featurizer(FeatureConfig(sample_rate_hz=rate, channels=channels), ALL_AUG).eval()
        x, lengths = emg(), torch.tensor([3000, 2500, 1900])
        spectra, frames = f.spectra(x, lengths)
        assert spectra.shape[2:] == (2, 16, f.num_bins)  # every electrode: the cacheable half ignores channels
        got, got_frames = f.from_spectra(spectra, frames)
        want, want_frames = f(x, lengths)
        assert got.shape == want.shape and torch.equal(got_frames, want_frames)
        assert float((got - want).abs().max().detach()) <= 1e-3


def test_feature_space_augmentations_draw_what_the_raw_ones_draw():
    """Training, no jitter, same seed: rotation, channel mask and SpecAugment give equal features; amplitude
    scaling differs only near the 1e-6 floor (by at most 2 log10(1 + a); < 1e-5 where the feature is > -1)."""
    x, lengths = emg(4), torch.tensor([3000, 2900, 2000, 1500])
    for aug in (AugmentConfig(band_rotation=2, temporal_jitter_samples=0, channel_mask_prob=0.3), NO_JITTER):
        f = Featurizer(FeatureConfig(norm="none", channels=[0, 3, 7, 11, 15]), aug).train()
        torch.manual_seed(3)
        raw, frames = f(x, lengths)
        spectra, spectra_frames = f.spectra(x, lengths)
        torch.manual_seed(3)
        cached, cached_frames = f.from_spectra(spectra, spectra_frames)
        assert torch.equal(frames, cached_frames)
        diff = (raw - cached).abs()
        if aug.amplitude_scale == 0:
            assert torch.equal(raw, cached)
        else:
            assert float(diff.max()) <= 2 * math.log10(1 + aug.amplitude_scale) + 1e-6
            assert float(diff[raw > -1].max()) < 1e-5


def test_temporal_jitter_with_a_cache_is_refused_before_any_work(tiny_corpus, tmp_path):
    """data.feature_cache + temporal jitter: the config check and train raise the one-line message before making anything."""
    from emgscale.train import load_train_config, train
    from emgscale.train.config import check_train_config

    out = tmp_path / "run"
    cfg = load_train_config([], [f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}",
                                 f"data.feature_cache={tmp_path / 'cache'}", f"run.out_dir={out}", *TINY_MODEL])
    message = "augment.temporal_jitter_samples needs raw EMG: set it to 0 or unset data.feature_cache"
    with pytest.raises(ConfigError, match=message):
        check_train_config(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not out.exists() and not (tmp_path / "cache").exists()
    f = Featurizer(FeatureConfig(), ALL_AUG).train()
    with pytest.raises(ValueError, match=message):  # and the model itself refuses it
        f.from_spectra(*f.spectra(emg(), torch.tensor([3000, 3000, 3000])))


@pytest.mark.parametrize("rate", [2000.0, 1000.0])
def test_served_windows_equal_spectra_of_their_rows(tiny_corpus, tmp_path, rate):
    """A jittered window served from its session's block equals spectra() of raw rows [s', e), s' = s rounded
    down to the frame grid: all frames at decimation 1 (max abs diff measured 0), interior frames at
    decimation 2 (measured 0; the edge_frames() frames at each end differ, the raw path zero-pads the FIR)."""
    cache = FeatureCache(tmp_path / "cache", FeatureConfig(sample_rate_hz=rate))
    f, spf, edge = cache.featurizer, cache.samples_per_frame, edge_frames(cache.featurizer)
    assert edge == (0 if rate == 2000.0 else 2)
    path = tiny_corpus.path(tiny_corpus.all_sessions()[0])
    rng = np.random.default_rng(0)
    with EMGSession(path) as session:
        block = cache.session_block(path)
        assert block.shape == (cache.frames_for_rows(len(session)), 2, 16, f.num_bins)
        for index in range(WIN.num_windows(len(session))):
            sample = read_window(session, index, WIN, rng)
            served = cache.serve(sample, block, first_row=0)
            s2, stop = served["start"], sample["start"] + len(sample["emg"])
            assert s2 % spf == 0 and 0 <= sample["start"] - s2 < spf and served["rows"] == stop - s2
            np.testing.assert_allclose(served["label_time_s"] - sample["label_time_s"],
                                       (sample["start"] - s2) / sample["sample_rate_hz"])
            rows = torch.from_numpy(session.emg(s2, stop))[None]
            want = f.spectra(rows, torch.tensor([stop - s2]))[0][0].numpy()
            got = served["features"]
            assert got.shape == want.shape
            interior = slice(edge, len(want) - edge)
            assert np.abs(got[interior] - want[interior]).max() <= 1e-5


@pytest.mark.parametrize("rate,kind", [(2000.0, "log_spectrogram"), (500.0, "log_bands")])
def test_chunked_spectra_equal_one_shot(rate, kind):
    """compute_spectra in chunks of 7 or 64 frames equals one pass over the whole block (measured bit for bit)."""
    f = Featurizer(FeatureConfig(sample_rate_hz=rate, kind=kind)).eval()
    raw = emg(1, 20_011)[0].numpy()
    n = int(f.output_lengths(torch.tensor([len(raw)]))[0])
    one = f.spectra(torch.from_numpy(raw)[None], torch.tensor([len(raw)]))[0][0].numpy()
    assert one.shape[0] == n
    for chunk in (7, 64):
        out = np.full_like(one, np.nan)
        compute_spectra(f, lambda a, b: raw[a:b], len(raw), out, chunk_frames=chunk)
        assert np.abs(out - one).max() <= 1e-6


def test_corrupt_or_truncated_block_is_rebuilt_with_one_line(tiny_corpus, tmp_path, caplog):
    """A truncated or wrong-shaped block file is never used: one warning names it and it is rebuilt."""
    path = tiny_corpus.path(tiny_corpus.all_sessions()[0])
    good = np.array(FeatureCache(tmp_path / "cache", FeatureConfig()).session_block(path))
    files = list((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == 1 and (files[0].parent / "settings.json").is_file()
    for damage in (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
                   lambda p: np.save(p, np.zeros((3, 2, 16, 33), np.float32)),
                   lambda p: p.write_bytes(b"not a numpy file")):
        damage(files[0])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="emgscale.loader.feature_cache"):
            again = FeatureCache(tmp_path / "cache", FeatureConfig()).session_block(path)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and str(files[0]) in lines[0] and "rebuilding" in lines[0]
        assert np.array_equal(again, good)


def test_cache_key_ignores_channels_and_norm_but_not_the_spectra_settings(tmp_path):
    """Blocks are shared by settings that give the same spectra (channels, norm) and apart otherwise."""
    folder = lambda **kw: FeatureCache(tmp_path, FeatureConfig(**kw)).folder  # noqa: E731
    assert folder() == folder(channels=[0, 1], norm="rolling")
    assert len({folder(), folder(kind="log_bands"), folder(n_fft=32), folder(sample_rate_hz=1000.0)}) == 4


def test_cached_batches_collate_and_move_with_their_lengths(tiny_corpus, tmp_path):
    """Served samples collate into features (B, T', 2, 16, K) + frame lengths and no EMG placeholder (emg None);
    emg_lengths = raw rows covered."""
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    paths = [tiny_corpus.path(s) for s in tiny_corpus.all_sessions()[:2]]
    windows = SessionWindows(paths, WIN)
    samples = [cache.serve(windows[i], cache.session_block(windows.path_of(i)), 0) for i in range(len(windows))]
    batch = collate(samples)
    assert batch.features.shape[0] == len(samples) and batch.emg is None
    assert batch.feature_lengths.tolist() == [len(s["features"]) for s in samples]
    assert batch.emg_lengths.tolist() == [s["rows"] for s in samples]
    head = batch.head(2).to("cpu")
    assert torch.equal(head.features, batch.features[:2])
    assert head.feature_lengths.tolist() == batch.feature_lengths[:2].tolist()
    with pytest.raises(ValueError, match="together with raw-EMG samples"):
        collate([samples[0], windows[0]])


def _train_overrides(tmp_path: Path, *source: str) -> list[str]:
    return [*source, f"data.feature_cache={tmp_path / 'cache'}", "model.augment.temporal_jitter_samples=0",
            "data.window.window_samples=2000", "data.window.pad_left_samples=300",
            "data.window.pad_right_samples=100", "data.batch_size=4", f"run.out_dir={tmp_path / 'run'}",
            "run.max_epochs=1", "run.steps_per_epoch=4", "run.log_every_steps=1", "run.tensorboard=false",
            "run.threads=1",
            "optim.lr=3e-3", "optim.warmup_epochs=0", *TINY_MODEL]


@pytest.mark.parametrize("source", ["hdf5", "shards"])
def test_a_model_trains_from_the_cache(tiny_corpus, tmp_path, source):
    """Training (and windowed validation) from cached spectra, HDF5 or shards: one block per session (HDF5) or
    record (shards) written, finite losses, and a second run reuses the blocks without rewriting them."""
    from emgscale.shard import ShardConfig, shard_corpus
    from emgscale.train import launch, load_train_config

    if source == "hdf5":
        where = [f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}"]
    else:
        shard_corpus(ShardConfig(data_root=str(tiny_corpus.root), out=str(tmp_path / "shards"),
                                 split=str(tiny_corpus.split_path), window=WIN, train_windows_per_record=3,
                                 dtype="float32", progress=False))
        where = [f"data.shards={tmp_path / 'shards'}"]
    cfg = load_train_config([], _train_overrides(tmp_path, *where))
    result = launch(cfg)
    blocks = sorted((tmp_path / "cache").rglob("*.npy"))
    if source == "hdf5":  # train and val sessions (6 + 3)
        assert len(blocks) == 9
    else:
        assert len(blocks) >= 9
    assert result.steps == 4 and all(math.isfinite(r["val_loss"]) for r in result.history)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in logged if "train_loss" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    written = {p: p.stat().st_mtime_ns for p in blocks}
    cfg.run.out_dir = str(tmp_path / "run2")
    again = launch(cfg)
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").rglob("*.npy"))} == written
    assert again.history[-1]["val_loss"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)


def test_shard_windows_served_from_records_equal_spectra_of_their_rows(tiny_corpus, tmp_path):
    """Shard training windows served from their record's block equal spectra() of their rows read from HDF5."""
    from emgscale.shard import ShardConfig, shard_corpus

    shard_corpus(ShardConfig(data_root=str(tiny_corpus.root), out=str(tmp_path / "shards"),
                             split=str(tiny_corpus.split_path), window=WIN, train_windows_per_record=3,
                             dtype="float32", progress=False))
    cfg = DataConfig(shards=str(tmp_path / "shards"), window=WIN, batch_size=4, feature_cache=str(tmp_path / "c"))
    f = Featurizer(FeatureConfig()).eval()
    checked = 0
    for batch in build_loader(cfg, "train", train=True, seed=0, features=FeatureConfig()):
        for i, key in enumerate(batch.keys):
            _, session, offset = key.rsplit("/", 2)
            n = tiny_corpus.num_rows[session]
            stop = min(int(offset) + WIN.window_samples + WIN.pad_right_samples, n)
            s2 = stop - int(batch.emg_lengths[i])
            assert 0 <= max(int(offset) - WIN.pad_left_samples, 0) - s2 < f.samples_per_frame
            with EMGSession(tiny_corpus.path(session)) as s:
                want = f.spectra(torch.from_numpy(s.emg(s2, stop))[None], torch.tensor([stop - s2]))[0][0]
            got = batch.features[i, : batch.feature_lengths[i]]
            assert got.shape == want.shape and float((got - want).abs().max()) <= 1e-5
            checked += 1
    assert checked > 0


def test_cache_needs_the_feature_settings_and_refuses_views(tiny_corpus, tmp_path):
    """build_loader with a feature cache needs the model's features; DataConfig.check refuses data.view / CSV."""
    cfg = DataConfig(data_root=str(tiny_corpus.root), split=str(tiny_corpus.split_path), window=WIN,
                     feature_cache=str(tmp_path / "c"))
    cfg.check(AugmentConfig(temporal_jitter_samples=0))
    with pytest.raises(ValueError, match="needs the model's feature settings"):
        build_loader(cfg, "train", train=True, seed=0)
    cfg.view.band = 1
    with pytest.raises(ConfigError, match="unset data.view or data.feature_cache"):
        cfg.check()
    cfg.view.band, cfg.format = None, "csv"
    with pytest.raises(ConfigError, match="not data.format=csv"):
        cfg.check()


def test_bench_step_measures_raw_and_cached_side_by_side(tiny_corpus, tmp_path, capsys):
    """benchmarks/bench_step.py --feature-cache times every part from raw EMG and from the cache in one run."""
    import runpy

    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"),
                           run_name="bench_step")
    out = bench["main"](["--data-root", str(tiny_corpus.root), "--feature-cache", str(tmp_path / "cache"),
                         "--steps", "2", "--warmup", "1", f"data.split={tiny_corpus.split_path}", "data.batch_size=2",
                         "data.window.window_samples=2000", *TINY_MODEL])
    assert set(out) == {"raw", "cached"} and all(len(v) == 2 for t in out.values() for v in t.values())
    printed = capsys.readouterr().out
    assert "| step |" in printed and "cached ms / step" in printed and "feature cache:" in printed
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 6  # every training session of the split


def _block_file(cache_root: Path) -> Path:
    files = list(cache_root.rglob("*.npy"))
    assert len(files) == 1
    return files[0]


@pytest.mark.parametrize("damage", ["flipped byte", "nan"])
def test_rotted_block_of_the_right_shape_is_rebuilt_with_one_line(tiny_corpus, tmp_path, caplog, damage):
    """A block whose bytes changed after it was written (a flipped byte, a NaN) fails its checksum when a
    process maps it: one warning names it, it is rebuilt, and the served spectra are the true ones."""
    path = tiny_corpus.path(tiny_corpus.all_sessions()[0])
    good = np.array(FeatureCache(tmp_path / "cache", FeatureConfig()).session_block(path))
    file = _block_file(tmp_path / "cache")
    block = np.load(file, mmap_mode="r+")
    if damage == "nan":
        block[len(block) // 2, 0, 0, 0] = np.nan
    else:
        block.view(np.uint8).reshape(-1)[1234] ^= 0x40
    block.flush()
    del block
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emgscale.loader.feature_cache"):
        again = FeatureCache(tmp_path / "cache", FeatureConfig()).session_block(path)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(file) in lines[0] and "checksum" in lines[0] and "rebuilding" in lines[0]
    assert np.array_equal(again, good) and np.isfinite(again).all()


def test_disk_full_while_building_a_block_is_one_line_and_leaves_no_temp_file(tiny_corpus, tmp_path, monkeypatch):
    """ENOSPC while a block is written: one error line naming the block and 'No space left on device', no
    temporary file left behind, and the next build (space freed) works."""
    import builtins
    import errno

    from emgscale.cli import error_line
    from emgscale.loader import feature_cache as fc

    class FullDisk:
        def __init__(self, f):
            self.f, self.left = f, 4096

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode else f

    monkeypatch.setattr(fc, "open", full_open, raising=False)
    path = tiny_corpus.path(tiny_corpus.all_sessions()[0])
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    with pytest.raises(fc.CacheWriteError) as err:
        cache.session_block(path)
    line = error_line(err.value)
    assert "No space left on device" in line and str(cache.folder) in line and "\n" not in line
    assert [p.name for p in cache.folder.iterdir()] == ["settings.json"]  # no temporary file
    monkeypatch.undo()
    assert np.isfinite(np.array(FeatureCache(tmp_path / "cache", FeatureConfig()).session_block(path))).all()


def test_cached_hdf5_windows_read_no_emg(tiny_corpus, tmp_path, monkeypatch):
    """With the feature cache, the HDF5 source reads only each window's timestamps (no EMG field), and
    serves the same samples (labels, times, spectra) as from a full read."""
    cfg = DataConfig(data_root=str(tiny_corpus.root), split=str(tiny_corpus.split_path), window=WIN, batch_size=4,
                     feature_cache=str(tmp_path / "c"))
    first = [b for b in build_loader(cfg, "val", train=False, seed=0, features=FeatureConfig())]  # builds blocks
    reads = []
    real = EMGSession._read

    def counting(self, start, stop, fields):
        reads.append(tuple(fields))
        return real(self, start, stop, fields)

    monkeypatch.setattr(EMGSession, "_read", counting)
    again = [b for b in build_loader(cfg, "val", train=False, seed=0, features=FeatureConfig())]
    assert reads and all(fields == ("time",) for fields in reads), set(reads)
    assert [b.keys for b in again] == [b.keys for b in first]
    for a, b in zip(first, again):
        assert torch.equal(a.features, b.features) and torch.equal(a.label_times, b.label_times)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.emg_lengths, b.emg_lengths)


def test_data_config_and_window_spec_load_without_torch():
    """DataConfig (with its check) and WindowSpec import without torch, so a config error needs no torch."""
    import subprocess
    import sys

    code = ("import sys; from emgscale.loader import DataConfig; from emgscale.data.window_spec import WindowSpec; "
            "DataConfig(feature_cache='x').check(); assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_augmentations_without_a_spectra_form_are_the_ones_the_cache_refuses():
    """One registry: the augmentations without a spectra form are exactly the AugmentConfig fields marked
    raw_emg, those with a raw form come first (so both paths draw in registry order), and DataConfig.check
    names each one that is on."""
    import dataclasses

    from emgscale.features.augment import AUGMENTATIONS

    marked = {f.name for f in dataclasses.fields(AugmentConfig) if f.metadata.get("raw_emg")}
    assert {a.name for a in AUGMENTATIONS if a.spectra is None} == marked
    with_raw = [a.raw is not None for a in AUGMENTATIONS]
    assert with_raw == sorted(with_raw, reverse=True)
    cfg = DataConfig(feature_cache="x")
    for name in marked:
        with pytest.raises(ConfigError, match=f"model.augment.{name}="):
            cfg.check(AugmentConfig())
