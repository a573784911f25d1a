"""Streaming inference (emgscale.stream): chunked == offline for every causal family, reset, online
decoding, key latency, export, the CLI and the latency benchmark."""

import runpy
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from emgscale.models.checkpoint import Checkpoint, save_checkpoint
from emgscale.config import from_dict, to_dict
from emgscale.data.charset import charset
from emgscale.decode import DecoderConfig, greedy_decode
from emgscale.decode.simulate import simulate_emissions
from emgscale.models import ModelConfig, build_model
from emgscale.stream import (NotStreamable, OnlineGreedy, Streamer, export_step, key_latencies, online_decoder,
                             replay_session)

ROOT = Path(__file__).resolve().parents[1]
# Offline and streamed log-probs differ only by float rounding (different matmul shapes, cumulative
# sums in another order): 1e-4 nats is ~100x the differences seen.
ATOL = 1e-4

TINY_BASE = {"frontend": {"mlp_features": [24]}}
ATTN = {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "causal": True}
CAUSAL = {
    "tds": {"arch": "tds", "tds": {"block_channels": [8, 8], "kernel_width": 4}},
    "tds_rolling": {"arch": "tds", "tds": {"block_channels": [8, 8], "kernel_width": 4},
                    "features": {"norm": "rolling", "rolling_window_s": 0.3}},
    "lstm": {"arch": "lstm", "rnn": {"hidden_size": 16, "num_layers": 2}, "features": {"norm": "none"}},
    "cnn_gru_causal": {"arch": "cnn_rnn", "features": {"norm": "rolling", "rolling_window_s": 0.5},
                       "cnn_rnn": {"conv_channels": [16, 16], "strides": [2, 1], "causal": True,
                                   "bidirectional": False, "hidden_size": 16}},
    "conformer_causal": {"arch": "conformer", "features": {"norm": "rolling", "rolling_window_s": 0.5},
                         "conformer": {**ATTN, "conv_kernel": 5, "left_frames": 6}},
    "conformer_causal_500hz": {"arch": "conformer", "features": {"norm": "rolling", "sample_rate_hz": 500.0},
                               "conformer": {**ATTN, "conv_kernel": 3, "left_frames": 40}},
    "transformer_causal": {"arch": "transformer", "transformer": {**ATTN, "left_frames": 5,
                                                                  "subsampling_strides": [2, 2]}},
    "transformer_chunk_causal": {"arch": "transformer", "transformer": {**ATTN, "attention": "chunk",
                                                                        "chunk_frames": 8, "left_chunks": 1}},
    "s4d": {"arch": "s4d", "features": {"norm": "rolling", "rolling_window_s": 0.5},
            "s4d": {"d_model": 16, "d_state": 8, "num_layers": 2, "kernel_size": 7, "stride": 5}},
    "splash": {"arch": "splash", "frontend": {"kind": "flatten"},
               "features": {"kind": "log_bands", "norm": "rolling", "rolling_window_s": 0.0, "rolling_per_bin": True},
               "splash": {"mlp_features": [16], "block_channels": [4, 8], "kernel_width": 4, "mirror_right": True}},
}
NON_CAUSAL = {
    "bigru": ({"arch": "gru", "rnn": {"hidden_size": 8, "num_layers": 1, "bidirectional": True}}, "bidirectional"),
    "cnn_rnn": ({"arch": "cnn_rnn", "cnn_rnn": {"conv_channels": [8], "strides": [2], "causal": False,
                                                "bidirectional": False, "hidden_size": 8}}, "causal: true"),
    "conformer": ({"arch": "conformer", "conformer": {"d_model": 16, "num_layers": 1, "num_heads": 2,
                                                      "ffn_dim": 16}}, "causal: true"),
    "transformer_full": ({"arch": "transformer", "transformer": {"d_model": 16, "num_layers": 1, "num_heads": 2,
                                                                 "ffn_dim": 16, "attention": "full",
                                                                 "causal": True}}, "unbounded"),
}


def model_cfg(data: dict[str, typing.Any]) -> ModelConfig:
    return from_dict(ModelConfig, {**TINY_BASE, **data})


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(model_cfg(CAUSAL[name])).eval()


def rand_emg(samples: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((samples, 2, 16)) * 20).astype(np.float32)


def offline(model: torch.nn.Module, emg: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        lp, ol = model(torch.from_numpy(emg)[None], torch.tensor([len(emg)]))
    return lp[0, : int(ol[0])].numpy()


def stream(streamer: Streamer, emg: np.ndarray, chunks: typing.Iterable[int]) -> np.ndarray:
    out, a = [], 0
    for c in chunks:
        out.append(streamer.push(emg[a:a + c]))
        a += c
    assert a >= len(emg)
    out.append(streamer.flush())
    return np.concatenate(out)


def sizes(n: int, chunk: int) -> list[int]:
    return [chunk] * (-(-n // chunk))


@pytest.mark.parametrize("name", list(CAUSAL))
def test_chunked_streaming_equals_offline_forward(name: str) -> None:
    """Pushing a sequence in chunks of 1 frame .. 1 s (and random sizes) gives the offline log-probs."""
    model = tiny(name)
    n = 2400 + 7  # not a multiple of any frame size: the flush must produce the offline tail
    emg = rand_emg(n)
    ref = offline(model, emg)
    s = Streamer(model)
    frame = model.featurizer.samples_per_frame
    rng = np.random.default_rng(1)
    for chunks in (sizes(n, frame), sizes(n, 80), sizes(n, 333), sizes(n, 2000),
                   list(rng.integers(0, 400, size=n // 100)) + [n], [n]):
        s.reset()
        got = stream(s, emg, chunks)
        assert got.shape == ref.shape, (name, chunks[:3])
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
        assert s.frames_out == s.expected_frames() == len(ref)


def test_emissions_arrive_as_soon_as_their_unit_is_complete() -> None:
    """After n samples the streamer has returned every offline frame computable from them, no more."""
    model = tiny("conformer_causal")
    emg = rand_emg(3000)
    s = Streamer(model)
    ref = offline(model, emg)
    got = s.push(emg[:1000])
    full_units = (1000 - s.core.prime_samples) // s.unit_samples
    assert len(got) == full_units
    np.testing.assert_allclose(got, ref[:full_units], atol=ATOL, rtol=0)


def test_reset_starts_a_new_session_from_the_initial_state() -> None:
    """After reset() a second session streams exactly like in a fresh Streamer; without it, it does not."""
    model = tiny("cnn_gru_causal")
    a, b = rand_emg(3000, seed=1), rand_emg(3000, seed=2)
    fresh = stream(Streamer(model), b, sizes(3000, 80))
    s = Streamer(model)
    stream(s, a, sizes(3000, 80))
    s.reset()
    np.testing.assert_array_equal(stream(s, b, sizes(3000, 80)), fresh)
    np.testing.assert_allclose(fresh, offline(model, b), atol=ATOL, rtol=0)
    carried = Streamer(model)
    carried.push(a)  # no reset: the RNN, norm and conv state of session a leak into b
    assert not np.allclose(carried.push(b)[:50], fresh[:50], atol=1e-3)
    with pytest.raises(RuntimeError, match="reset"):
        s.push(b[:10])  # pushing after flush without reset is an error


@pytest.mark.parametrize("name", list(NON_CAUSAL))
def test_non_causal_models_are_refused_with_the_reason(name: str) -> None:
    """Models that read the future (or need unbounded state) raise NotStreamable naming the setting."""
    data, reason = NON_CAUSAL[name]
    with pytest.raises(NotStreamable, match=reason):
        Streamer(build_model(model_cfg(data)))


def test_bad_chunk_shape_is_a_clear_error() -> None:
    """A chunk that is not (n, 2, 16) raises ValueError naming the expected shape."""
    with pytest.raises(ValueError, match=r"\(n, 2, 16\)"):
        Streamer(tiny("tds")).push(np.zeros((10, 32), np.float32))


def test_non_finite_input_is_held_at_the_last_valid_value_and_never_reaches_the_state() -> None:
    """NaN, inf and float32-overflowing samples are repaired (held per channel): the stream equals the
    offline forward of the repaired session, the state stays finite, and later frames are unharmed."""
    model = tiny("cnn_gru_causal")
    emg = rand_emg(3000)
    bad, fixed = emg.copy(), emg.copy()
    bad[0, 1, 5] = np.nan  # before any valid value: 0
    fixed[0, 1, 5] = 0.0
    bad[700, 0, 3] = np.nan
    fixed[700, 0, 3] = emg[699, 0, 3]
    bad[701:705, 1, :] = np.inf
    fixed[701:705, 1, :] = emg[700, 1, :]
    bad[1500, 0, 0] = 3e38  # finite, but its power spectrum overflows float32
    fixed[1500, 0, 0] = emg[1499, 0, 0]
    s = Streamer(model)
    got = stream(s, bad, sizes(3000, 80))
    assert np.isfinite(got).all() and s.repaired_values == 1 + 1 + 4 * 16 + 1
    np.testing.assert_allclose(got, offline(model, fixed), atol=ATOL, rtol=0)
    assert all(bool(torch.isfinite(t).all()) for t in s.state if t.is_floating_point())


def test_a_step_that_turns_non_finite_raises_and_is_not_applied() -> None:
    """A model whose weights overflow makes push() raise ValueError; the state keeps its last finite value."""
    model = tiny("cnn_gru_causal")
    s = Streamer(model)
    s.push(rand_emg(500))
    before = [t.clone() for t in s.state]
    with torch.no_grad():
        model.encoder.rnn.forward_layers[0].weight_hh_l0.fill_(float("inf"))
    with pytest.raises(ValueError, match="non-finite"):
        s.push(rand_emg(200, seed=1))
    for a, b in zip(s.state, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- online decoding --------------------------------------------------------------------------------
def test_online_greedy_equals_offline_greedy_on_a_whole_session(tiny_corpus) -> None:
    """Online greedy over a streamed session (40 ms chunks) == offline greedy of the whole-session forward."""
    from emgscale.data.session import EMGSession

    model = tiny("conformer_causal", seed=3)
    path = tiny_corpus.path(tiny_corpus.all_sessions()[0])
    with EMGSession(path) as sess:
        ref = greedy_decode(offline(model, sess.emg()))
        res = replay_session(Streamer(model), sess, chunk_ms=40.0, decoder=OnlineGreedy())
    assert len(ref) > 10  # the untrained model emits keys, so the comparison means something
    assert res.labels == ref
    assert np.all(np.diff(res.emit_s) >= 0) and len(res.emit_s) == len(ref)


def test_online_greedy_commits_each_key_in_the_push_that_completes_it() -> None:
    """Pushing frames one at a time, a key is returned by the push of its first frame."""
    cs = charset()
    labels = cs.str_to_labels("hello")
    lp = simulate_emissions(labels, np.random.default_rng(0), confusion_rate=0, deletion_rate=0, insertion_rate=0)
    dec = OnlineGreedy()
    out = [dec.push(lp[t:t + 1]) for t in range(len(lp))]
    first = [t for t in range(len(lp)) if lp[t].argmax() != cs.blank and (t == 0 or lp[t].argmax() != lp[t - 1].argmax())]
    assert [t for t, o in enumerate(out) if o] == first
    assert sum(out, []) == labels


def _beam(lookahead: int | None = None, beam_threshold: float = 25.0) -> typing.Any:
    try:
        return online_decoder(DecoderConfig(kind="beam", beam_size=8, beam_threshold=beam_threshold), lookahead)
    except ImportError as e:
        pytest.skip(f"native beam decoder unavailable: {e}")


def _beam_emissions(**kw: typing.Any) -> np.ndarray:
    labels = charset().str_to_labels("the cat sat on the mat. the dog ate the food.")
    return simulate_emissions(labels, np.random.default_rng(2), **(kw or {"confusion_rate": 0.3,
                                                                         "margin_nats": (0.0, 1.0)}))


def test_incremental_beam_without_lookahead_equals_offline_beam() -> None:
    """Committed-on-agreement labels + finish() == offline beam search of all frames (ambiguous keys)."""
    from emgscale.decode.beam import NativeBeamDecoder

    lp = _beam_emissions()
    dec = _beam()
    ref = NativeBeamDecoder(None, beam_size=8).decode(lp)
    committed: list[int] = []
    for t in range(0, len(lp), 5):
        committed += dec.push(lp[t:t + 5])
        assert ref[:len(committed)] == committed  # never a label the final answer does not start with
    assert committed + dec.finish() == ref


def test_agreement_commits_early_once_the_beam_prunes_alternatives() -> None:
    """On clear emissions with a tight beam_threshold, half the keys are committed by half-time."""
    lp = _beam_emissions(confusion_rate=0.0, deletion_rate=0.0, insertion_rate=0.0)
    dec = _beam(beam_threshold=3.0)
    committed: list[int] = []
    halfway = 0
    for t in range(0, len(lp), 5):
        committed += dec.push(lp[t:t + 5])
        if t < len(lp) // 2:
            halfway = len(committed)
    final = committed + dec.finish()
    assert final == charset().str_to_labels("the cat sat on the mat. the dog ate the food.")
    assert halfway >= len(final) // 2 - 3


def test_incremental_beam_lookahead_commits_at_least_as_early_and_never_retracts() -> None:
    """With a look-ahead, commits are never fewer than on agreement alone and the output keeps them."""
    lp = _beam_emissions()
    agree, ahead = _beam(), _beam(lookahead=3)
    na = nb = 0
    out: list[int] = []
    for t in range(0, len(lp), 5):
        na += len(agree.push(lp[t:t + 5]))
        new = ahead.push(lp[t:t + 5])
        out += new
        nb += len(new)
        assert nb >= na
    final = out + ahead.finish()
    assert final[:nb] == out and len(final) > 0


# --- latency ------------------------------------------------------------------------------------------
def test_key_latencies_match_decoded_keys_to_presses() -> None:
    """Matched keys give emission - press; unmatched (wrong or missing) keys are left out."""
    lat = key_latencies([1, 2, 3, 4], np.array([0.0, 1.0, 2.0, 3.0]), [1, 9, 3, 4], np.array([0.5, 1.1, 2.2, 3.9]))
    np.testing.assert_allclose(lat, [0.5, 0.2, 0.9])


def test_replay_reports_latency_and_timing(tiny_corpus) -> None:
    """A replay times every chunk, emits after arrival, and reports latency for each matched key."""
    model = tiny("cnn_gru_causal", seed=4)
    path = tiny_corpus.path(tiny_corpus.all_sessions()[1])
    res = replay_session(Streamer(model), str(path), chunk_ms=40.0)
    summary = res.summary()
    assert len(res.chunk_s) == len(res.chunk_cpu_s) == -(-int(res.duration_s * 2000) // 80)
    assert summary["chunk_compute_ms"]["p99"] >= summary["chunk_compute_ms"]["median"] > 0
    assert summary["lookahead_ms"] == pytest.approx(31.5) and summary["buffering_ms"] == pytest.approx(8.0)
    assert len(res.latency_s) == summary["keys_matched"] <= min(len(res.labels), len(res.target))
    assert summary["keys_target"] > 0 and 0 < res.rtf


def test_latency_benchmark_runs_on_tiny_settings(tmp_path) -> None:
    """benchmarks/bench_stream.py --tiny runs end to end for two causal configs and writes every figure."""
    bench = runpy.run_path(str(ROOT / "benchmarks" / "bench_stream.py"), run_name="bench_stream")
    out = bench["main"](["--tiny", "--seconds", "1.5", "--configs", "tds_causal_small,conformer_causal_small",
                         "--json", str(tmp_path / "r.json")])
    assert (tmp_path / "r.json").is_file()
    for name, row in out["models"].items():
        assert row["chunks"] > 0 and row["wall_ms"]["p99"] >= row["wall_ms"]["median"] > 0, name
        assert row["cpu_ms"]["median"] > 0 and row["rtf"] > 0 and row["lookahead_ms"] > 0


# --- export and CLI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tds_rolling", "cnn_gru_causal", "conformer_causal", "s4d", "splash"])
def test_exported_step_gives_the_eager_outputs(name: str, tmp_path) -> None:
    """The torch.export-ed step streams the same log-probs as the eager step, and saves and reloads."""
    model = tiny(name)
    emg = rand_emg(2500)
    ex = export_step(model, units=2)
    assert ex.kind == "torch.export", ex.fallback_reason
    got = stream(Streamer(model, step=ex.module, units_per_step=2), emg, sizes(2500, 80))
    ref = stream(Streamer(model), emg, sizes(2500, 80))
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    path = ex.save(tmp_path / "step.pt2")
    loaded = torch.export.load(str(path)).module()
    args = (torch.from_numpy(emg[:2 * ex.step.unit_samples]), *ex.step.init_state())
    for a, b in zip(loaded(*args), ex.module(*args)):
        torch.testing.assert_close(a, b)


def _checkpoint(tmp_path: Path, name: str) -> Path:
    from emgscale.train import TrainConfig

    model = tiny(name)
    cfg = TrainConfig()
    cfg.model = model_cfg(CAUSAL[name])
    return save_checkpoint(tmp_path / "ck.pt", Checkpoint(model=model.state_dict(), config=to_dict(cfg)))


def test_cli_replays_a_session_and_reports(tiny_corpus, tmp_path, capsys) -> None:
    """python -m emgscale.stream CKPT SESSION prints the report; bad input is one line and exit code 2."""
    from emgscale.stream.__main__ import main

    ck = _checkpoint(tmp_path, "cnn_gru_causal")
    session = tiny_corpus.path(tiny_corpus.all_sessions()[0])
    assert main([str(ck), str(session), "--chunk-ms", "40", "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert '"key_latency_ms"' in out and (tmp_path / "r.json").is_file()
    assert main([str(tmp_path / "missing.pt"), str(session)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m emgscale.stream: error:") and "missing.pt" in err and len(err.splitlines()) == 1
