"""CTC decoders (emgscale.decode): greedy, native backspace-aware beam search, its Python reference,
and the flashlight-text wrapper."""

import sys

import numpy as np
import pytest
import torch

from emgscale.config import from_dict
from emgscale.data.charset import charset
from emgscale.decode import DecoderConfig, build_decoder, greedy_decode, greedy_decode_batch
from emgscale.decode.simulate import add_typos, simulate_emissions
from emgscale.lm.build import find_kenlm_tool
from emgscale.metrics import cer

CS = charset()
BLANK, C = CS.blank, CS.num_classes
BKSP, SHIFT, ENTER = CS.backspace_label, CS.char_to_label("\u21e7"), CS.char_to_label("\u23ce")
TEXT = ("the cat sat on the mat. the dog sat on the log. then the other cat ate the food.\n"
        "The three of them thought that the weather was hot.\n") * 8


def L(text: str) -> list[int]:
    return CS.str_to_labels(text)


def emissions(keys: list[dict[int, float]], gap: int = 2) -> np.ndarray:
    """(T, 99) log-probs: per key one frame with the given label probabilities, then `gap` blank frames."""
    rows = []
    for probs in keys:
        for p in [probs] + [{BLANK: 0.98}] * gap:
            row = np.full(C, (1.0 - sum(p.values())) / (C - len(p)))
            for k, v in p.items():
                row[k] = v
            rows.append(np.log(row))
    return np.asarray(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory):
    """A 4-gram character LM of TEXT, built with KenLM's lmplz (skips when it is not built)."""
    try:
        find_kenlm_tool("lmplz")
        find_kenlm_tool("build_binary")
    except FileNotFoundError:
        pytest.skip("KenLM lmplz/build_binary not built (run scripts/build_kenlm.sh)")
    from emgscale.lm import build_lm

    d = tmp_path_factory.mktemp("lm")
    (d / "text.txt").write_text(TEXT)
    return str(build_lm([d / "text.txt"], d / "char4.bin", order=4))


def _decoder(kind: str, **kw):
    try:
        return build_decoder(DecoderConfig(kind=kind, **kw))
    except ImportError as e:
        pytest.skip(f"decoder kind {kind!r} unavailable: {e}")


# --- greedy ---------------------------------------------------------------------------------------
def test_greedy_collapses_repeats_and_drops_blanks():
    """argmax path a a _ a b b _ c -> a a b c; a blank separates repeated keys."""
    a, b, c = L("abc")
    path = [a, a, BLANK, a, b, b, BLANK, c]
    lp = np.log(np.full((len(path), C), 1e-3, dtype=np.float32))
    lp[np.arange(len(path)), path] = 0.0
    assert greedy_decode(lp) == [a, a, b, c]
    assert greedy_decode(lp, length=3) == [a]
    assert build_decoder(DecoderConfig()).decode(torch.from_numpy(lp)) == [a, a, b, c]


def test_greedy_batch_matches_single_and_respects_lengths():
    """Vectorised batch decoding equals per-item decoding on the valid frames (padding ignored)."""
    rng = np.random.default_rng(0)
    lp = rng.normal(size=(4, 30, C)).astype(np.float32)
    lp[:, :, BLANK] += 1.0
    lengths = np.array([30, 0, 17, 1])
    want = [greedy_decode(lp[i], int(n)) for i, n in enumerate(lengths)]
    assert greedy_decode_batch(lp, lengths) == want
    assert build_decoder(DecoderConfig()).decode_batch(torch.from_numpy(lp), torch.from_numpy(lengths)) == want


def test_simulated_emissions_decode_to_their_text_without_errors():
    """simulate_emissions with no confusions/deletions/insertions greedy-decodes to the typed labels."""
    labels = L("Hello, world\u23ce")
    lp = simulate_emissions(labels, np.random.default_rng(1), confusion_rate=0, deletion_rate=0, insertion_rate=0)
    assert np.allclose(np.exp(lp).sum(1), 1.0, atol=1e-4)
    assert greedy_decode(lp) == labels


# --- beam search with an LM -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["beam", "python", "flashlight"])
def test_lm_flips_an_ambiguous_key_toward_likely_text(lm_path, kind):
    """'th' + (r 0.5 / e 0.4) + ' cat': greedy says 'thr cat', every LM beam decoder says 'the cat'."""
    r, e = L("re")
    lp = emissions([{k: 0.9} for k in L("th")] + [{r: 0.5, e: 0.4}] + [{k: 0.9} for k in L(" cat")])
    assert greedy_decode(lp) == L("thr cat")
    assert _decoder(kind, lm_path=lm_path, beam_size=8).decode(lp) == L("the cat")
    assert _decoder(kind, lm_path=None, beam_size=8).decode(lp) == L("thr cat")  # no LM: acoustics win


@pytest.mark.parametrize("kind", ["beam", "python"])
def test_backspace_is_scored_as_the_edited_text(lm_path, kind):
    """The LM+bonus score of 'ab⌫c' equals that of 'ac' (and of KenLM on 'a c'); ⇧ adds nothing."""
    kenlm = pytest.importorskip("kenlm", reason="kenlm Python module not installed")
    dec = _decoder(kind, lm_path=lm_path, lm_weight=1.5, insertion_bonus=0.7)
    assert dec.score_labels(L("ab\u232bc")) == pytest.approx(dec.score_labels(L("ac")), abs=1e-9)
    assert dec.score_labels(L("ab\u232bc")) != pytest.approx(dec.score_labels(L("abc")))
    assert dec.score_labels(L("\u21e7The cat")) == pytest.approx(dec.score_labels(L("The cat")), abs=1e-9)
    assert dec.score_labels(L("the\u23ce\u232b cat")) == pytest.approx(dec.score_labels(L("the cat")), abs=1e-9)
    assert dec.score_labels([BKSP, BKSP] + L("a")) == pytest.approx(dec.score_labels(L("a")), abs=1e-9)
    m = kenlm.Model(lm_path)
    want = 1.5 * m.score("a <sp> c a t", bos=True, eos=True) + 0.7 * 5
    assert dec.score_labels(L("a dog\u232b\u232b\u232bcat")) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("kind", ["beam", "python"])
def test_lm_context_after_backspace_is_the_edited_text(lm_path, kind):
    """After 'thq⌫' the LM context is 'th', so the ambiguous key is decoded as 'e'; ⌫ stays in the output."""
    r, e = L("re")
    keys = L("thq") + [BKSP]
    lp = emissions([{k: 0.9} for k in keys] + [{r: 0.5, e: 0.4}] + [{k: 0.9} for k in L(" cat")])
    assert _decoder(kind, lm_path=lm_path, beam_size=8).decode(lp) == keys + L("e cat")


@pytest.mark.parametrize("kind", ["beam", "python"])
def test_reference_style_word_lm_treats_unknown_keys_as_word_boundaries(lm_path, kind, tmp_path):
    """With an LM of lowercase words (the reference's), space, ' and capitals end a word: a text scores
    as the sum of its words' sentence scores (+ <unk> for a capital at a word start), as in the reference."""
    kenlm = pytest.importorskip("kenlm", reason="kenlm Python module not installed")
    from emgscale.lm import build_lm

    words = [w for w in TEXT.lower().replace(".", " ").split()]
    (tmp_path / "words.txt").write_text("\n".join(words))
    wlm = str(build_lm([tmp_path / "words.txt"], tmp_path / "words.arpa", order=3))
    dec = _decoder(kind, lm_path=wlm, lm_weight=1.0, insertion_bonus=0.0)
    m = kenlm.Model(wlm)
    unk = m.score("<unk>", bos=False, eos=False)  # an unknown key at a word start: the <unk> unigram
    want = sum(m.score(" ".join(w), bos=True, eos=True) for w in ["the", "cat", "t", "e", "og"]) + 2 * unk
    assert dec.score_labels(L("the cat't ⇧He Dog")) == pytest.approx(want, abs=1e-4)


def _random_case(rng, T):
    kind = rng.integers(3)
    if kind == 0:
        x = rng.normal(0, 2, size=(T, C))
    elif kind == 1:  # peaky, full of special keys
        labs = list(rng.choice(L("ae t") + [BKSP, SHIFT, ENTER], size=max(1, T // 3)))
        return simulate_emissions(labs, rng, gap_frames=(1, 3))
    else:
        x = rng.normal(0, 4, size=(T, C))
        x[:, BKSP] += 3
        x[:, BLANK] += 2
    x = x - np.log(np.exp(x).sum(1, keepdims=True))
    return x.astype(np.float32)


def test_native_beam_equals_python_reference(lm_path):
    """On small random cases the C++ search returns the same n-best labels and scores as the Python one."""
    pytest.importorskip("kenlm", reason="kenlm Python module not installed")
    from emgscale.decode.reference import PythonBeamDecoder

    try:
        from emgscale.decode.beam import NativeBeamDecoder, load_extension

        load_extension()
    except ImportError as e:
        pytest.skip(str(e))
    rng = np.random.default_rng(7)
    for trial in range(16):
        lp = _random_case(rng, int(rng.integers(4, 30)))
        kw = dict(lm_path=lm_path if trial % 4 else None, beam_size=int(rng.integers(1, 10)),
                  beam_threshold=float(rng.choice([0, 6, 25])), label_threshold=float(rng.choice([0, 4])),
                  max_labels=int(rng.choice([0, 6])), lm_weight=float(rng.uniform(0, 3)),
                  insertion_bonus=float(rng.uniform(-1, 3)))
        native = NativeBeamDecoder(**kw, gc_min_nodes=int(rng.integers(1, 6))).nbest(lp, None, 3)
        ref = PythonBeamDecoder(**kw).nbest(lp, None, 3)
        assert [lab for lab, _ in native] == [lab for lab, _ in ref], (trial, kw)
        np.testing.assert_allclose([s for _, s in native], [s for _, s in ref], rtol=0, atol=1e-6)


def test_native_beam_equals_python_reference_on_simulated_typing(lm_path):
    """On peaky typing with corrected typos (where most extensions are dropped by the exact cutoff
    before or after their LM score), the C++ n-best equals the Python search's."""
    pytest.importorskip("kenlm", reason="kenlm Python module not installed")
    from emgscale.decode.reference import PythonBeamDecoder

    try:
        from emgscale.decode.beam import NativeBeamDecoder, load_extension

        load_extension()
    except ImportError as e:
        pytest.skip(str(e))
    rng = np.random.default_rng(11)
    labels = add_typos(L("the cat sat on the mat.\u23cethe dog ate the food"), rng, rate=0.2)
    lp = simulate_emissions(labels, rng, gap_frames=(1, 4), confusion_rate=0.3, margin_nats=(0.0, 1.5))
    for beam_size, threshold in [(8, 25.0), (3, 0.0)]:
        kw = dict(lm_path=lm_path, beam_size=beam_size, beam_threshold=threshold)
        native = NativeBeamDecoder(**kw).nbest(lp, None, 3)
        ref = PythonBeamDecoder(**kw).nbest(lp, None, 3)
        assert [lab for lab, _ in native] == [lab for lab, _ in ref], kw
        np.testing.assert_allclose([s for _, s in native], [s for _, s in ref], rtol=0, atol=1e-6)


def test_native_beam_lm_cache_size_does_not_change_the_result(lm_path):
    """A long input decoded with a tiny LM-step cache and frequent trie collection gives the same
    n-best labels and scores as with the default sizes (dropped cache entries are scored again)."""
    try:
        from emgscale.decode.beam import NativeBeamDecoder
    except ImportError as e:
        pytest.skip(str(e))
    rng = np.random.default_rng(5)
    lp = simulate_emissions(add_typos(L(TEXT[:400]), rng, rate=0.1), rng, gap_frames=(1, 6))
    try:
        want = NativeBeamDecoder(lm_path, beam_size=16).nbest(lp, None, 4)
    except ImportError as e:
        pytest.skip(str(e))
    for gc_min_nodes in (2, 37, 256):
        got = NativeBeamDecoder(lm_path, beam_size=16, gc_min_nodes=gc_min_nodes).nbest(lp, None, 4)
        assert [lab for lab, _ in got] == [lab for lab, _ in want], gc_min_nodes
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-9)


def test_beam_batch_threads_and_padding(lm_path):
    """decode_batch (1 or 2 threads, padded, torch input) equals decoding each item alone."""
    dec1 = _decoder("beam", lm_path=lm_path, beam_size=10)
    dec2 = _decoder("beam", lm_path=lm_path, beam_size=10, num_threads=2)
    rng = np.random.default_rng(3)
    items = [simulate_emissions(L(s), rng) for s in ["the cat", "a dog sat", "", "hot"]]
    T = max(len(x) for x in items)
    batch = np.zeros((len(items), T, C), dtype=np.float32)
    for i, x in enumerate(items):
        batch[i, : len(x)] = x
    lengths = [len(x) for x in items]
    want = [dec1.decode(x) for x in items]
    assert dec1.decode_batch(batch, lengths) == want
    assert dec2.decode_batch(torch.from_numpy(batch), torch.tensor(lengths)) == want


@pytest.mark.parametrize("kind", ["beam", "greedy"])
def test_decode_many_equals_decoding_each_session_alone(lm_path, kind):
    """decode_many (sessions of different lengths, numpy or torch, 1 or 3 threads) equals decode of each."""
    rng = np.random.default_rng(4)
    sessions = [simulate_emissions(L(s), rng) for s in ["the cat sat", "", "a dog", "hot food on the mat"]]
    sessions[1] = sessions[1][:0]  # an empty session
    kw = dict(lm_path=lm_path, beam_size=10) if kind == "beam" else {}
    dec = _decoder(kind, **kw)
    want = [dec.decode(x) for x in sessions]
    assert dec.decode_many(sessions) == want
    assert dec.decode_many([torch.from_numpy(x) for x in sessions]) == want
    assert dec.decode_many([]) == []
    if kind == "beam":
        assert dec.decode_many(sessions, num_threads=3) == want
        with pytest.raises(ValueError, match="shape"):
            dec.decode_many([sessions[0][:, :5]])


def test_beam_with_lm_beats_greedy_on_simulated_typing(lm_path):
    """On noisy simulated emissions of in-domain text, beam + LM has a lower CER than greedy."""
    rng = np.random.default_rng(5)
    targets = [L(s) for s in TEXT.splitlines()[:2]]
    lps = [simulate_emissions(t, rng, confusion_rate=0.3) for t in targets]
    beam = _decoder("beam", lm_path=lm_path)
    greedy_cer = cer([greedy_decode(x) for x in lps], targets)
    beam_cer = cer([beam.decode(x) for x in lps], targets)
    assert beam_cer < greedy_cer * 0.7, (beam_cer, greedy_cer)


def test_impossible_frames_and_bad_input():
    """A frame of -inf log-probs gives an empty result, not a crash; wrong shapes, NaN and lengths raise."""
    dec = _decoder("beam", beam_size=4)
    lp = emissions([{0: 0.9}])
    lp[1] = -np.inf
    assert dec.decode(lp) == []
    with pytest.raises(ValueError, match="shape"):
        dec.decode(np.zeros((5, 98), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        dec.decode(np.full((5, C), np.nan, np.float32))
    with pytest.raises(ValueError, match="length"):
        dec.decode(lp, length=len(lp) + 1)
    with pytest.raises(FileNotFoundError):
        build_decoder(DecoderConfig(kind="beam", lm_path="/nonexistent/lm.bin"))


def test_config_validation_and_round_trip():
    """DecoderConfig comes from plain dicts (CLI/YAML) and rejects unknown kinds."""
    cfg = from_dict(DecoderConfig, {"kind": "beam", "beam_size": "10", "lm_weight": 1})
    assert (cfg.kind, cfg.beam_size, cfg.lm_weight) == ("beam", 10, 1.0)
    with pytest.raises(ValueError, match="not one of"):
        DecoderConfig(kind="viterbi")


# --- optional dependencies ------------------------------------------------------------------------
def test_missing_optional_dependencies_say_what_to_install(tmp_path, monkeypatch):
    """Each LM decoder's import error names the install command or build script."""
    import emgscale.decode.beam as beam

    for mod in ["kenlm", "flashlight", "flashlight.lib", "flashlight.lib.text", "flashlight.lib.text.decoder",
                "flashlight.lib.text.decoder.kenlm", "flashlight.lib.text.dictionary"]:
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match=r"pip install 'emgscale\[lm\]'"):
        build_decoder(DecoderConfig(kind="python", lm_path=str(tmp_path)))
    with pytest.raises(ImportError, match=r"pip install 'emgscale\[lm\]'"):
        build_decoder(DecoderConfig(kind="flashlight"))
    monkeypatch.setattr(beam, "_ext", None)
    monkeypatch.setenv("EMGSCALE_KENLM_DIR", str(tmp_path))
    with pytest.raises(ImportError, match="build_kenlm.sh"):
        build_decoder(DecoderConfig(kind="beam"))


def test_benchmark_script_runs_quick(lm_path, tmp_path):
    """benchmarks/bench_decode.py --quick runs end to end and native == Python reference on its input."""
    import json
    import runpy
    from pathlib import Path

    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py"),
                           run_name="bench_decode")
    (tmp_path / "prompts.txt").write_text(TEXT.replace("\n", "\n\n"))
    out = tmp_path / "r.json"
    assert bench["main"](["--quick", "--lm", lm_path, "--text", str(tmp_path / "prompts.txt"),
                          "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {r["decoder"] for r in result["rows"]} >= {"greedy", "beam (native)"}
    assert all(result["checks"].values())
