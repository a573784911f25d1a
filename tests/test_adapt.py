"""Tests of unsupervised test-time adaptation (emgscale.models.adapt, eval --adapt-seconds, bench_adapt)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emgscale.config import from_dict, to_dict
from emgscale.data.session import EMGSession
from emgscale.features.norm import RollingNorm
from emgscale.models import ModelConfig, build_model
from emgscale.models.adapt import adapt_norm, rolling_start_state, with_start_state
from emgscale.models.checkpoint import Checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = {"frontend": {"mlp_features": [16]}, "tds": {"block_channels": [4, 4], "kernel_width": 8}}


def _model(norm: str = "batch") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(from_dict(ModelConfig, {**TINY, "features": {"norm": norm}})).eval()


def _emg(seconds: float, seed: int, scale: float = 20.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, size=(int(seconds * 2000), 2, 16)).astype(np.float32)


def _checkpoint(tmp_path: Path, corpus) -> Path:
    from emgscale.train import load_train_config

    cfg = load_train_config([], [f"data.data_root={corpus.root}", f"data.split={corpus.split_path}",
                                 "model.frontend.mlp_features=[16]", "model.tds.block_channels=[4,4]",
                                 "model.tds.kernel_width=8", "data.window.window_samples=4000"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.featurizer.norm.running_mean.fill_(0.5)  # a "generic" model's statistics, not the new user's
    return save_checkpoint(tmp_path / "generic.pt", Checkpoint(model=model.state_dict(), config=to_dict(cfg)))


def test_adapt_changes_only_the_running_statistics():
    """Adaptation changes BatchNorm running statistics only: every parameter and other buffer is bitwise the same."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = adapt_norm(model, [_emg(5.0, 1)], 3.0, window_seconds=1.0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"featurizer.norm.running_mean", "featurizer.norm.running_var",
                       "featurizer.norm.num_batches_tracked"}
    assert info["seconds"] == pytest.approx(3.0) and info["windows"] == 3 and info["batch_norms"] == 1
    assert not any(m.training for m in model.modules())  # left in eval mode


def test_zero_seconds_changes_nothing():
    """0 seconds of adaptation leaves every tensor of the model as it was."""
    model = _model()
    before = copy.deepcopy(model.state_dict())
    assert adapt_norm(model, [_emg(2.0, 1)], 0.0)["windows"] == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_adaptation_is_the_cumulative_average_of_its_batches():
    """The adapted statistics are the plain mean of each batch's statistics (momentum=None), over at most `seconds`."""
    emg = [_emg(1.5, 2), _emg(2.0, 3, scale=50.0)]
    alone = []
    for piece in (emg[0][:2000], emg[0][2000:], emg[1][:1500]):  # 2.25 s cut in windows of 1 s
        m = _model()
        adapt_norm(m, [piece], 10.0, window_seconds=1.0, batch_windows=1)
        alone.append((m.featurizer.norm.running_mean.clone(), m.featurizer.norm.running_var.clone()))
    model = _model()
    info = adapt_norm(model, emg, 2.25, window_seconds=1.0, batch_windows=1)
    assert info["seconds"] == pytest.approx(2.25) and info["windows"] == 3
    torch.testing.assert_close(model.featurizer.norm.running_mean, torch.stack([a[0] for a in alone]).mean(0))
    torch.testing.assert_close(model.featurizer.norm.running_var, torch.stack([a[1] for a in alone]).mean(0))


def test_adaptation_absorbs_a_gain_change():
    """A user whose EMG is 10x louder gets, after adaptation, the normalised features of the 1x user after adaptation."""
    x, y = _emg(4.0, 4), _emg(3.0, 5)
    a, b = _model(), _model()
    adapt_norm(a, [x], 4.0, window_seconds=2.0)
    adapt_norm(b, [10 * x], 4.0, window_seconds=2.0)
    lengths = torch.tensor([len(y)])
    with torch.no_grad():
        fa, _ = a.featurizer(torch.from_numpy(y)[None], lengths)
        fb, _ = b.featurizer(torch.from_numpy(10 * y)[None], lengths)
        f0, _ = _model().featurizer(torch.from_numpy(10 * y)[None], lengths)
        spectra, _ = a.featurizer.spectra(torch.from_numpy(y)[None], lengths)
    live = spectra > spectra.min() + 3.0  # bins near the log floor (zero-mean EMG's DC) do not scale with the gain
    torch.testing.assert_close(fa[live], fb[live], atol=1e-2, rtol=0)  # float32 log10 rounding
    assert (f0 - fa)[live].abs().mean() > 0.5  # without adaptation the gain shows


def test_rolling_start_state_continues_the_stream():
    """A rolling norm started from the state after `a` normalises `y` as it would `a` followed by `y`."""
    torch.manual_seed(0)
    norm = RollingNorm(4, window_frames=7).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    a, y = torch.randn(1, 11, 2, 2, 3) * 3 + 1, torch.randn(2, 9, 2, 2, 3)
    whole = torch.cat([norm(torch.cat([a, y[b: b + 1]], 1), torch.tensor([20]))[:, 11:] for b in range(2)])
    adapted = with_start_state(copy.deepcopy(norm), rolling_start_state(norm, [a[:, :4], a[:, 4:]]))
    torch.testing.assert_close(adapted(y, torch.tensor([9, 9])), whole, atol=1e-5, rtol=0)
    out = adapted(y, torch.tensor([9, 5]))
    assert bool((out[1, 5:] == 0).all())  # padding stays zero


def test_adapt_a_rolling_norm_model():
    """A rolling-norm model gets a start state; its parameters and state dict keys are unchanged."""
    model = _model("rolling")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = torch.from_numpy(_emg(2.0, 7))[None]
    with torch.no_grad():
        out0, _ = model(y, torch.tensor([y.shape[1]]))
        info = adapt_norm(model, [_emg(3.0, 6, scale=80.0)], 3.0)
        out1, _ = model(y, torch.tensor([y.shape[1]]))
    assert info["rolling_norms"] == 1 and info["batch_norms"] == 0
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert (out0 - out1).abs().max() > 1e-3


def test_labels_are_never_read(tiny_corpus, monkeypatch):
    """Adapting on a user's sessions reads their EMG only: every label accessor would raise."""
    from emgscale.eval.inference import adapt_to_user

    def refuse(*a, **k):
        raise AssertionError("adaptation read labels")

    for name in ("ground_truth", "keystroke_labels"):
        monkeypatch.setattr(EMGSession, name, refuse)
    for name in ("keystrokes", "prompts"):
        monkeypatch.setattr(EMGSession, name, property(refuse))
    user = tiny_corpus.users[0]
    refs = [r for r in tiny_corpus.split["train"] if r.user == user]
    info = adapt_to_user(_model(), tiny_corpus.root, refs, 9.0, window_seconds=2.0)
    assert info["seconds"] == pytest.approx(9.0) and info["sessions"] == [r.session for r in refs]


def test_split_emissions_adapts_each_user_on_their_own_training_sessions(tiny_corpus, tmp_path, monkeypatch):
    """adapt_seconds adapts per user on that user's train sessions; only the decoded sessions' labels are read."""
    from emgscale.eval import split_emissions

    ck = _checkpoint(tmp_path, tiny_corpus)
    read: list[str] = []
    truth = EMGSession.ground_truth
    monkeypatch.setattr(EMGSession, "ground_truth", lambda self, *a, **k: read.append(self.session_name) or truth(
        self, *a, **k))
    plain = split_emissions(ck, tiny_corpus.root, tiny_corpus.split_path, "test", device="cpu")
    read.clear()
    adapted = split_emissions(ck, tiny_corpus.root, tiny_corpus.split_path, "test", device="cpu", adapt_seconds=4.0)
    tests = {r.session for r in tiny_corpus.split["test"]}
    assert set(read) == tests and {e["session"] for e in adapted} == tests
    for e in adapted:
        a = e["adaptation"]
        assert a["seconds"] == pytest.approx(4.0)
        assert a["sessions"] == [r.session for r in tiny_corpus.split["train"] if r.user == e["user"]]
    by = {e["session"]: e for e in plain}
    assert all(by[e["session"]]["adaptation"] is None for e in adapted)
    assert all(not np.allclose(by[e["session"]]["log_probs"], e["log_probs"]) for e in adapted)


def test_eval_cli_records_adaptation(tiny_corpus, tmp_path):
    """`python -m emgscale.eval CKPT --adapt-seconds 3` writes the setting and each user's EMG read in the JSON."""
    from emgscale.eval.__main__ import main

    ck = _checkpoint(tmp_path, tiny_corpus)
    out = tmp_path / "r.json"
    assert main([str(ck), "--split", "test", "--adapt-seconds", "3", "--out", str(out), "device=cpu"]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["adapt_seconds"] == 3.0 and res["config"]["adapt_part"] == "train"
    assert set(res["adaptation"]["per_user"]) == set(tiny_corpus.users)
    assert all(u["seconds"] == pytest.approx(3.0) for u in res["adaptation"]["per_user"].values())


def test_eval_cli_rejects_negative_adapt_seconds(tiny_corpus, tmp_path, capsys):
    """A negative --adapt-seconds is one line naming the key, exit code 2."""
    from emgscale.eval.__main__ import main

    ck = _checkpoint(tmp_path, tiny_corpus)
    assert main([str(ck), "--adapt-seconds", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adapt_seconds" in err[0]


def test_bench_adapt_runs(tiny_corpus, tmp_path):
    """benchmarks/bench_adapt.py prints a row per adaptation length and writes them as JSON."""
    ck = _checkpoint(tmp_path, tiny_corpus)
    out = tmp_path / "adapt.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_adapt.py"), "--checkpoint", str(ck),
                           "--data-root", str(tiny_corpus.root), "--splits", str(tiny_corpus.split_path),
                           "--seconds", "0,2,5", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["adapt_seconds"] for r in rows] == [0.0, 2.0, 5.0] and all(r["users"] == 3 for r in rows)
    assert rows[0]["per_user_adapt_seconds_used"] == {u: 0.0 for u in tiny_corpus.users}
    assert "pooled CER" in proc.stdout


def test_an_adapted_causal_model_streams_as_its_forward():
    """After adaptation a causal rolling-norm model, pushed in chunks, gives its own offline log-probs."""
    import yaml

    from emgscale.stream import Streamer

    data = yaml.safe_load((REPO / "emgscale" / "configs" / "models" / "cnn_gru_causal_tiny.yaml").read_text())
    torch.manual_seed(0)
    model = build_model(from_dict(ModelConfig, data["model"])).eval()
    assert adapt_norm(model, [_emg(4.0, 8, scale=60.0)], 4.0)["rolling_norms"] == 1
    emg = _emg(1.2, 9)
    with torch.no_grad():
        lp, ol = model(torch.from_numpy(emg)[None], torch.tensor([len(emg)]))
    s = Streamer(model)
    got = np.concatenate([*(s.push(emg[a: a + 333]) for a in range(0, len(emg), 333)), s.flush()])
    np.testing.assert_allclose(got, lp[0, : int(ol[0])].numpy(), atol=1e-4, rtol=0)
