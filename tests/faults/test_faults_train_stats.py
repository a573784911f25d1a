"""Issue 23, finite but huge EMG reaching the model: the BatchNorm statistics a poisoned forward pass makes
non-finite are restored, the batch's sessions are named, and the run goes on (skip_bad) or stops naming them."""

from __future__ import annotations

import pytest
import torch
from _faults_helpers import train_overrides

import emgscale.train.loop as loop
from emgscale.models.checkpoint import load_checkpoint
from emgscale.run_folder import RunFolder
from emgscale.train import launch, load_train_config


def _poison_second_batch(monkeypatch):
    """Make the 2nd training forward pass see EMG of 3e38 (what the value rule now keeps out of the data)."""
    real, calls = loop.forward_batch, {"n": 0}

    def forward(net, batch):
        if net.training:
            calls["n"] += 1
            if calls["n"] == 2:
                batch.emg.fill_(3e38)
        return real(net, batch)
    monkeypatch.setattr(loop, "forward_batch", forward)


def test_poisoned_batch_restores_statistics_and_names_its_sessions(tiny_corpus, tmp_path, monkeypatch, capsys):
    """With data.skip_bad a batch whose forward makes BatchNorm statistics non-finite is named and skipped;
    the statistics are restored, so last.pt is written, finite, and resumes."""
    _poison_second_batch(monkeypatch)
    out = tmp_path / "run"
    data = [f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}", "data.skip_bad=true"]
    launch(load_train_config([], train_overrides(out, *data)))
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if "BatchNorm running statistics" in line]
    assert len(lines) == 1 and "skipped" in lines[0] and any(u in lines[0] for u in tiny_corpus.users), text
    ck = load_checkpoint(RunFolder(out).last)
    assert all(bool(torch.isfinite(v).all()) for v in ck.model.values() if v.is_floating_point())
    launch(load_train_config([], train_overrides(out, *data, "run.max_epochs=2")), resume=True)


def test_poisoned_batch_without_skip_bad_stops_naming_the_session(tiny_corpus, tmp_path, monkeypatch):
    """Without data.skip_bad the run stops with a DataError naming the batch's session (not the weights)."""
    from emgscale.data.errors import DataError

    _poison_second_batch(monkeypatch)
    cfg = load_train_config([], train_overrides(tmp_path / "run", f"data.data_root={tiny_corpus.root}",
                                                f"data.split={tiny_corpus.split_path}"))
    with pytest.raises(DataError, match="BatchNorm running statistics") as e:
        launch(cfg)
    assert any(s in str(e.value) for s in tiny_corpus.all_sessions())
