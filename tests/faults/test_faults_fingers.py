"""Issue 23, fingers: a numeric label at or above the model's number of classes is one line naming the file and
the row, in training and in `fingers evaluate` (not `IndexError: Target 9 is out of bounds` / `cannot reshape`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _faults_helpers import one_error_line


def _set_label(csv: Path, row: int, label: str) -> None:
    lines = csv.read_text().splitlines()
    fields = lines[1 + row].split(",")
    fields[-1] = label
    lines[1 + row] = ",".join(fields)
    csv.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def finger_run(tmp_path_factory):
    """A 1-user synthetic finger corpus and an untrained checkpoint of the default finger model for it."""
    from emgscale.models.checkpoint import Checkpoint, save_checkpoint
    from emgscale.config import to_dict
    from emgscale.config import shipped_configs
    from emgscale.models import build_model
    from emgscale.synth.fingers import FingerSynthConfig, generate_fingers
    from emgscale.train import load_train_config

    base = tmp_path_factory.mktemp("fingers")
    data = base / "data"
    generate_fingers(FingerSynthConfig(out=str(data), users=1, sessions_per_user=3, minutes=0.3))
    configs = shipped_configs() / "fingers"
    cfg = load_train_config([str(configs / "train.yaml"), str(configs / "cnn_gru_causal.yaml")],
                            [f"data.data_root={data}", f"data.split={data / 'split.yaml'}"])
    ck = save_checkpoint(base / "model.pt", Checkpoint(model=build_model(cfg.model).state_dict(), config=to_dict(cfg)))
    return data, ck


def test_label_beyond_the_classes_stops_training_naming_file_and_row(finger_run, tmp_path, capsys):
    """`fingers train` on a file with label 9 (6 classes): exit 2, one line naming the file and the row."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(finger_run[0], data)
    bad = sorted(data.glob("user*/session0.csv"))[0]
    _set_label(bad, 40, "9")
    from emgscale.fingers.__main__ import main

    assert main(["train", str(data), "--out", str(tmp_path / "run"), "run.threads=1", "run.max_epochs=1",
                 "run.steps_per_epoch=2", "run.val_max_batches=1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "row 40" in line and "label 9" in line


def test_label_beyond_the_classes_in_evaluate_is_one_line(finger_run, tmp_path, capsys):
    """`fingers evaluate` on a test file with label 9: exit 2 naming the file, not `cannot reshape array`."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(finger_run[0], data)
    bad = sorted(data.glob("user*/session2.csv"))[0]
    _set_label(bad, 7, "9")
    from emgscale.fingers.__main__ import main

    assert main(["evaluate", str(finger_run[1]), str(data), "--split", str(data / "split.yaml")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "label 9" in line
