"""The run folder's rules: one home for its paths, resuming into another run's folder, interrupts, stale
temporary files, weights that do not fit the model, and the best-score field's honest name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _ray_fixtures import tiny_config, tiny_overrides
from emgscale.config import ConfigError, to_dict
from emgscale.models import build_model
from emgscale.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from emgscale.run_folder import LAST, RunFolder, checkpoint_file
from emgscale.train import TrainConfig, launch

REPO = Path(__file__).resolve().parents[1]


def _run_with_checkpoint(folder: Path, run_id: str, cfg: TrainConfig | None = None) -> Path:
    """A run folder holding a resumable ``last.pt`` of run ``run_id`` (random weights of ``cfg``'s model)."""
    cfg = cfg or TrainConfig()
    cfg.run.out_dir = str(folder)
    ck = Checkpoint(model=build_model(cfg.model).state_dict(), config=to_dict(cfg), step=3, optimizer={},
                    scheduler={}, run_id=run_id)
    return save_checkpoint(RunFolder(folder).last, ck)


def _config(out: Path, *extra: str) -> TrainConfig:
    return tiny_config(Path("unused"), Path("unused"), out, *extra)


def test_a_folder_means_its_last_pt(tmp_path):
    """A checkpoint folder and a run folder both stand for the last.pt inside; a file stands for itself."""
    last = _run_with_checkpoint(tmp_path / "run", "r1")
    assert checkpoint_file(tmp_path / "run") == last
    assert checkpoint_file(tmp_path / "run" / "checkpoints") == last
    assert checkpoint_file(last) == last
    assert load_checkpoint(tmp_path / "run").run_id == "r1"
    assert RunFolder(tmp_path / "run").resume_from(True) == last
    assert RunFolder(tmp_path / "empty").resume_from(True) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        RunFolder(tmp_path / "run").resume_from(str(tmp_path / "nothing"))


def test_resuming_into_another_runs_folder_is_refused(tmp_path):
    """--resume B/last.pt run.out_dir=A is refused when A holds another run; an empty folder, the run's own
    folder and a copy of the run's own checkpoint are accepted, and A is left untouched."""
    from emgscale.train.launch import prepare_run_folder

    a_last = _run_with_checkpoint(tmp_path / "A", "run-a")
    b_last = _run_with_checkpoint(tmp_path / "B", "run-b")
    before = a_last.read_bytes()
    with pytest.raises(ConfigError, match="holds another run") as e:
        prepare_run_folder(_config(tmp_path / "A"), str(b_last))
    assert str(tmp_path / "A") in str(e.value) and "\n" not in str(e.value)
    assert a_last.read_bytes() == before
    prepare_run_folder(_config(tmp_path / "C"), str(b_last))  # an empty (new) folder: a fork of B
    prepare_run_folder(_config(tmp_path / "A"), str(a_last))  # its own checkpoint
    copy = tmp_path / "ray" / "checkpoint_000" / LAST
    copy.parent.mkdir(parents=True)
    copy.write_bytes(before)
    prepare_run_folder(_config(tmp_path / "A"), str(copy.parent))  # a copy of its own checkpoint (same run id)


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    """The temporary file of a checkpoint write killed mid-way (.last.pt.*.tmp) is removed when a run starts
    in that folder; the checkpoint itself stays."""
    from emgscale.train.launch import prepare_run_folder

    last = _run_with_checkpoint(tmp_path / "A", "run-a")
    stale = [last.parent / ".last.pt.k1l2x9.tmp", tmp_path / "A" / ".config.yaml.ab12.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    prepare_run_folder(_config(tmp_path / "A"), True)
    assert not any(p.exists() for p in stale) and last.is_file()


def _fit_checkpoint(tmp_path: Path, tiny_corpus, *extra: str) -> Path:
    cfg = tiny_config(tiny_corpus.root, tiny_corpus.split_path, tmp_path / "old", *extra)
    return _run_with_checkpoint(tmp_path / "old", "old", cfg)


def test_resume_with_a_changed_model_names_the_tensor(tiny_corpus, tmp_path, capsys):
    """Resuming with a changed model is one line (exit 2) naming the first mismatched tensor and both shapes."""
    from emgscale.train.__main__ import main

    last = _fit_checkpoint(tmp_path, tiny_corpus)
    args = [*tiny_overrides(tiny_corpus.root, tiny_corpus.split_path, tmp_path / "old"), "model.tds.block_channels=[8]"]
    assert main([*args, "--resume", str(last)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "weights do not fit this model" in err and " in the checkpoint, " in err and " in the model" in err


def test_init_from_another_architecture_names_the_tensor(tiny_corpus, tmp_path, capsys):
    """run.init_from a checkpoint of another architecture is one line (exit 2) naming a tensor, not a traceback."""
    from emgscale.train.__main__ import main

    last = _fit_checkpoint(tmp_path, tiny_corpus)
    args = [*tiny_overrides(tiny_corpus.root, tiny_corpus.split_path, tmp_path / "new"), "model.arch=gru",
            f"run.init_from={last}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run.init_from" in err and "weights do not fit" in err
    assert "in the model but not in the checkpoint" in err or "is (" in err


def test_ctrl_c_before_the_first_checkpoint_keeps_the_logs(tiny_corpus, tmp_path, monkeypatch):
    """Ctrl-C before the first checkpoint leaves the run folder with what was logged, and running the same
    command again starts the run cleanly (not refused)."""
    import emgscale.train.loop as loop

    real_save = loop._save

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save", interrupted)
    out = tmp_path / "run"
    cfg = tiny_config(tiny_corpus.root, tiny_corpus.split_path, out, "run.max_epochs=1", "run.steps_per_epoch=2")
    with pytest.raises(KeyboardInterrupt):
        launch(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and not (out / "checkpoints" / LAST).exists()
    monkeypatch.setattr(loop, "_save", real_save)
    result = launch(cfg)
    assert result.steps == 2 and (out / "checkpoints" / LAST).is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2]  # one run's log, not two mixed


def test_sigterm_before_the_first_checkpoint_is_ctrl_c(tiny_corpus, tmp_path):
    """SIGTERM before the first checkpoint ends the run as Ctrl-C does (one line, exit 130, the logs kept),
    and the same command run again is not refused."""
    out = tmp_path / "run"
    args = [*tiny_overrides(tiny_corpus.root, tiny_corpus.split_path, out), "run.max_epochs=1",
            "run.steps_per_epoch=100000", "run.eval_every_steps=0"]
    env = {**os.environ, "EMGSCALE_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "emgscale.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert (out / "metrics.jsonl").is_file() and not (out / "checkpoints" / LAST).exists()
    from emgscale.train.__main__ import main

    assert main([a for a in args if not a.startswith("run.steps_per_epoch")] + ["run.steps_per_epoch=1"]) == 0


def test_best_score_has_an_honest_name_and_old_files_load(tmp_path):
    """best_val_cer of a format-3 file becomes best_val_score with its metric named: val_error for a frame
    classifier (loss.kind=frame_ce), val_cer for CTC."""
    for kind, metric in (("frame_ce", "val_error"), ("ctc", "val_cer")):
        old = {"model": {"w": torch.ones(2)}, "config": {"loss": {"kind": kind}}, "best_val_cer": 0.25,
               "format_version": 3}
        torch.save(old, tmp_path / f"{kind}.pt")
        ck = load_checkpoint(tmp_path / f"{kind}.pt")
        assert ck.best_val_score == 0.25 and ck.best_val_metric == metric and ck.run_id == ""
