"""Signal scale: the same data in microvolts, millivolts, volts or ADC counts trains alike (emgscale.data.scale)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emgscale.data.scale import (EXPECTED_SCALE, channel_scale, gain_for_scale, rescaled_copy, scale_warning)
from emgscale.features import FeatureConfig, Featurizer

REPO = Path(__file__).resolve().parents[1]
LIBEMG = REPO.parent / "shared" / "real-emg" / "libemg-myo-8ch-200hz"
FINGERS = REPO / "emgscale" / "configs" / "fingers"
TINY_MODEL = ["model.arch=tds", "model.frontend.mlp_features=[32]", "model.tds.block_channels=[4,4]",
              "model.tds.kernel_width=8"]
NO_MASKS = ["model.augment.time_masks=0", "model.augment.freq_masks=0"]

#: The units the tests convert microvolt-like data to: (name, factor, integer).
UNITS = [("uV", 1.0, False), ("mV", 1e-3, False), ("V", 1e-6, False), ("counts", 2.0, True)]


def test_gain_rule_is_a_power_of_ten_unit_conversion():
    """Microvolt-like scales and ADC counts get gain 1; volts 1e6, millivolts 1e3; no gain for constant data."""
    assert gain_for_scale(20.0) == 1.0 and gain_for_scale(3.0) == 1.0 and gain_for_scale(EXPECTED_SCALE[1]) == 1.0
    assert gain_for_scale(2.1e-5) == 1e6 and gain_for_scale(2.1e-2) == 1e3 and gain_for_scale(3e6) == 1e-5
    for bad in (0.0, math.nan, -1.0):
        with pytest.raises(ValueError):
            gain_for_scale(bad)
    assert channel_scale(np.ones((100, 2, 16))) == 0.0  # constant channels carry no scale


def test_volts_sit_on_the_log_floor_and_the_gain_lifts_them():
    """Without a gain, EMG in volts gives the floor value in every feature; with gain 1e6 it gives the
    microvolt features (to float32 rounding of the log)."""
    emg = torch.randn(2, 4000, 2, 16) * 20.0
    lengths = torch.tensor([4000, 3000])
    uv, _ = Featurizer(FeatureConfig()).spectra(emg, lengths)
    raw_v, _ = Featurizer(FeatureConfig()).spectra(emg * 1e-6, lengths)
    v, _ = Featurizer(FeatureConfig(input_gain=1e6)).spectra(emg * 1e-6, lengths)
    assert float(raw_v[0].std()) < 1e-3  # every feature within a hair of log10(1e-6): nothing to learn from
    assert torch.allclose(v, uv, atol=1e-3)


def _launch(tmp_path: Path, root: Path, split: Path, steps: int, *extra: str):
    from emgscale.train import launch, load_train_config

    return launch(load_train_config([], [
        f"data.data_root={root}", f"data.split={split}", f"run.out_dir={tmp_path}", "data.batch_size=4",
        "run.tensorboard=false", "run.threads=1", f"run.max_steps={steps}", "run.max_epochs=1",
        f"run.steps_per_epoch={steps}", "run.log_every_steps=1", "optim.lr=3e-3", *TINY_MODEL, *NO_MASKS, *extra]))


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


def test_launch_records_the_gain_and_any_unit_trains_alike(tiny_corpus, tmp_path, capsys):
    """Launch picks and records input_gain from the training data (1 for uV and counts, 1e3 for mV, 1e6 for V),
    and the same keyboard data in each unit follows the same loss curve."""
    from emgscale.models.checkpoint import load_checkpoint

    curves, gains = {}, {}
    for name, factor, integer in UNITS:
        root = rescaled_copy(tiny_corpus.root, tmp_path / name, factor, integer)
        res = _launch(tmp_path / f"run-{name}", root, root / tiny_corpus.split_path.name, 8)
        gains[name] = load_checkpoint(res.last_checkpoint).config["model"]["features"]["input_gain"]
        curves[name] = _losses(tmp_path / f"run-{name}")
    assert gains == {"uV": 1.0, "mV": 1e3, "V": 1e6, "counts": 1.0}
    assert "model.features.input_gain=1e+06" in capsys.readouterr().out
    ref = np.array(curves["uV"])
    for name in ("mV", "V"):  # a power-of-ten gain: the same features up to float rounding
        assert np.allclose(curves[name], ref, rtol=2e-3), (name, curves[name], ref)
    assert np.allclose(curves["counts"], ref, rtol=5e-2), (curves["counts"], ref)  # rounding, shifted log power


def test_a_given_gain_is_kept_and_a_resumed_run_keeps_its_own(tiny_corpus, tmp_path):
    """An explicit model.features.input_gain is not re-measured; a resumed run keeps the gain of its checkpoint."""
    from emgscale.models.checkpoint import load_checkpoint
    from emgscale.train import launch, load_train_config

    root = rescaled_copy(tiny_corpus.root, tmp_path / "V", 1e-6)
    res = _launch(tmp_path / "run", root, root / tiny_corpus.split_path.name, 2, "model.features.input_gain=5e5")
    assert load_checkpoint(res.last_checkpoint).config["model"]["features"]["input_gain"] == 5e5
    cfg = load_train_config([tmp_path / "run" / "config.yaml"], ["run.max_steps=3", "run.steps_per_epoch=3"])
    again = launch(cfg, resume=True)
    assert load_checkpoint(again.last_checkpoint).config["model"]["features"]["input_gain"] == 5e5


def test_fingers_any_unit_trains_alike(tmp_path):
    """The finger family (8 channels, 200 Hz, frame labels): the same CSV data in uV, V and counts follows the
    same loss curve, the gain chosen for each."""
    from emgscale.synth.fingers import FingerSynthConfig, generate_fingers
    from emgscale.train import launch, load_train_config

    src = tmp_path / "fingers"
    generate_fingers(FingerSynthConfig(out=str(src), users=1, sessions_per_user=3, minutes=0.3))
    curves = {}
    for name, factor, integer in [("uV", 1.0, False), ("V", 1e-6, False), ("counts", 2.0, True)]:
        root = rescaled_copy(src, tmp_path / name, factor, integer, table_columns=range(1, 9))
        launch(load_train_config([FINGERS / "train.yaml", FINGERS / "cnn_gru_causal.yaml"], [
            f"data.data_root={root}", f"data.split={root / 'split.yaml'}", f"run.out_dir={tmp_path / name}-run",
            "run.max_steps=8", "run.max_epochs=1", "run.steps_per_epoch=8", "run.log_every_steps=1",
            "run.threads=1", "data.batch_size=4", *NO_MASKS]))
        curves[name] = _losses(tmp_path / f"{name}-run")
    assert np.allclose(curves["V"], curves["uV"], rtol=2e-3), curves
    assert np.allclose(curves["counts"], curves["uV"], rtol=5e-2), curves


def test_data_info_reports_the_scale_and_warns_once(tiny_corpus, tmp_path):
    """data info gives RMS per band in the file's units, and one warning line for a root in volts."""
    from emgscale.data.info import dataset_info, format_report

    uv = dataset_info(tiny_corpus.root)
    v = dataset_info(rescaled_copy(tiny_corpus.root, tmp_path / "V", 1e-6))
    for a, b in zip(uv.sessions, v.sessions):
        assert np.allclose(np.array(b["rms_per_band"]), np.array(a["rms_per_band"]) * 1e-6, rtol=1e-4)
    assert not any(r["scale_warning"] for r in uv.sessions) and all(r["scale_warning"] for r in v.sessions)
    text = format_report(v)
    assert text.count("WARNING") == 1 and "input_gain=1e+06" in text and "more sessions" in text
    assert "WARNING" not in format_report(uv)


def test_warning_names_a_model_gain_unlike_the_data():
    """The warning says when data times the model's gain is off-scale (e.g. volts into a microvolt model)."""
    assert scale_warning(20.0) is None and scale_warning(2e-5, gain=1e6) is None
    assert "input_gain is 1" not in (scale_warning(2e-5) or "x")
    assert "other units" in scale_warning(20.0, gain=1e6)


def _loro_accuracy(tmp_path: Path, root: Path, *extra: str) -> float:
    """Leave repetition 0 out of the real Myo files: the last weights' per-time-point test accuracy."""
    from emgscale.data.tables import write_split
    from emgscale.eval.inference import load_model
    from emgscale.fingers.evaluate import evaluate_recordings
    from emgscale.loader.csv import read_part
    from emgscale.train import launch, load_train_config

    train = [f"R_{r}_C_*_EMG.csv" for r in (1, 2, 3)]
    write_split({"train": train, "val": train, "test": ["R_0_C_*_EMG.csv"]}, tmp_path / "loro.yaml")
    res = launch(load_train_config([FINGERS / "train.yaml", FINGERS / "cnn_gru_causal.yaml"], [
        f"data.data_root={root}", f"data.split={tmp_path / 'loro.yaml'}", f"run.out_dir={tmp_path / 'run'}",
        "data.csv.header=no", "data.csv.time_column=null", "data.csv.label_column=null",
        r"data.csv.file_label=C_(\d+)", "model.num_classes=5", "data.window.window_samples=400",
        "data.window.stride_samples=50", "run.max_steps=150", "run.max_epochs=3", "run.steps_per_epoch=50",
        "run.threads=1", "data.batch_size=8", *extra]))
    model, cfg = load_model(res.last_checkpoint)
    return evaluate_recordings(model, read_part(cfg.data, "test"))["accuracy"]


@pytest.mark.slow
@pytest.mark.skipif(not LIBEMG.is_dir(), reason="real LibEMG recordings (../shared/real-emg) not present")
def test_real_myo_data_learns_in_counts_and_in_volts(tmp_path):
    """Real Myo recordings in their integer counts and in volt-like units (x 1e-5) learn alike, far above chance
    (20 %); in volts with the gain forced to 1 they stay near chance (the failure this guards against)."""
    volts = rescaled_copy(LIBEMG, tmp_path / "V", 1e-5, table_columns=range(8))
    counts = _loro_accuracy(tmp_path / "counts", LIBEMG)
    in_volts = _loro_accuracy(tmp_path / "volts", volts)
    forced = _loro_accuracy(tmp_path / "forced", volts, "model.features.input_gain=1")
    assert counts > 0.5 and in_volts > 0.5 and abs(counts - in_volts) < 0.15, (counts, in_volts)
    assert forced < 0.35, forced


def test_data_error_survives_pickling():
    """A DataError raised in a Ray worker is pickled to the driver: it comes back as itself, file and problem."""
    import pickle

    from emgscale.data.errors import DataError

    e = pickle.loads(pickle.dumps(DataError("/x/s.hdf5", "no such split file")))
    assert isinstance(e, DataError) and (e.path, e.problem, str(e)) == ("/x/s.hdf5", "no such split file",
                                                                        "/x/s.hdf5: no such split file")
