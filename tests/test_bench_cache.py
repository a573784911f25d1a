"""The benchmark cache: user-level by default, shared across results folders, safe under concurrent makers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from emgscale.bench.steps import DONE, cached, default_cache


def test_default_cache_is_env_then_xdg_then_home(monkeypatch, tmp_path):
    """``$EMGSCALE_CACHE`` wins, then an absolute ``$XDG_CACHE_HOME``/emgscale/bench, then ~/.cache/emgscale/bench."""
    monkeypatch.setenv("EMGSCALE_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache() == tmp_path / "mine"
    monkeypatch.delenv("EMGSCALE_CACHE")
    assert default_cache() == tmp_path / "xdg" / "emgscale" / "bench"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG spec: a relative path is ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache() == tmp_path / "home" / ".cache" / "emgscale" / "bench"


def test_runner_defaults_to_the_user_level_cache_and_cache_wins(bench_cache, tmp_path, monkeypatch):
    """Without ``cache``, ``run_benchmark`` keeps its steps in :func:`default_cache`, whatever ``out`` is;
    ``--cache DIR`` still wins."""
    from emgscale.bench import runner
    from emgscale.bench.__main__ import main

    seen = []

    class Stop(Exception):
        pass

    def corpus(cache, flags):
        seen.append(Path(cache))
        raise Stop

    monkeypatch.setattr(runner, "ensure_cached_corpus", corpus)
    for out in ("a", "b"):
        with pytest.raises(Stop):
            runner.run_benchmark("zero_shot", out=tmp_path / out, budget="tiny")
    with pytest.raises(Stop):
        main(["zero_shot", "--budget", "tiny", "--out", str(tmp_path / "c"), "--cache", str(tmp_path / "mine")])
    assert seen == [bench_cache, bench_cache, tmp_path / "mine"]


def test_two_processes_making_the_same_step_make_it_once(tmp_path):
    """Concurrent makers of one step: one makes it (under the step's lock), the other waits and reuses its result;
    the marker says the step's kind and the wall seconds its make took."""
    made = []

    def make(folder: Path) -> dict:
        made.append(folder)
        time.sleep(0.5)  # the other maker arrives while this one works
        (folder / "out.txt").write_text("x")
        return {"n": len(made)}

    results = []
    threads = [threading.Thread(target=lambda: results.append(cached(tmp_path, "corpus", {"a": 1}, make)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and [r[1] for r in results] == [{"n": 1}, {"n": 1}]
    folder = results[0][0]
    done = json.loads((folder / DONE).read_text())
    assert done["result"] == {"n": 1} and done["kind"] == "corpus" and done["wall_s"] >= 0.5
    assert done["finished_at"] >= done["started_at"] and not (folder / ".lock").exists()


def test_a_failed_make_leaves_no_marker_and_releases_the_lock(tmp_path):
    """A step whose make fails is not marked done, and the next call makes it again."""
    def fail(folder: Path) -> dict:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cached(tmp_path, "lm", {"a": 1}, fail)
    folder, res = cached(tmp_path, "lm", {"a": 1}, lambda f: {"ok": True})
    assert res == {"ok": True} and (folder / DONE).is_file()


def test_the_corpus_key_holds_the_emgscale_version(tmp_path, monkeypatch):
    """The synthetic corpus is keyed by its flags, seed and the emgscale version (a new generator makes a new one)."""
    import emgscale
    from emgscale.bench import steps

    keys = []
    monkeypatch.setattr(steps, "cached", lambda cache, kind, key, make, why="": keys.append(key) or (
        tmp_path, {"data_root": str(tmp_path)}))
    steps.ensure_cached_corpus(tmp_path, {"users": 2}, seed=3)
    assert keys == [{"synth": {"users": 2}, "seed": 3, "emgscale": emgscale.__version__}]
