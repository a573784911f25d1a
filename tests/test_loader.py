"""Tests of ``emgscale.loader.build_loader`` over shards and over HDF5: coverage, splitting, crops, subsets."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

from emgscale.common import RateLimitedLog
from emgscale.data import DataError, EMGSession, WindowSpec
from emgscale.loader import DataConfig, build_loader, minutes_budget
from emgscale.shard import ShardConfig, shard_corpus
from emgscale.loader.shard_pipeline import assign_shards

WIN = dict(window=WindowSpec(window_samples=1000, pad_left_samples=200, pad_right_samples=50, jitter=True))
W, PL, PR = 1000, 200, 50


@pytest.fixture
def sharded(tiny_corpus, tmp_path):
    """The tiny corpus as float32 shards (several small train/val shards, one test shard per session)."""
    out = tmp_path / "shards"
    manifest = shard_corpus(ShardConfig(data_root=str(tiny_corpus.root), out=str(out), split=str(tiny_corpus.split_path),
                                        train_windows_per_record=3, shard_size_mb=0.6, dtype="float32",
                                        progress=False, **WIN))
    return tiny_corpus, out, manifest


def _keys(loader) -> list[str]:
    return [k for b in loader for k in b.keys]


@pytest.mark.parametrize("shards", [1, 3, 4, 7])
def test_assignment_covers_each_sample_once(shards):
    """For any shard count, 2 ranks x 2 workers keep every (shard, sample) exactly once."""
    counts = [5 + s for s in range(shards)]
    seen = Counter()
    for reader in range(4):
        for s, m, r in assign_shards(shards, reader, 4):
            seen.update((s, i) for i in range(counts[s]) if i % m == r)
    assert seen == Counter({(s, i): 1 for s in range(shards) for i in range(counts[s])})


@pytest.mark.parametrize("part", ["val", "train", "test"])
def test_eval_pass_over_ranks_and_workers_is_exactly_once(sharded, part):
    """2 ranks x 2 DataLoader workers see every eval sample exactly once (more and fewer shards than readers)."""
    corpus, out, manifest = sharded
    cfg = DataConfig(shards=str(out), batch_size=3, num_workers=2, **WIN)
    per_rank = [_keys(build_loader(cfg, part, train=False, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    everything = _keys(build_loader(DataConfig(shards=str(out), batch_size=5, **WIN), part, train=False, seed=0))
    assert Counter(per_rank[0] + per_rank[1]) == Counter(everything)
    assert len(set(everything)) == len(everything) == manifest.parts[part]["num_windows"]
    loader = build_loader(cfg, part, train=False, seed=0, rank=1, world_size=2)
    if loader.num_batches is not None:  # known unless readers share shards of multi-window records
        assert (loader.num_samples, len(loader)) == (len(per_rank[1]), sum(1 for _ in loader))
    if part == "test":
        assert len(manifest.shards_of("test")) < 4  # fewer shards than readers: sample-level split


def test_shards_and_hdf5_give_the_same_eval_samples(sharded):
    """Val windows and test sessions read from shards equal those read from the HDF5 files."""
    corpus, out, _ = sharded
    for part in ("val", "test"):
        a = {k: b.emg[i, : b.emg_lengths[i]] for b in build_loader(DataConfig(shards=str(out), **WIN), part,
                                                                    train=False, seed=0) for i, k in enumerate(b.keys)}
        h = DataConfig(data_root=str(corpus.root), split=str(corpus.split_path), **WIN)
        b_ = {k: b.emg[i, : b.emg_lengths[i]] for b in build_loader(h, part, train=False, seed=0)
              for i, k in enumerate(b.keys)}
        assert a.keys() == b_.keys() and all(np.array_equal(a[k], b_[k]) for k in a)


def test_training_crops_have_window_length_and_labels_inside(sharded):
    """Jittered training windows are window+context long (clipped at session ends) with labels inside the window."""
    corpus, out, manifest = sharded
    cfg = DataConfig(shards=str(out), batch_size=4, shuffle_buffer=16, record_shuffle_buffer=4, **WIN)
    loader = build_loader(cfg, "train", train=True, seed=1, epoch=0)
    batches = list(loader)
    assert len(batches) == len(loader) and all(len(b) == 4 for b in batches)
    offsets = []
    for b in batches:
        for i, key in enumerate(b.keys):
            user, session, offset = key.rsplit("/", 2)
            offset, n = int(offset), corpus.num_rows[session]
            start, stop = max(offset - PL, 0), min(offset + W + PR, n)
            assert 0 <= offset and offset + W <= n and int(b.emg_lengths[i]) == stop - start
            with EMGSession(corpus.path(session)) as s:
                emg, t = s.window(start, stop)
                labels = s.keystroke_labels(t[offset - start], t[offset - start + W - 1])
            assert np.array_equal(b.emg[i, : stop - start].numpy(), emg)
            assert b.labels[i, : b.label_lengths[i]].tolist() == labels.labels.tolist()
            offsets.append(offset)
    assert any(o % W for o in offsets)  # jitter moved windows off the stride grid
    again = [k for b in build_loader(cfg, "train", train=True, seed=1, epoch=0) for k in b.keys]
    other = [k for b in build_loader(cfg, "train", train=True, seed=1, epoch=1) for k in b.keys]
    assert again == [k for b in batches for k in b.keys] and other != again


def test_train_epochs_split_evenly_over_ranks(sharded):
    """Every rank gets the same number of batches, its len(), for both sources."""
    corpus, out, manifest = sharded
    for cfg in (DataConfig(shards=str(out), batch_size=4, num_workers=2, shuffle_buffer=8, **WIN),
                DataConfig(data_root=str(corpus.root), split=str(corpus.split_path), batch_size=4, **WIN)):
        lengths = []
        for r in (0, 1):
            loader = build_loader(cfg, "train", train=True, seed=0, rank=r, world_size=2)
            lengths.append((len(loader), sum(1 for _ in loader)))
        assert lengths[0] == lengths[1] and lengths[0][0] == lengths[0][1] > 0


def test_corrupt_shard_in_training_is_logged_and_skipped(sharded, caplog):
    """Truncated training shards are skipped with a warning naming them; training keeps going."""
    corpus, out, manifest = sharded
    names = [s["name"] for s in manifest.shards_of("train")]
    victims = names[::3]
    for victim in victims:
        data = (out / victim).read_bytes()
        (out / victim).write_bytes(data[: len(data) // 3])
    cfg = DataConfig(shards=str(out), batch_size=4, shuffle_buffer=8, record_shuffle_buffer=2,
                     train_samples_per_epoch=200, **WIN)
    with caplog.at_level(logging.WARNING, logger="emgscale.loader"):
        n = sum(len(b) for b in build_loader(cfg, "train", train=True, seed=0))
    named = {name for r in caplog.records for name in names if name in r.getMessage()}
    assert n == 200 and named and named <= set(victims)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emgscale.loader"):
        keys = _keys(build_loader(cfg, "train", train=False, seed=0))
    assert 0 < len(keys) < manifest.parts["train"]["num_windows"]
    assert {name for r in caplog.records for name in names if name in r.getMessage()} == set(victims)


def test_corrupt_member_is_logged_and_skipped(sharded, caplog):
    """A record whose array member does not parse is skipped with a warning naming the shard."""
    corpus, out, manifest = sharded
    entry = manifest.shards_of("val")[0]
    raw = bytearray((out / entry["name"]).read_bytes())
    i = raw.index(b"\x93NUMPY")
    raw[i: i + 6] = b"garbag"
    (out / entry["name"]).write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="emgscale.loader"):
        keys = _keys(build_loader(DataConfig(shards=str(out), **WIN), "val", train=False, seed=0))
    assert len(keys) == manifest.parts["val"]["num_windows"] - 1
    assert any(entry["name"] in r.getMessage() for r in caplog.records)


def test_subsets_by_user_session_and_minutes_agree_across_sources(sharded):
    """users / sessions / max_minutes_per_user select the same windows from shards and from HDF5."""
    corpus, out, _ = sharded
    user = corpus.users[0]
    sources = (DataConfig(shards=str(out), **WIN), DataConfig(data_root=str(corpus.root), split=str(corpus.split_path), **WIN))
    for kw in ({"users": [user]}, {"sessions": [corpus.sessions[user][0]]}, {"max_minutes_per_user": 0.11}):
        got = [sorted(_keys(build_loader(c, "train", train=False, seed=0, **kw))) for c in sources]
        assert got[0] == got[1] and got[0]
        if "users" in kw:
            assert {k.split("/")[0] for k in got[0]} == {user}
        if "max_minutes_per_user" in kw:  # 0.1 min = 12,000 rows per user: the first train session, 12 windows
            per_user = Counter(k.split("/")[0] for k in got[0])
            assert set(per_user.values()) == {13} and len(per_user) == 3
    train = build_loader(sources[0], "train", train=True, seed=0, max_minutes_per_user=0.05)
    assert len(train) == 1 and train.num_samples == 32  # epoch sized from the 3 x 5 windows of the subset
    for b in train:
        for k in b.keys:
            _, session, offset = k.rsplit("/", 2)
            assert int(offset) + W <= 6000 and session in {corpus.sessions[u][0] for u in corpus.users}


def test_minutes_budget_takes_sessions_in_recording_order():
    """The budget fills each user's earliest sessions first and stops mid-session."""
    rows = minutes_budget([("1", "late", 200.0, 4000, 2000.0), ("1", "early", 100.0, 4000, 2000.0),
                           ("2", "x", 0.0, 100, 2000.0)], max_minutes=5000 / 2000 / 60)
    assert rows == {"early": 4000, "late": 1000, "x": 100}


def test_windowing_mismatch_and_limit_samples(sharded):
    """Shards written with other windowing are refused by name; limit_samples caps a pass."""
    corpus, out, _ = sharded
    with pytest.raises(ValueError, match="window_samples"):
        build_loader(DataConfig(shards=str(out)), "val", train=False, seed=0)
    loader = build_loader(DataConfig(shards=str(out), batch_size=4, **WIN), "val", train=False, seed=0, limit_samples=6)
    assert [len(b) for b in loader] == [4, 2] and len(loader) == 2


def test_url_pattern_without_manifest(sharded):
    """A brace pattern of shard URLs works without a manifest (epoch length must then be given)."""
    corpus, out, manifest = sharded
    n = len(manifest.shards_of("val"))
    cfg = DataConfig(shards=f"{out}/val/val-{{000000..{n - 1:06d}}}.tar", batch_size=4, train_samples_per_epoch=8, **WIN)
    assert len(_keys(build_loader(cfg, "val", train=False, seed=0))) == manifest.parts["val"]["num_windows"]
    assert sum(len(b) for b in build_loader(cfg, "val", train=True, seed=0)) == 8
    cfg.shards = f"pipe:cat {out}/val/val-000000.tar"
    assert _keys(build_loader(cfg, "val", train=False, seed=0))


@pytest.mark.timeout(120)
def test_all_training_shards_unreadable_stops_with_one_line(sharded, caplog):
    """Every training shard unreadable: the endless training stream stops after a full pass with one error
    naming the shard folder, and logs a bounded number of warnings instead of one per shard drawn."""
    corpus, out, manifest = sharded
    names = [s["name"] for s in manifest.shards_of("train")]
    for name in names:
        (out / name).write_bytes(b"not a tar file " * 64)
    cfg = DataConfig(shards=str(out), batch_size=4, train_samples_per_epoch=200, **WIN)
    with caplog.at_level(logging.WARNING, logger="emgscale.loader"):
        with pytest.raises(DataError, match=f"none of the {len(names)} training shards") as err:
            sum(len(b) for b in build_loader(cfg, "train", train=True, seed=0))
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert 0 < len(caplog.records) <= 10


def test_repeated_warnings_are_rate_limited_and_counted():
    """RateLimitedLog: a key once per interval, a cap on lines per interval, and the held-back count said."""
    lines, now = [], [0.0]

    class Sink:
        def warning(self, msg, *args):
            lines.append(msg % args)

    limited = RateLimitedLog(Sink(), lines_per_interval=3, interval_s=60.0, clock=lambda: now[0])
    for i in range(1000):
        limited.warning(i % 5, "bad shard %d", i % 5)
    assert lines == ["bad shard 0", "bad shard 1", "bad shard 2"]
    now[0] = 61.0
    limited.warning(0, "bad shard %d", 0)
    assert lines[-1] == "bad shard 0 (997 similar warnings held back before this one)"


def test_a_training_order_longer_than_the_data_reshuffles_every_pass():
    """sample_order with more samples than the data: each pass over it is a permutation of its own."""
    from emgscale.loader.base import sample_order

    order = sample_order(7, True, 7 * 4, seed=1, epoch=0, rank=0, world=1)
    passes = [order[i:i + 7] for i in range(0, 28, 7)]
    assert all(sorted(p) == list(range(7)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


def test_a_small_data_budget_fills_buffers_no_larger_than_itself(sharded, monkeypatch):
    """Over a few windows' budget the training stream's record and window shuffle buffers are capped by the
    selection (filling a 256-window buffer from 7 windows decoded the same records ~37 times)."""
    from emgscale.loader import shard_pipeline

    corpus, out, manifest = sharded
    seen = {}
    real = shard_pipeline.train_pipeline
    monkeypatch.setattr(shard_pipeline, "train_pipeline", lambda urls, **kw: seen.update(kw) or real(urls, **kw))
    cfg = DataConfig(shards=str(out), batch_size=4, shuffle_buffer=256, record_shuffle_buffer=16,
                     train_samples_per_epoch=8, **WIN)
    loader = build_loader(cfg, "train", train=True, seed=0, max_minutes_per_user=0.05)
    assert len(list(loader)) == 2
    assert 1 <= seen["sample_buffer"] < 256 and 1 <= seen["record_buffer"] < 16
    build_loader(cfg, "train", train=True, seed=0)  # the whole corpus: the configured buffers
    assert seen["sample_buffer"] == min(256, manifest.parts["train"]["num_windows"]) and seen["record_buffer"] == 16


def test_records_outside_the_selection_are_dropped_before_decoding():
    """Records of unselected sessions, or wholly past their session's row budget, go before their EMG is
    decoded; one whose metadata does not parse goes on (decoding names it)."""
    import json

    from emgscale.loader.shard_pipeline import _skip_unselected

    def raw(session, start):
        return {"json": json.dumps({"session": session, "start": start}).encode(), "emg.npy": b"..."}

    records = [raw("a", 0), raw("a", 5000), raw("b", 0), raw("c", 0), {"json": b"{not json"}]
    kept = list(_skip_unselected(iter(records), lambda m: m["session"] != "c", {"a": 4000}))
    assert kept == [records[0], records[2], records[4]]
    assert list(_skip_unselected(iter(records), None, None)) == records
