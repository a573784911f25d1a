"""Tests of ``python -m emgscale.shard``: exact round trip, determinism, resume, verify, bad sessions."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from emgscale.data import DataError, EMGSession, WindowSpec, read_window
from emgscale.data.writer import write_session_file
from emgscale.shard import ShardConfig, load_manifest, shard_corpus, verify_shards
from emgscale.shard import build as build_mod
from emgscale.shard.__main__ import main as shard_main
from emgscale.shard.records import decode_record, record_samples, sample_key
from emgscale.shard.writer import file_sha256

WIN = dict(window=WindowSpec(window_samples=1000, pad_left_samples=200, pad_right_samples=50, jitter=True))


def _cfg(corpus, out: Path, **kw) -> ShardConfig:
    base = dict(data_root=str(corpus.root), out=str(out), split=str(corpus.split_path), train_windows_per_record=3,
                shard_size_mb=0.25, progress=False, **WIN)
    return ShardConfig(**{**base, **kw})


def _records(out: Path, name: str) -> list[dict]:
    """Decoded records of one shard, in order."""
    import webdataset as wds

    raw = wds.tarfile_to_samples()(iter([{"url": str(out / name)}]))
    return [decode_record(r) for r in raw]


def _same(a: dict, b: dict) -> None:
    assert a["key"] == b["key"] and a["user"] == b["user"] and a["session"] == b["session"]
    assert (a["start"], a["offset"]) == (b["start"], b["offset"])
    assert a["emg"].dtype == np.float32 and np.array_equal(a["emg"], b["emg"])
    assert np.array_equal(a["labels"], b["labels"]) and a["labels"].dtype == np.int64
    assert np.array_equal(a["label_time_s"], b["label_time_s"]) and a["label_time_s"].dtype == np.float64


def test_round_trip_is_exact_in_float32(tiny_corpus, tmp_path):
    """float32 shards give back exactly read_window's samples: windows, whole sessions and jittered crops."""
    out = tmp_path / "shards"
    m = shard_corpus(_cfg(tiny_corpus, out, dtype="float32"))
    spec = WindowSpec(1000, None, 200, 50)
    seen: dict[str, set[int]] = {}
    for entry in m.shards:
        for rec in _records(out, entry["name"]):
            meta = rec["meta"]
            with EMGSession(tiny_corpus.path(meta["session"])) as s:
                if meta["kind"] == "train_chunk":
                    first = meta["offset"] // 1000
                    for jitter in (False, True):
                        got = list(record_samples(rec, jitter=jitter, rng=np.random.default_rng(7)))
                        rng = np.random.default_rng(7)
                        want = [read_window(s, first + k, WindowSpec(1000, None, 200, 50, jitter), rng)
                                for k in range(meta["num_windows"])]
                        assert len(got) == len(want) == meta["num_windows"]
                        for a, b in zip(got, want):
                            _same(a, b)
                    seen.setdefault(meta["session"], set()).update(range(first, first + meta["num_windows"]))
                else:
                    (got,) = record_samples(rec)
                    want = read_window(s, meta["offset"] // 1000, spec if meta["kind"] == "window"
                                       else spec.whole_session())
                    _same(got, want)
    train = {r.session for r in tiny_corpus.split["train"]}
    assert set(seen) == train  # every training window is stored exactly once
    for name in train:
        assert seen[name] == set(range(spec.num_windows(tiny_corpus.num_rows[name])))
    assert m.parts["test"]["kind"] == "session" and m.parts["val"]["kind"] == "window"


def test_keys_have_no_dots_and_keep_readable_original(corpus_factory, tmp_path):
    """Tar keys are dot-free ``user__session__offset``; the JSON keeps ``user/session/offset``."""
    c = corpus_factory(sessions_per_user=1, users=("7",), seconds=2.0)
    name = "2021.06.01-odd.name"
    from conftest import write_tiny_session

    write_tiny_session(c.root / f"{name}.hdf5", user="7", session=name, seconds=2.0, seed=3)
    out = tmp_path / "s"
    shard_corpus(ShardConfig(data_root=str(c.root), out=str(out), parts=["val"], sessions=[name], progress=False,
                             **WIN))
    with tarfile.open(next((out / "val").glob("*.tar"))) as tar:
        names = tar.getnames()
    assert {n.split(".", 1)[0] for n in names} == {sample_key("7", name, o) for o in (0, 1000, 2000, 3000)}
    rec = _records(out, "val/val-000000.tar")[0]
    assert rec["meta"]["key"] == f"7/{name}/0"
    assert sample_key("43037958", "a.b/c", 8000) == "43037958__a_b_c__000008000"


def test_float16_default_is_close_and_overflow_falls_back(corpus_factory, tmp_path):
    """float16 keeps > 60 dB SNR on microvolt-scale EMG; a session beyond float16's range is kept as float32."""
    c = corpus_factory(users=("1",), sessions_per_user=1, seconds=3.0)
    big = c.root / "big.hdf5"
    emg = np.random.default_rng(0).normal(0, 1e5, (6000, 2, 16)).astype(np.float32)
    write_session_file(big, emg, 1.6e9 + np.arange(6000) / 2000, session_name="big", user="1", keystrokes=[])
    out = tmp_path / "s"
    m = shard_corpus(ShardConfig(data_root=str(c.root), out=str(out), parts=["train"], progress=False, **WIN))
    assert m.parts["train"]["float32_records"] >= 1
    for entry in m.shards:
        for rec in _records(out, entry["name"]):
            with EMGSession(c.root / f"{rec['meta']['session']}.hdf5") as s:
                ref, _ = s.window(rec["meta"]["start"], rec["meta"]["start"] + len(rec["emg"]))
            if rec["meta"]["session"] == "big":
                assert rec["emg"].dtype == np.float32 and np.array_equal(rec["emg"], ref)
            else:
                assert rec["emg"].dtype == np.float16
                snr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((rec["emg"] - ref) ** 2.0))
                assert snr > 60


def test_content_is_deterministic_across_worker_counts(tiny_corpus, tmp_path):
    """Two local worker processes write byte-identical shards to a single-process run."""
    a = shard_corpus(_cfg(tiny_corpus, tmp_path / "a", parts=["train"], shard_size_mb=1.2))
    b = shard_corpus(_cfg(tiny_corpus, tmp_path / "b", parts=["train"], shard_size_mb=1.2, workers=2))
    assert a.content() == b.content() and len(a.shards) > 2
    train_users = {s["user"] for s in a.sessions["train"].values()}
    assert max(len(s["users"]) for s in a.shards) > 1 or len(train_users) == 1  # shards mix users


def test_resume_after_interruption_gives_same_manifest(tiny_corpus, tmp_path, monkeypatch):
    """A run killed mid-way, then a missing shard, a truncated one and a stale temp file: reruns end identical."""
    clean = shard_corpus(_cfg(tiny_corpus, tmp_path / "clean"))
    out = tmp_path / "resumed"
    real, calls = build_mod.write_shard, []

    def dying(task):
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated kill")
        calls.append(task.name)
        return real(task)

    monkeypatch.setattr(build_mod, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        shard_corpus(_cfg(tiny_corpus, out))
    assert not (out / "manifest.json").exists() and len(list(out.glob("*/*.tar"))) == 4
    monkeypatch.setattr(build_mod, "write_shard", real)
    first = shard_corpus(_cfg(tiny_corpus, out))
    assert first.content() == clean.content()
    names = [s["name"] for s in first.shards]
    (out / names[0]).unlink()
    data = (out / names[1]).read_bytes()
    (out / names[1]).write_bytes(data[: len(data) // 2])
    (out / "train" / ".train-000009.tar.abc.tmp").write_bytes(b"partial")
    again = shard_corpus(_cfg(tiny_corpus, out))
    assert again.content() == clean.content()
    assert not list(out.glob("*/.*.tmp"))
    assert all(file_sha256(out / s["name"]) == s["sha256"] for s in again.shards)


def test_verify_names_truncated_and_missing_shards(tiny_corpus, tmp_path, capsys):
    """verify reports a truncated and a missing shard by name and exits non-zero; a good folder exits 0."""
    out = tmp_path / "s"
    m = shard_corpus(_cfg(tiny_corpus, out))
    assert verify_shards(out, show_progress=False).ok and shard_main(["verify", str(out)]) == 0
    bad, gone = m.shards[1]["name"], m.shards[2]["name"]
    data = (out / bad).read_bytes()
    (out / bad).write_bytes(data[:-3000])
    (out / gone).unlink()
    report = verify_shards(out, show_progress=False)
    assert {n for n, _ in report.problems} == {bad, gone}
    assert "truncated" in dict(report.problems)[bad] and dict(report.problems)[gone] == "missing"
    assert shard_main(["verify", str(out)]) == 1
    assert bad in capsys.readouterr().out


def test_corrupt_tar_with_right_size_fails_verify(tiny_corpus, tmp_path):
    """Bytes flipped inside a shard (same size) are caught by the sha256 check."""
    out = tmp_path / "s"
    m = shard_corpus(_cfg(tiny_corpus, out, parts=["val"]))
    p = out / m.shards[0]["name"]
    data = bytearray(p.read_bytes())
    data[2000] ^= 0xFF
    p.write_bytes(bytes(data))
    assert "sha256" in dict(verify_shards(out, show_progress=False).problems)[m.shards[0]["name"]]


@pytest.mark.parametrize("kind", ["not_hdf5", "nan_rows"])
def test_bad_session_skipped_with_skip_bad_else_named(tiny_corpus, tmp_path, kind):
    """A bad session stops the run naming the file; with skip_bad it is left out and listed with its reason."""
    victim = tiny_corpus.split["train"][0].session
    path = tiny_corpus.path(victim)
    if kind == "not_hdf5":
        path.write_bytes(b"this is not an HDF5 file" * 100)
    else:  # opens fine, fails only when its rows are read (found while writing shards)
        with EMGSession(path) as s:
            emg, t = s.window(0, len(s))
            ks = s.keystrokes
        emg[5000, 1, 3] = np.nan
        write_session_file(path, emg, t, session_name=victim, user=tiny_corpus.split["train"][0].user, keystrokes=ks)
    with pytest.raises(DataError) as err:
        shard_corpus(_cfg(tiny_corpus, tmp_path / "strict"))
    assert str(path) in str(err.value)
    m = shard_corpus(_cfg(tiny_corpus, tmp_path / "lenient", skip_bad=True))
    assert [s["session"] for s in m.skipped if s.get("error")] == [victim]
    assert victim not in m.sessions["train"] and all(victim not in s["sessions"] for s in m.shards)
    assert verify_shards(tmp_path / "lenient", show_progress=False).ok
    again = shard_corpus(_cfg(tiny_corpus, tmp_path / "lenient", skip_bad=True))
    assert again.content() == m.content()


def test_cli_writes_filtered_users_and_prints_summary(tiny_corpus, tmp_path, capsys):
    """The CLI with --users and --parts writes only that user's sessions and a manifest with the settings."""
    user = tiny_corpus.users[1]
    out = tmp_path / "s"
    rc = shard_main(["--data-root", str(tiny_corpus.root), "--split", str(tiny_corpus.split_path), "--out", str(out),
                     "--users", user, "--parts", "train,val", "--window-samples", "1000", "--pad-left-samples", "200",
                     "--pad-right-samples", "50", "--dtype", "float32", "--workers", "1", "--no-progress"])
    assert rc == 0 and "train:" in capsys.readouterr().out
    m = load_manifest(out)
    assert set(m.parts) == {"train", "val"} and {s["user"] for p in m.sessions.values() for s in p.values()} == {user}
    assert m.settings["dtype"] == "float32" and m.settings["window_samples"] == 1000
    assert m.emgscale_version and m.created and json.loads((out / "manifest.json").read_text())["shards"]
    hours = sum(tiny_corpus.num_rows[r.session] for r in tiny_corpus.split["train"] if r.user == user) / 2000 / 3600
    assert abs(m.parts["train"]["emg_hours"] - hours) < 1e-3


def test_runs_of_other_parts_merge_into_one_manifest(tiny_corpus, tmp_path):
    """All sessions as training chunks, then the split's val/test in the same folder: one manifest with both."""
    out = tmp_path / "s"
    shard_corpus(_cfg(tiny_corpus, out, split=None, parts=["train"]))
    m = shard_corpus(_cfg(tiny_corpus, out, parts=["val", "test"]))
    assert set(m.parts) == {"train", "val", "test"} and m.parts["train"]["num_sessions"] == 12
    val = {r.session for r in tiny_corpus.split["val"]}
    assert set(m.sessions["val"]) == val and val <= set(m.sessions["train"])
    assert verify_shards(out, show_progress=False).ok


def test_estimate_matches_written_sizes(tiny_corpus, tmp_path, capsys):
    """``estimate`` from metadata.csv predicts windows, records and bytes of a real run (bytes within 3 %)."""
    from emgscale.shard.estimate import estimate_sizes

    cfg = _cfg(tiny_corpus, tmp_path / "s")
    est = estimate_sizes(tiny_corpus.root / "metadata.csv", cfg)
    m = shard_corpus(cfg)
    for part, s in m.parts.items():
        assert (est[part]["windows"], est[part]["records"]) == (s["num_windows"], s["num_records"])
        assert abs(est[part]["gb_float16"] * 1e9 / s["bytes"] - 1) < 0.03
    assert shard_main(["estimate", "--metadata", str(tiny_corpus.root), "--split", str(tiny_corpus.split_path)]) == 0
    assert "GB f16" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["single_user.sh", "generic.sh", "whole_dataset.sh"])
def test_recipe_scripts_run(tiny_corpus, tmp_path, script):
    """The sharding/ recipes run as documented (on the tiny corpus with its split) and verify clean."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = {**os.environ, "DATA": str(tiny_corpus.root), "SPLIT": str(tiny_corpus.split_path), "OUT": str(out),
           "WORKERS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["bash", str(repo / "sharding" / script), "--no-progress"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    m = load_manifest(out)
    assert set(m.parts) == {"train", "val", "test"} and "0 bad" in res.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_ray_tasks_write_the_same_shards(tiny_corpus, tmp_path):
    """Shards written by Ray tasks on a local cluster equal those of a single process."""
    pytest.importorskip("ray")
    from emgscale.cluster import LOCAL, connect, shutdown

    connect(LOCAL, num_cpus=2)  # a private instance, never another user's cluster
    try:
        a = shard_corpus(_cfg(tiny_corpus, tmp_path / "ray", ray_address="auto"))
    finally:
        shutdown()
    b = shard_corpus(_cfg(tiny_corpus, tmp_path / "local"))
    assert a.content() == b.content()
