"""The finger task: CSV reader, device view, 200 Hz models, frame labels, the frame objective, transfer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emgscale.config import shipped_configs
from emgscale.data.errors import DataError
from emgscale.data.windows import Batch
from emgscale.features import Decimator, FeatureConfig, Featurizer
from emgscale.data.device import DeviceView, apply_view, every_other, resample
from emgscale.fingers.evaluate import confusion_matrix, scores
from emgscale.data.tables import (CSVFormat, label_runs, libemg_format, load_file_split, make_split, read_table,
                                     write_split, write_table)
from emgscale.models import ModelConfig, build_model
from emgscale.train.frames import frame_targets, frames_to_samples

CONFIGS = shipped_configs() / "fingers"
LIBEMG = Path(__file__).resolve().parents[2] / "shared" / "real-emg" / "libemg-myo-8ch-200hz"
needs_libemg = pytest.mark.skipif(not LIBEMG.is_dir(), reason=f"real LibEMG recordings not found at {LIBEMG} "
                                                               "(../shared is absent)")


def _rows(n: int = 500, channels: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, channels)).astype(np.float32), np.repeat(rng.integers(0, 6, n // 50 + 1), 50)[:n]


# ----------------------------------------------------------------------------- reader


def test_csv_round_trip(tmp_path):
    """write_table -> read_table gives back the channels (to the written decimals), labels, rate and names."""
    emg, labels = _rows()
    write_table(tmp_path / "u1" / "s0.csv", emg, labels, 200.0)
    rec = read_table(tmp_path / "u1" / "s0.csv")
    assert rec.emg.shape == (500, 8) and rec.sample_rate_hz == 200.0 and not rec.resampled
    assert np.abs(rec.emg - emg).max() <= 5e-4 and np.array_equal(rec.labels, labels)
    assert (rec.user, rec.session) == ("u1", "s0")


def test_reader_layouts(tmp_path):
    """TSV, ms time, no header, columns by name and by negative index, and label names all read alike."""
    emg, labels = _rows(200, 3)
    names = ["rest", "thumb", "index", "middle", "ring", "little"]
    t_ms = np.arange(200) * 5.0
    lines = ["lbl\tt\ta\tb\tc"] + [f"{names[l]}\t{t}\t{e[0]}\t{e[1]}\t{e[2]}" for l, t, e in zip(labels, t_ms, emg)]
    (tmp_path / "x.tsv").write_text("\n".join(lines) + "\n")
    rec = read_table(tmp_path / "x.tsv", CSVFormat(time_column="t", label_column="lbl", time_unit="ms",
                                                    class_names=names))
    assert np.allclose(rec.emg, emg, atol=1e-5) and np.array_equal(rec.labels, labels)
    plain = "\n".join(",".join(f"{v}" for v in e) + f",{l}" for e, l in zip(emg, labels))
    (tmp_path / "y.csv").write_text(plain + "\n")
    rec = read_table(tmp_path / "y.csv", CSVFormat(time_column=None, label_column=-1))
    assert rec.emg.shape == (200, 3) and np.array_equal(rec.labels, labels)


@pytest.mark.parametrize("body, fmt, message", [
    ("time,a,b,label\n0,1,2,0\n0.005,1,0\n", {}, r"x\.csv: line 3: expected 4 columns, got 3"),
    ("time,a,b,label\n0,1,2,0\n0.005,1,oops,0\n", {}, r"line 3, column 'b': 'oops' is not a number"),
    ("time,a,b,label\n0,1,2,0\n0.005,1,2,0\n0.004,1,2,0\n", {}, r"line 4: time 0.004 is not after"),
    ("time,a,b,label\n0,1,2,0\n0.005,1,2,wave\n", {}, r"line 3: label 'wave' is not a number"),
    ("time,a,b,label\n0,1,2,0\n", {"label_column": "finger"}, r"line 1: no column named 'finger'"),
    ("time,a,b,label\n0,1,2,0\n0.005,1,2,nan\n", {}, r"line 3: label 'nan' is not a class index"),
    ("", {}, "no rows"),
])
def test_reader_errors_name_file_and_line(tmp_path, body, fmt, message):
    """Short rows, non-numbers, time going back, bad labels and missing columns: a DataError naming file and line."""
    (tmp_path / "x.csv").write_text(body)
    with pytest.raises(DataError, match=message):
        read_table(tmp_path / "x.csv", CSVFormat(**fmt))


def test_irregular_timestamps_are_resampled(tmp_path):
    """Jittered timestamps are put on the stated rate's grid: the signal and the label runs survive."""
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.3, 1.7, 2000)) / 200.0  # intervals 1.5-8.5 ms around the 5 ms period
    emg = np.stack([np.sin(2 * np.pi * 2.0 * t), np.cos(2 * np.pi * 3.0 * t)], 1).astype(np.float32)
    labels = (t > t[-1] / 2).astype(np.int64)
    write_table(tmp_path / "j.csv", emg, labels, 200.0)  # regular times written ...
    text = (tmp_path / "j.csv").read_text().splitlines()
    lines = [text[0]] + [f"{tt:.6f}," + r.split(",", 1)[1] for tt, r in zip(t, text[1:])]  # ... replaced
    (tmp_path / "j.csv").write_text("\n".join(lines) + "\n")
    rec = read_table(tmp_path / "j.csv")
    grid = np.arange(len(rec)) / 200.0 + t[0]
    assert rec.resampled and len(rec) == int((t[-1] - t[0]) * 200) + 1
    assert np.abs(rec.emg[:, 0] - np.sin(2 * np.pi * 2.0 * grid)).max() < 0.02
    runs = label_runs(rec.labels)
    assert [r[2] for r in runs] == [0, 1] and abs(runs[1][0] / 200.0 + t[0] - t[-1] / 2) < 0.01


def test_dense_rows_are_decimated_with_anti_aliasing(tmp_path):
    """Rows at 1 kHz read as 200 Hz: 1/5 of the rows, a 20 Hz tone kept, a 300 Hz tone removed."""
    t = np.arange(5000) / 1000.0
    emg = np.stack([np.sin(2 * np.pi * 20 * t), np.sin(2 * np.pi * 300 * t)], 1).astype(np.float32)
    write_table(tmp_path / "d.csv", emg, np.zeros(5000, dtype=np.int64), 1000.0)
    rec = read_table(tmp_path / "d.csv", CSVFormat(sample_rate_hz=200.0))
    assert rec.resampled and abs(len(rec) - 1000) <= 1
    mid = rec.emg[100:-100]
    assert 0.6 < mid[:, 0].std() < 0.75 and mid[:, 1].std() < 0.05  # sine RMS 0.707; the 300 Hz tone is gone


def test_label_runs():
    """label_runs gives (start, stop, label) of each run of equal labels."""
    assert label_runs(np.array([0, 0, 2, 2, 2, 0])) == [(0, 2, 0), (2, 5, 2), (5, 6, 0)]
    assert label_runs(np.array([], dtype=np.int64)) == []


def test_split_of_a_folder(tmp_path):
    """make_split keeps each user's last file for test, the one before for val; load_file_split resolves globs."""
    emg, labels = _rows(100)
    for u in ("a", "b"):
        for s in range(4):
            write_table(tmp_path / u / f"s{s}.csv", emg, labels, 200.0)
    split = make_split(tmp_path)
    assert split["test"] == ["a/s3.csv", "b/s3.csv"] and split["val"] == ["a/s2.csv", "b/s2.csv"]
    (tmp_path / "g.yaml").write_text("train: ['*/s[01].csv']\ntest: [a/s3.csv]\n")
    got = load_file_split(tmp_path / "g.yaml", tmp_path)
    assert len(got["train"]) == 4 and got["val"] == [] and got["test"] == [tmp_path / "a" / "s3.csv"]
    (tmp_path / "bad.yaml").write_text("train: [nope.csv]\n")
    with pytest.raises(DataError, match="matches no file"):
        load_file_split(tmp_path / "bad.yaml", tmp_path)


@needs_libemg
def test_libemg_layout():
    """LibEMG's R_<rep>_C_<class>_EMG.csv: 20 files of ~600 rows x 8 channels, every row labelled by the file's class."""
    files = sorted(LIBEMG.glob("R_*_C_*_EMG.csv"))
    assert len(files) == 20
    for f in files:
        rec = read_table(f, libemg_format())
        assert rec.emg.shape[1] == 8 and 550 < len(rec) < 650
        assert set(rec.labels.tolist()) == {int(f.name.split("_")[3])}


# ----------------------------------------------------------------------------- device view and 200 Hz features


def test_resample_is_the_decimator_filter():
    """For an integer factor, resample() equals the model's anti-aliased Decimator (one filter)."""
    x = torch.randn(1, 4000, 2, 3)
    ref, _ = Decimator(10)(x, torch.tensor([4000]))
    assert np.allclose(resample(x.numpy(), 2000, 200, axis=1), ref.numpy(), atol=1e-5)


def test_device_view_shapes_rates_and_electrodes():
    """emg2qwerty -> right band, every other electrode, 200 Hz: (B, T/10, 1, 8), lengths ceil(L/10), tones right."""
    t = np.arange(8000) / 2000.0
    emg = np.zeros((2, 8000, 2, 16), dtype=np.float32)
    emg[:, :, 1, 4] = np.sin(2 * np.pi * 30 * t)  # kept: electrode 4 of the right band -> channel 2
    emg[:, :, 1, 6] = np.sin(2 * np.pi * 150 * t)  # above the new Nyquist (100 Hz): must not alias in
    emg[:, :, 1, 5] = 1.0  # odd electrode: dropped
    emg[:, :, 0] = 5.0  # left band: dropped
    emg[1, 5000:] = 0.0
    batch = Batch(torch.from_numpy(emg), torch.tensor([8000, 5000]), torch.zeros(2, 1, dtype=torch.long),
                  torch.ones(2, dtype=torch.long), ["a", "b"], ["u", "u"])
    view = DeviceView(band=1, electrodes=every_other(16), sample_rate_hz=200.0)
    out = apply_view(batch, view)
    assert out.emg.shape == (2, 800, 1, 8) and out.emg_lengths.tolist() == [800, 500]
    x = out.emg[0, 100:700, 0].numpy()
    spectrum = np.abs(np.fft.rfft(x[:, 2]))
    assert abs(np.argmax(spectrum) * 200 / 600 - 30) < 1 and x[:, 3].std() < 0.02 * x[:, 2].std()
    assert np.abs(x[:, [0, 1, 4, 5, 6, 7]]).max() < 1e-3 and float(out.emg[1, 500:].abs().max()) == 0.0


def test_device_view_rotation_picks_a_rotated_ring():
    """With rotation r, channel e of the view is electrode (2e - r) mod 16 of the band, r in -1..1 per sample."""
    emg = torch.arange(16, dtype=torch.float32).view(1, 1, 1, 16).expand(64, 20, 2, 16).contiguous()
    batch = Batch(emg, torch.full((64,), 20), torch.zeros(64, 1, dtype=torch.long), torch.ones(64, dtype=torch.long),
                  [str(i) for i in range(64)], ["u"] * 64)
    out = apply_view(batch, DeviceView(band=1, electrodes=every_other(16), rotation=1), np.random.default_rng(0))
    first = out.emg[:, 0, 0, :]  # (64, 8)
    r = (torch.arange(0, 16, 2)[0] - first[:, 0]) % 16
    r = torch.where(r > 8, r - 16, r)
    assert set(r.long().tolist()) == {-1, 0, 1}
    assert torch.equal(first, ((torch.arange(0, 16, 2).view(1, -1) - r.view(-1, 1)) % 16).float())


def test_featurizer_takes_any_device_rate():
    """200 Hz (refused before: n_fft 6.4) builds and runs, alone and as a sweep point from 2 kHz; 2 kHz is unchanged."""
    f = Featurizer(FeatureConfig(sample_rate_hz=200.0))  # the sweep's point: decimate 2 kHz by 10
    assert (f.n_fft, f.hop_samples, f.decimation) == (6, 2, 10)
    feats, frames = f.eval()(torch.randn(1, 4000, 2, 16), torch.tensor([4000]))
    assert feats.shape[1] == int(frames[0]) > 0
    dev = Featurizer(FeatureConfig(num_bands=1, num_electrodes=8, input_sample_rate_hz=200.0, sample_rate_hz=200.0))
    feats, _ = dev.eval()(torch.randn(2, 400, 1, 8), torch.tensor([400, 300]))
    assert feats.shape[2:] == (1, 8, 4) and dev.frame_rate_hz == 100.0
    ref = Featurizer(FeatureConfig())
    assert (ref.n_fft, ref.hop_samples, ref.num_bins) == (64, 16, 33)


def test_finger_model_configs_build_with_six_classes():
    """configs/fingers models take (B, T, 1, 8) at 200 Hz and emit 6 classes; the causal one never looks ahead."""
    from emgscale.config import build_config
    from emgscale.train.config import TrainConfig

    for name in ("cnn_gru_causal", "cnn_bigru"):
        cfg = build_config(TrainConfig, [CONFIGS / "train.yaml", CONFIGS / f"{name}.yaml"])
        model = build_model(cfg.model).eval()
        assert model.blank is None and model.num_classes == 6 and model.frame_rate_hz == 50.0
        x = torch.randn(1, 600, 1, 8)
        lp, ol = model(x, torch.tensor([600]))
        assert lp.shape[-1] == 6 and lp.shape[1] == int(ol[0])
        y = x.clone()
        y[:, 300:] = torch.randn(1, 300, 1, 8)  # change only the future of sample 300
        lp2, _ = model(y, torch.tensor([600]))
        same = torch.allclose(lp[:, :70], lp2[:, :70], atol=1e-5)  # frames 0..69 end before sample 300
        assert same == (name == "cnn_gru_causal")


# ----------------------------------------------------------------------------- frame labels


@pytest.mark.parametrize("arch_strides, frame_rate", [([1, 1], 50.0), ([2, 1], 25.0)])
def test_labels_align_to_frames_at_two_frame_rates(arch_strides, frame_rate):
    """Output frame j takes the label of row j*s + s//2 (s = the model's samples_per_frame), at 50 and 25 Hz."""
    from emgscale.config import build_config
    from emgscale.train.config import TrainConfig

    cfg = build_config(TrainConfig, [CONFIGS / "cnn_gru_causal.yaml"], [f"model.cnn_rnn.strides={arch_strides}"])
    model = build_model(cfg.model).eval()
    s = model.samples_per_frame
    assert model.frame_rate_hz == frame_rate and s == 200 / frame_rate
    labels = torch.from_numpy(np.repeat(np.arange(50) % 6, 13)[:600]).view(1, -1)
    labels = torch.cat([labels, torch.full((1, 600), -1)])  # second sequence: padding only
    labels[1, :200] = 3
    _, out_lengths = model(torch.randn(2, 600, 1, 8), torch.tensor([600, 200]))
    targets = frame_targets(labels, out_lengths, s, int(out_lengths.max()))
    j = torch.arange(targets.shape[1])
    assert torch.equal(targets[0], labels[0, j * s + s // 2])
    assert (targets[1, : int(out_lengths[1])] == 3).all() and (targets[1, int(out_lengths[1]):] == -1).all()
    back = frames_to_samples(targets[0].numpy(), 600, s)  # every row gets its own frame's label
    assert np.mean(back == labels[0].numpy()) > 1 - s / 13


def test_scores_of_a_confusion_matrix():
    """Accuracy, balanced accuracy (mean recall) and macro-F1 match their definitions on a known case."""
    c = confusion_matrix(np.array([0, 0, 0, 0, 1, 1, 2, -1]), np.array([0, 0, 0, 1, 1, 0, 2, 2]), 3)
    assert c.tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 1]]
    s = scores(c)
    assert s["accuracy"] == pytest.approx(5 / 7) and s["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1) / 3)
    assert s["macro_f1"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def fingers_data(tmp_path_factory) -> Path:
    """A tiny synthetic finger corpus: 2 users x 3 sessions of 30 s."""
    from emgscale.synth.fingers import FingerSynthConfig, generate_fingers

    root = tmp_path_factory.mktemp("fingers") / "data"
    generate_fingers(FingerSynthConfig(out=str(root), users=2, sessions_per_user=3, minutes=0.5))
    return root


def test_synthetic_corpus_format(fingers_data):
    """The synthetic corpus is the course's format: time + 8 channels + label per row at 200 Hz, 6 classes used."""
    info = json.loads((fingers_data / "dataset.json").read_text())
    assert info["synthetic"] and info["classes"][0] == "rest" and len(info["classes"]) == 6
    header = (fingers_data / "user0" / "session0.csv").read_text().splitlines()[0]
    assert header == "time_s," + ",".join(f"emg{i}" for i in range(8)) + ",label"
    rec = read_table(fingers_data / "user0" / "session0.csv")
    assert rec.emg.shape == (6000, 8) and not rec.resampled and set(rec.labels.tolist()) == set(range(6))


def test_csv_loader_batches_carry_row_labels(fingers_data):
    """data.format=csv yields (B, T, 1, 8) batches whose sample_labels are the rows' labels, -1 on padding."""
    from emgscale.config import build_config
    from emgscale.loader import DataConfig, build_loader

    cfg = build_config(DataConfig, [], ["window.window_samples=800", "window.pad_left_samples=0",
                                        "window.pad_right_samples=0", "val_mode=session"],
                       base={"format": "csv", "data_root": str(fingers_data), "split": str(fingers_data / "split.yaml")})
    batch = next(iter(build_loader(cfg, "train", train=True, seed=0, batch_size=4)))
    assert batch.emg.shape == (4, 800, 1, 8) and batch.sample_labels.shape == (4, 800)
    whole = next(iter(build_loader(cfg, "val", train=False, seed=0, batch_size=2)))
    rec = read_table(fingers_data / "user0" / "session1.csv")
    assert torch.equal(whole.sample_labels[0, : len(rec)], torch.from_numpy(rec.labels))
    few = build_loader(cfg, "train", train=False, seed=0, max_minutes_per_user=0.1)
    assert few.num_samples == 2 * ((0.1 * 60 * 200 - 800) // 800 + 1)  # 2 users, 12 s each, 4 s windows


def _train(tmp_path: Path, data: Path, steps: int, extra: list[str] = ()):
    from emgscale.train import launch, load_train_config

    cfg = load_train_config([CONFIGS / "train.yaml", CONFIGS / "cnn_gru_causal.yaml"], [
        f"data.data_root={data}", f"data.split={data / 'split.yaml'}", f"run.out_dir={tmp_path}",
        f"run.max_steps={steps}", "run.max_epochs=1", f"run.steps_per_epoch={steps}", "run.log_every_steps=5",
        "run.threads=1", "data.batch_size=8", *extra])
    return launch(cfg)


def test_frame_head_loss_falls(tmp_path, fingers_data):
    """40 steps of frame cross-entropy on a tiny synthetic set lower the training loss; best.pt is by val_error."""
    res = _train(tmp_path, fingers_data, 40)
    losses = [json.loads(line)["train_loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in json.loads(line)]
    assert losses[-1] < 0.8 * losses[0]
    assert "val_error" in res.history[-1] and res.best_val_score == min(h["val_error"] for h in res.history)


def test_fine_tune_with_new_head_and_frozen_encoder(tmp_path, fingers_data):
    """init_from + init_new_head loads a 99-class CTC model into a 6-class one; run.freeze keeps the encoder fixed."""
    from emgscale.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from emgscale.config import build_config, to_dict
    from emgscale.train.config import TrainConfig

    pre_cfg = build_config(TrainConfig, [CONFIGS / "cnn_gru_causal.yaml", CONFIGS / "pretrain.yaml"])
    pre = build_model(pre_cfg.model)
    assert pre.num_classes == 99
    save_checkpoint(tmp_path / "pre.pt", Checkpoint(model=pre.state_dict(), config=to_dict(pre_cfg)))
    res = _train(tmp_path / "ft", fingers_data, 5, [f"run.init_from={tmp_path / 'pre.pt'}", "run.init_new_head=true",
                                                   "run.freeze=[featurizer, frontend, encoder]"])
    tuned = load_checkpoint(res.last_checkpoint).model
    for k, v in pre.state_dict().items():
        if k.startswith(("encoder.", "frontend.")):
            assert torch.equal(tuned[k], v), k
    assert tuned["head.weight"].shape == (6, pre.head.in_features)


@pytest.mark.slow
@needs_libemg
def test_libemg_leave_one_repetition_out_above_chance(tmp_path):
    """Real Myo data (5 classes x 4 repetitions), leave-one-repetition-out: mean per-time-point accuracy over
    the 4 folds is far above chance.

    Chance is 20 % (5 balanced classes). Errors are correlated within a file (a 3 s single-gesture file is
    mostly all right or all wrong), so the 4 test folds are worth 20 independent draws, not 12,000 rows: a
    classifier at chance reaches the bound, 60 % (12 of 20 files' worth, 3x chance), with p ~ 1e-4
    (binomial(20, 0.2) >= 12). Measured: ~80 % with 150 steps per fold (fold R_3 is the hard one, ~40 %).
    """
    from emgscale.eval.inference import load_model
    from emgscale.fingers.evaluate import evaluate_recordings
    from emgscale.loader.csv import read_part

    accuracies = []
    for fold in range(4):
        # No model selection on the held-out repetition: val is the training data; the last weights are scored.
        train = [f"R_{r}_C_*_EMG.csv" for r in range(4) if r != fold]
        write_split({"train": train, "val": train, "test": [f"R_{fold}_C_*_EMG.csv"]}, tmp_path / f"loro{fold}.yaml")
        res = _train(tmp_path / f"run{fold}", LIBEMG, 150, [
            f"data.split={tmp_path / f'loro{fold}.yaml'}", "data.csv.header=no", "data.csv.time_column=null",
            "data.csv.label_column=null", r"data.csv.file_label=C_(\d+)", "model.num_classes=5",
            "data.window.window_samples=400", "data.window.stride_samples=50", "run.steps_per_epoch=50",
            "run.max_epochs=3", "run.max_steps=150"])
        model, cfg = load_model(res.last_checkpoint)
        accuracies.append(evaluate_recordings(model, read_part(cfg.data, "test"))["accuracy"])
    assert np.mean(accuracies) > 0.6, accuracies


# ----------------------------------------------------------------------------- commands


def test_cli_synth_split_train_evaluate(tmp_path, capsys):
    """The documented commands run: synth (via emgscale.synth fingers), split, train, evaluate with PNG and JSON."""
    from emgscale.fingers.__main__ import main
    from emgscale.synth.__main__ import main as synth_main

    data = tmp_path / "fingers"
    assert synth_main(["fingers", "--out", str(data), "--users", "1", "--sessions-per-user", "3", "--minutes", "0.3"]) == 0
    assert main(["split", str(data), "--out", str(tmp_path / "split.yaml")]) == 0
    assert main(["train", str(data), "--split", str(tmp_path / "split.yaml"), "--out", str(tmp_path / "run"),
                 "run.max_steps=3", "run.max_epochs=1", "run.steps_per_epoch=3", "data.batch_size=2",
                 "run.threads=1"]) == 0
    assert main(["evaluate", str(tmp_path / "run" / "checkpoints" / "best.pt"), "--confusion",
                 str(tmp_path / "cm.png"), "--json", str(tmp_path / "s.json")]) == 0
    assert "accuracy" in capsys.readouterr().out and (tmp_path / "cm.png").stat().st_size > 1000
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == 0.3 * 60 * 200


def test_cli_bad_file_is_one_line(tmp_path, capsys):
    """A malformed CSV stops `train` with exit code 2 and one line naming the file and line, no traceback."""
    from emgscale.fingers.__main__ import main

    (tmp_path / "u").mkdir()
    for s in range(3):
        (tmp_path / "u" / f"s{s}.csv").write_text("time,a,label\n0,1,0\n0.005,x,0\n")
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s0.csv: line 3, column 'a': 'x' is not a number" in err[0]


def test_fingers_benchmark_tiny(tmp_path):
    """`bench fingers --budget tiny` writes results, a table of accuracy/balanced/F1 and two captioned PNGs."""
    from emgscale.bench.__main__ import main

    assert main(["fingers", "--budget", "tiny", "--out", str(tmp_path), "run.threads=1"]) == 0
    res = json.loads((tmp_path / "fingers" / "results.json").read_text())
    agg = res["tables"]["fingers"]["aggregate"]
    assert {(r["variant"], r["minutes"]) for r in agg} == {(v, m) for v in ("scratch", "pretrained")
                                                            for m in ("0.25", "all")}
    assert all(0 <= r["accuracy_mean"] <= 1 and r["users"] == 2 for r in agg)
    table = (tmp_path / "fingers" / "table.md").read_text()
    assert "synthetic finger corpus" in table and "2 users" in table and "macro-F1" in table
    for png in ("accuracy_vs_minutes.png", "confusion.png"):
        assert (tmp_path / "fingers" / png).stat().st_size > 1000
