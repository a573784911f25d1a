"""Issue 23, benchmark cache keyed by content, not paths: an edited split, a replaced init or generic checkpoint
behind the same path, or another data root make a new step; a reused step says so in one line."""

from __future__ import annotations

import json
import shutil

import torch

from emgscale.bench.steps import DONE
from emgscale.bench.training import ensure_trained, run_folder
from emgscale.models.checkpoint import Checkpoint, save_checkpoint
from emgscale.data.splits import load_split, save_split


def _overrides(corpus, *extra):
    return [f"data.data_root={corpus.root}", f"data.split={corpus.split_path}", "model.arch=tds", *extra]


def _checkpoint(path, value: float):
    """A checkpoint of one tensor: two values give two files of the same size."""
    return save_checkpoint(path, Checkpoint(model={"w": torch.full((8,), value)}, config={}))


def test_split_edited_in_place_makes_a_new_run(tiny_corpus, tmp_path):
    """Moving a session between parts of the same split file changes the training run's cache folder."""
    before = run_folder(tmp_path, [], _overrides(tiny_corpus))
    split = load_split(tiny_corpus.split_path)
    split.sessions["train"], split.sessions["val"] = split["train"][1:], [*split["val"], split["train"][0]]
    save_split(split, tiny_corpus.split_path)
    assert run_folder(tmp_path, [], _overrides(tiny_corpus)) != before


def test_init_checkpoint_replaced_behind_the_same_path_makes_a_new_run(tiny_corpus, tmp_path):
    """Replacing run.init_from with another checkpoint of the same size and path changes the run's folder."""
    ck = _checkpoint(tmp_path / "init.pt", 1.0)
    before = run_folder(tmp_path, [], _overrides(tiny_corpus, f"run.init_from={ck}"))
    size = ck.stat().st_size
    _checkpoint(ck, 2.0)
    assert ck.stat().st_size == size
    assert run_folder(tmp_path, [], _overrides(tiny_corpus, f"run.init_from={ck}")) != before


def test_a_session_file_that_changed_makes_a_new_run(tiny_corpus, tmp_path):
    """A session named by the split that changed size (other data behind the same root) changes the run's folder."""
    before = run_folder(tmp_path, [], _overrides(tiny_corpus))
    with open(tiny_corpus.path(tiny_corpus.split["train"][0].session), "ab") as f:
        f.write(b"\0" * 1024)
    assert run_folder(tmp_path, [], _overrides(tiny_corpus)) != before


def test_same_contents_elsewhere_reuse_the_run(tiny_corpus, tmp_path):
    """The same split and sessions copied to another folder key the same run (content, not paths)."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_corpus.root, copy)
    a = run_folder(tmp_path, [], _overrides(tiny_corpus))
    b = run_folder(tmp_path, [], [f"data.data_root={copy}", f"data.split={copy / tiny_corpus.split_path.name}",
                                  "model.arch=tds"])
    assert a == b


def test_generic_checkpoint_replaced_behind_the_same_path_and_size_is_not_reused(tiny_corpus, tmp_path):
    """--generic-checkpoint is keyed by sha256: a same-size replacement gets its own cache entry."""
    from emgscale.bench.steps import Corpus
    from emgscale.bench.suites import BenchContext, generic_model

    ck = _checkpoint(tmp_path / "generic.pt", 1.0)
    ctx = BenchContext(tmp_path / "cache", None, Corpus(tiny_corpus.root, tiny_corpus.root), tmp_path,
                       generic_checkpoint=ck)
    _, first = generic_model(ctx, {})
    _checkpoint(ck, 2.0)
    _, second = generic_model(ctx, {})
    assert first != second


def test_eval_key_holds_the_data_root(tiny_corpus, tmp_path, corpus_factory):
    """The evaluation key changes with the data behind the split (another data root), and with the checkpoint."""
    from emgscale.bench.steps import Corpus
    from emgscale.bench.parts import BenchContext, eval_key

    other = corpus_factory("other", seed=5)
    ck = _checkpoint(tmp_path / "m.pt", 1.0)
    key = {}
    for name, root in (("a", tiny_corpus.root), ("b", other.root)):
        ctx = BenchContext(tmp_path / "cache", None, Corpus(root, root), tmp_path)
        key[name] = json.dumps(eval_key(ctx, ck, tiny_corpus.split_path), sort_keys=True)
    assert key["a"] != key["b"]


def test_a_reused_run_says_why_in_one_line(tiny_corpus, tmp_path, capsys):
    """ensure_trained on a finished run trains nothing and prints one line saying it is reused and why."""
    folder = run_folder(tmp_path, [], _overrides(tiny_corpus))
    folder.mkdir(parents=True)
    (folder / DONE).write_text("{}")
    assert ensure_trained(tmp_path, [], _overrides(tiny_corpus)) == folder
    lines = [line for line in capsys.readouterr().out.splitlines() if "reusing" in line]
    assert len(lines) == 1 and folder.name in lines[0] and "split contents" in lines[0]
