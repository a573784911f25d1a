"""Issue 23, values the writer and the reader judge differently: one rule (emgscale.data.values) for time and
EMG values in data info, shard, shard verify, training and evaluation; finite but huge EMG is named."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from _faults_helpers import TINY_MODEL, rewrite_session, train_overrides

from emgscale.data.errors import DataError
from emgscale.data.session import EMGSession


def _nan_time(emg, t):
    t[5000] = np.nan


def test_value_rule_names_nan_time_huge_emg_and_backwards_time():
    """value_problem refuses a NaN timestamp, EMG beyond MAX_ABS_EMG and time going backwards, naming the row."""
    from emgscale.data.values import MAX_ABS_EMG, value_problem

    t = np.arange(10.0)
    t[4] = np.nan
    assert "NaN or inf at row 4" in value_problem(time=t)
    emg = np.zeros((10, 2, 16), np.float32)
    emg[7, 1, 2] = 3e38
    assert "row 7" in value_problem(emg) and "exceeds" in value_problem(emg)
    assert value_problem(np.full((3, 2, 16), MAX_ABS_EMG / 2, np.float32), np.arange(3.0)) is None
    assert "not monotonic at row 3" in value_problem(time=np.array([0.0, 1, 2, 1]))
    assert "not monotonic at row 100" in value_problem(time=np.array([0.5]), first_row=100, previous_time=1.0)


def test_nan_timestamp_refused_by_data_info(tiny_corpus, capsys):
    """`data info` exits 2 on a session with one NaN timestamp, naming the file and the row (it passed before)."""
    from emgscale.data.__main__ import main

    path = tiny_corpus.path(tiny_corpus.split["train"][0].session)
    rewrite_session(path, edit=_nan_time)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "row 5000" in err and len(err.strip().splitlines()) == 1


def test_nan_timestamp_refused_by_shard_writer(tiny_corpus, tmp_path):
    """The shard writer refuses a session with a NaN timestamp, naming the file (it wrote it before)."""
    from emgscale.shard import ShardConfig, shard_corpus

    path = tiny_corpus.path(tiny_corpus.split["train"][0].session)
    rewrite_session(path, edit=_nan_time)
    cfg = ShardConfig(data_root=str(tiny_corpus.root), split=str(tiny_corpus.split_path), out=str(tmp_path / "sh"),
                      parts=["train"])
    with pytest.raises(DataError, match="NaN or inf") as e:
        shard_corpus(cfg)
    assert str(path) in str(e.value)


def _poison_record(tar_path, key_filter=None):
    """Rewrite the first train record of ``tar_path`` with a NaN timestamp (as an older writer could)."""
    with tarfile.open(tar_path, "r:") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isreg()]
    out = io.BytesIO()
    done = False
    with tarfile.open(fileobj=out, mode="w") as tar:
        for m, data in members:
            if not done and m.name.endswith(".time.npy"):
                t = np.load(io.BytesIO(data))
                t[len(t) // 2] = np.nan
                buf = io.BytesIO()
                np.save(buf, t)
                data, done = buf.getvalue(), True
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    tar_path.write_bytes(out.getvalue())
    assert done


def test_shard_verify_finds_a_record_with_a_nan_timestamp(tiny_corpus, tmp_path):
    """`shard verify` decodes every record under the one value rule: a NaN timestamp is named (sha256 matching)."""
    from emgscale.shard import ShardConfig, shard_corpus
    from emgscale.shard.verify import verify_shards
    from emgscale.shard.writer import file_sha256

    out = tmp_path / "sh"
    shard_corpus(ShardConfig(data_root=str(tiny_corpus.root), split=str(tiny_corpus.split_path), out=str(out),
                             parts=["train"]))
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][0]
    _poison_record(out / entry["name"])
    entry["bytes"], entry["sha256"] = (out / entry["name"]).stat().st_size, file_sha256(out / entry["name"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify_shards(out, show_progress=False)
    assert not report.ok
    assert "NaN or inf" in report.problems[0][1] and "record" in report.problems[0][1]


def test_eval_refuses_time_going_backwards(tiny_corpus):
    """Whole-session inference (eval, benchmarks) refuses time going backwards, as info and shard do."""
    from emgscale.eval.inference import infer_session
    from emgscale.models import build_model
    from emgscale.train import load_train_config

    path = tiny_corpus.path(tiny_corpus.split["test"][0].session)

    def backwards(emg, t):
        t[9000] = t[100]
    rewrite_session(path, edit=backwards)
    model = build_model(load_train_config([], TINY_MODEL).model).eval()
    with EMGSession(path) as s, pytest.raises(DataError, match="not monotonic at row 9000"):
        infer_session(model, s, chunk_seconds=2.0, context_seconds=0.0)


def test_data_info_flags_finite_but_huge_emg(tiny_corpus, capsys):
    """`data info` exits 2 on EMG of 3e38 (finite), naming the file and the row."""
    from emgscale.data.__main__ import main

    path = tiny_corpus.path(tiny_corpus.split["train"][0].session)

    def huge(emg, t):
        emg[3000, 0, 5] = 3e38
    rewrite_session(path, edit=huge)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "row 3000" in err and "exceeds" in err


def test_training_skips_a_session_of_huge_emg_and_checkpoints_stay_finite(tiny_corpus, tmp_path, capsys):
    """Training with data.skip_bad names the 3e38-EMG session and writes a loadable, finite last.pt."""
    import torch

    from emgscale.models.checkpoint import load_checkpoint
    from emgscale.run_folder import RunFolder
    from emgscale.train import launch, load_train_config

    path = tiny_corpus.path(tiny_corpus.split["train"][0].session)

    def huge(emg, t):
        emg[2000:2100] = 3e38
    rewrite_session(path, edit=huge)
    cfg = load_train_config([], train_overrides(tmp_path / "run", f"data.data_root={tiny_corpus.root}",
                                                f"data.split={tiny_corpus.split_path}", "data.skip_bad=true"))
    launch(cfg)
    out = capsys.readouterr().out
    assert any(str(path) in line and "exceeds" in line for line in out.splitlines()), out
    ck = load_checkpoint(RunFolder(tmp_path / "run").last)
    assert all(bool(torch.isfinite(v).all()) for v in ck.model.values() if v.is_floating_point())
