"""Fault injection: corrupt shards, bad sessions, two shard writers, bad config values, a user's CLI
mistakes, run folders that hold a run — each gives one clear line and never a poisoned checkpoint."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emgscale.models.checkpoint import load_checkpoint
from emgscale.run_folder import LAST
from emgscale.common import DirLock, LockedError
from emgscale.config import ConfigError
from emgscale.data.writer import write_session_file
from emgscale.shard import ShardConfig, shard_corpus
from emgscale.train import launch, load_train_config

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.arch=tds", "model.frontend.mlp_features=[16]", "model.tds.block_channels=[4,4]",
              "model.tds.kernel_width=8"]
WIN = ["data.window.window_samples=2000", "data.window.pad_left_samples=200", "data.window.pad_right_samples=100"]


def _train_overrides(out: Path, *extra: str) -> list[str]:
    return [f"run.out_dir={out}", "data.batch_size=4", "run.tensorboard=false", "run.threads=1", "run.max_epochs=1",
            "run.steps_per_epoch=6", "run.val_max_batches=1", "optim.warmup_epochs=0", *TINY_MODEL, *WIN, *extra]


def _corrupt_middle(path: Path, seed: int = 0) -> None:
    """Overwrite a stretch in the middle of ``path`` with random bytes (the tar stays the same length)."""
    raw = bytearray(path.read_bytes())
    a = len(raw) // 2
    raw[a: a + 4096] = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def _run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMGSCALE_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def test_random_bytes_in_a_shard_are_skipped_and_named(tiny_corpus, tmp_path, caplog):
    """Garbage bytes inside a float16 training shard: the bad record is named (shard and key), skipped,
    and training ends with finite weights."""
    out = tmp_path / "shards"
    manifest = shard_corpus(ShardConfig(data_root=str(tiny_corpus.root), out=str(out), split=str(tiny_corpus.split_path),
                                        progress=False, train_windows_per_record=2,
                                        window=load_train_config([], WIN).data.window))
    victim = manifest.shards_of("train")[0]["name"]
    _corrupt_middle(out / victim)
    cfg = load_train_config([], _train_overrides(tmp_path / "run", f"data.shards={out}", "data.shuffle_buffer=4",
                                                 "data.record_shuffle_buffer=2", "data.train_samples_per_epoch=24"))
    with caplog.at_level(logging.WARNING, logger="emgscale.loader"):
        result = launch(cfg)
    ck = load_checkpoint(result.last_checkpoint)
    assert all(bool(torch.isfinite(v).all()) for v in ck.model.values() if v.is_floating_point())
    named = [r.getMessage() for r in caplog.records if victim in r.getMessage()]
    assert named and any("record '" in m for m in named), [r.getMessage() for r in caplog.records]


def test_second_shard_writer_refuses_to_start(tiny_corpus, tmp_path):
    """While one writer holds the output folder, a second one stops with an error naming the holder."""
    out = tmp_path / "shards"
    cfg = ShardConfig(data_root=str(tiny_corpus.root), out=str(out), split=str(tiny_corpus.split_path), progress=False)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from emgscale.common import DirLock; "
                               f"DirLock({str(out)!r}, 'shard writer').acquire(); print('locked', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"pid {holder.pid} on {socket.gethostname()}"):
            shard_corpus(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert shard_corpus(cfg).parts["train"]["num_shards"] > 0  # the lock of a dead writer is stale


def test_stale_lock_file_is_taken_over(tmp_path):
    """A lock file left by a process that no longer runs does not block the next writer."""
    (tmp_path / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "what": "x"}))
    with DirLock(tmp_path, "test"):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def _bad_sessions(corpus) -> dict[str, str]:
    """Make one training session hold NaN EMG and another backwards timestamps; returns {path: reason}."""
    train = [r.session for r in corpus.split["train"]]
    bad = {}
    for name, kind in zip(train[:2], ("nan", "backwards")):
        path = corpus.path(name)
        n = corpus.num_rows[name]
        rng = np.random.default_rng(1)
        emg = rng.normal(size=(n, 2, 16)).astype(np.float32)
        t = 1.6e9 + np.arange(n) / 2000.0
        if kind == "nan":
            emg[n - 7, 1, 3] = np.nan  # near the end: only a pass over the whole file finds it
        else:
            t[n - 5] = t[n - 50]
        write_session_file(path, emg, t, session_name=name, user="43037958",
                           keystrokes=[{"key": "a", "start": float(t[10]), "end": float(t[20])}])
        bad[str(path)] = "NaN" if kind == "nan" else "not monotonic"
    return bad


def test_skip_bad_leaves_out_nan_and_backwards_sessions_naming_each(tiny_corpus, tmp_path, capsys):
    """data.skip_bad=true trains without the NaN / backwards-time sessions, and names each once with the reason."""
    bad = _bad_sessions(tiny_corpus)
    cfg = load_train_config([], _train_overrides(tmp_path / "run", f"data.data_root={tiny_corpus.root}",
                                                 f"data.split={tiny_corpus.split_path}", "data.skip_bad=true"))
    launch(cfg)
    err = capsys.readouterr().out
    for path, reason in bad.items():
        lines = [line for line in err.splitlines() if "skipping" in line and path in line]
        assert len(lines) == 1 and reason in lines[0], err


def test_data_info_exits_nonzero_on_bad_values(tiny_corpus, capsys):
    """`data info` reads the values: NaN EMG or backwards time exits non-zero naming the file; --quick does not read them."""
    from emgscale.data.__main__ import main

    bad = _bad_sessions(tiny_corpus)
    for path, reason in bad.items():
        assert main(["info", path]) == 2
        err = capsys.readouterr().err
        assert path in err and reason in err and len(err.strip().splitlines()) == 1
        assert main(["info", path, "--quick"]) == 0
    assert main(["info", str(tiny_corpus.root), "--skip-bad"]) == 1
    out = capsys.readouterr().out
    assert all(f"BAD {p}" in out for p in bad), out


@pytest.mark.parametrize("override, key", [
    ("data.batch_size=0", "data.batch_size"), ("data.batch_size=-4", "data.batch_size"),
    ("run.steps_per_epoch=-3", "run.steps_per_epoch"), ("model.arch=tdss", "model.arch"),
    ("optim.lr=nan", "optim.lr"), ("model.rnn.dropout=1.5", "model.rnn.dropout"),
    ("data.val_mode=sessions", "data.val_mode"), ("run.log_every_steps=0", "run.log_every_steps"),
    ("data.data_root=/no/such/root", "data.data_root"), ("run.init_from=/no/such.pt", "run.init_from"),
    ("model.features.channels=[0,16]", "model.features.channels"), ("run.device=gpu", "run.device"),
])
def test_bad_config_value_is_one_line_naming_the_key(tiny_corpus, tmp_path, capsys, override, key):
    """Each bad value stops `train` before any work with exit code 2 and one line naming the key and value."""
    from emgscale.train.__main__ import main

    out = tmp_path / "run"
    rc = main(_train_overrides(out, f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}",
                               override))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"{key}=" in err, err
    assert override.split("=", 1)[1].strip("[]").split(",")[0] in err
    assert not out.exists()


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    """A user's mistake in any CLI is one stderr line and exit code 2; --debug shows the traceback."""
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    cases = [("emgscale.train", "data.data_root=/nope", "data.split=/nope.yaml"),
             ("emgscale.train", "model.arch=nope"),
             ("emgscale.eval", str(trunc), "--split", "val"),
             ("emgscale.eval", str(tmp_path / "missing.pt")),
             ("emgscale.lm", "build", "--text", str(tmp_path / "none.txt"), "--out", str(tmp_path / "lm.bin")),
             ("emgscale.bench", "zero_shot", "--data-root", str(tmp_path / "nope")),
             ("emgscale.shard", "--data-root", str(tmp_path / "nope"), "--out", str(tmp_path / "s")),
             ("emgscale.data", "info", str(tmp_path / "nope")),
             ("emgscale.synth", "--out", str(tmp_path / "s"), "--minutes", "-1"),
             ("emgscale.tune", str(tmp_path / "none.yaml"))]
    for args in cases:
        p = _run_cli(*args)
        assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    p = _run_cli("emgscale.eval", str(tmp_path / "missing.pt"), "--debug")
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_existing_run_folder_needs_resume_or_overwrite(tiny_corpus, tmp_path, capsys):
    """Training into a folder that holds a run is refused without --resume; --overwrite replaces it."""
    from emgscale.train.__main__ import main

    out = tmp_path / "run"
    args = _train_overrides(out, f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}")
    assert main(args) == 0
    first = (out / "checkpoints" / LAST).stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "checkpoints" / LAST).stat().st_mtime_ns == first
    assert main([*args, "--overwrite"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] <= rows[-1]["step"] and len({r["step"] for r in rows if "val_loss" in r}) == len(
        [r for r in rows if "val_loss" in r])  # one run's history, not two mixed


def test_failed_start_up_leaves_no_run_folder(tiny_corpus, tmp_path, monkeypatch):
    """A run that fails before its first checkpoint removes the run folder it made (and only such a folder)."""
    import emgscale.train.loop as loop

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(loop, "_train_epoch", boom)
    out = tmp_path / "run"
    cfg = load_train_config([], _train_overrides(out, f"data.data_root={tiny_corpus.root}",
                                                 f"data.split={tiny_corpus.split_path}"))
    with pytest.raises(RuntimeError, match="boom"):
        launch(cfg)
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="boom"):
        launch(cfg)
    assert (out / "notes.txt").is_file()  # a folder that was there before is left alone


def test_resume_takes_the_run_folders_config_even_in_the_old_layout(tmp_path):
    """--resume builds the config from the run's saved config.yaml (old flat data.window_* keys upgraded),
    then the command line's overrides; the experiment file only locates the run."""
    import yaml

    from emgscale.train.config import resumed_config

    run = tmp_path / "run"
    run.mkdir()
    saved = {"data": {"window_samples": 4000, "pad_left_samples": 100, "batch_size": 8},
             "model": {"arch": "tds", "tds": {"block_channels": [16, 16]}}, "run": {"out_dir": str(run), "max_epochs": 5}}
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"run": {"out_dir": str(run), "max_epochs": 20}, "data": {"batch_size": 16}}))
    cfg, note = resumed_config([str(exp)], ["run.max_epochs=40"], True)
    assert cfg.data.window.window_samples == 4000 and cfg.data.window.pad_left_samples == 100
    assert cfg.model.tds.block_channels == [16, 16] and cfg.data.batch_size == 8 and cfg.run.max_epochs == 40
    assert str(run / "config.yaml") in note and "data.batch_size" in note


def test_resume_without_a_checkpoint_says_it_starts_fresh(tmp_path, capsys):
    """--resume on a folder with no last.pt starts fresh and says so (the documented choice)."""
    from emgscale.run_folder import RunFolder
    from emgscale.train.loop import _resume_path

    assert _resume_path(RunFolder(tmp_path), True) is None
    assert "starting a fresh run" in capsys.readouterr().out


def test_restarted_workers_resume_from_the_newest_complete_checkpoint(tmp_path):
    """Of Ray's reported checkpoint and the run's own last.pt, the newer readable one wins; a truncated one never."""
    from emgscale.models.checkpoint import Checkpoint, save_checkpoint
    from emgscale.train.launch import _newest_checkpoint

    older, newer, broken = tmp_path / "ray.pt", tmp_path / "last.pt", tmp_path / "broken.pt"
    save_checkpoint(older, Checkpoint(model={"w": torch.zeros(2)}, config={}, step=10))
    save_checkpoint(newer, Checkpoint(model={"w": torch.ones(2)}, config={}, step=14))
    save_checkpoint(broken, Checkpoint(model={"w": torch.ones(2)}, config={}, step=99))
    broken.write_bytes(broken.read_bytes()[:200])
    assert _newest_checkpoint([older, newer]) == newer
    assert _newest_checkpoint([newer, older]) == newer
    assert _newest_checkpoint([older, broken]) == older


def test_plots_name_the_data_and_draw_no_error_bars_over_one_user(tmp_path):
    """A bar plot's title says synthetic data, each bar says how many users it averages, the caption explains
    CER > 100 %, and a mean over one user has no error bar."""
    from emgscale.bench.report import aggregate, bars_figure
    from emgscale.bench.runner import data_label

    from emgscale.config import to_dict
    from emgscale.synth import SynthConfig

    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "synth_summary.json").write_text(json.dumps({"config": to_dict(SynthConfig()), "summary": {}}))
    assert data_label(tmp_path / "synth") == "synthetic data (emgscale.synth, seed 0)"
    rows = [{"variant": v, "user": u, "part": "test", "decoder": "greedy", "cer": c}
            for v, u, c in (("two", "a", 0.5), ("two", "b", 1.3), ("one", "a", 1.2))]
    seen = {"fig": bars_figure(aggregate(rows), "zero shot", data=data_label(tmp_path / "synth"))}
    ax = seen["fig"].axes[0]
    assert "synthetic data" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["two\n(test, n=2)", "one\n(test, n=1)"]
    assert any("exceed 100 %" in t.get_text() and "insertions" in t.get_text() for t in seen["fig"].texts)
    bars = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None][0]
    segments = bars.errorbar.lines[2][0].get_segments()
    drawn = [len(s) > 0 and np.isfinite(s).all() for s in segments]
    assert drawn == [True, False]  # an error bar over the two users, none over the one
