"""Tests of the synthetic corpus generator: official format, label semantics, determinism, realism
properties (users differ, hands map to bands, amplitude scale, high-pass), splits and layouts."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from emgscale.data import EMGSession, LabelData, charset, load_split
from emgscale.data.charset import BACKSPACE, ENTER, SHIFT
from emgscale.data.splits import read_metadata, session_files
from emgscale.synth import SessionPlan, SynthConfig, generate_corpus, generate_session, make_splits, plan_corpus
from emgscale.synth.__main__ import main as synth_main
from emgscale.synth.keyboard import LEFT, RIGHT, KEY_SHIFT_R, key_place
from emgscale.synth.text import text_to_prompts
from emgscale.synth.typing_model import TypistProfile, type_session

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_METADATA = SHARED / "emg2qwerty-metadata" / "metadata.csv"
OFFICIAL_SPLITS = SHARED / "emg2qwerty-splits"
T0 = 1_620_000_000.0
FS = 2000.0


def _small_cfg(out: Path, **kw) -> SynthConfig:
    base = dict(out=str(out), users=3, sessions_per_user=4, minutes=0.35, seed=3, heldout_users=1,
                val_sessions_per_user=1, test_sessions_per_user=1, min_train_sessions_per_user=1,
                contact_artifact_prob=0.0)
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """3 users x 4 sessions of ~21 s, generated with 2 worker processes."""
    out = tmp_path_factory.mktemp("synth")
    cfg = _small_cfg(out, workers=2)
    summary = generate_corpus(cfg)
    return cfg, summary


def _plan(seconds: float = 8.0, user: str = "12345678", index: int = 0) -> SessionPlan:
    return SessionPlan(user=user, session=f"2021-05-03-{int(T0)}-keystrokes-dca-study@1-x{index}", session_index=index,
                       start_s=T0, duration_s=seconds)


def _apply_backspaces(label: str) -> str:
    out: list[str] = []
    for c in label:
        if c == BACKSPACE:
            if out:
                out.pop()
        elif c != SHIFT:
            out.append(c)
    return "".join(out)


def _press_windows(emg: np.ndarray, t: np.ndarray, keys: list[dict], pre_s: float = 0.12, post_s: float = 0.08):
    """(key, (samples, 2, 16)) around each press that fits in the recording."""
    out = []
    for k in keys:
        i = int(round((k["start"] - t[0]) * FS))
        a, b = i - int(pre_s * FS), i + int(post_s * FS)
        if a >= 0 and b <= len(emg):
            out.append((k["key"], emg[a:b]))
    return out


def test_session_reads_back_in_official_format(corpus):
    """Every file reads through EMGSession: float32 (T,2,16), float64 increasing time, official attributes,
    sorted in-vocabulary keystrokes, text prompts; the label equals the generator's own expected label."""
    cfg, summary = corpus
    files = session_files(cfg.out)
    assert len(files) == summary.sessions == 12
    plans = {p.session: p for p in plan_corpus(cfg)}
    cs = charset()
    for path in files[:3]:
        with EMGSession(path) as s:
            emg, t = s.emg(), s.time()
            assert emg.dtype == np.float32 and emg.shape == (len(s), 2, 16)
            assert t.dtype == np.float64 and np.all(np.diff(t) > 0)
            assert abs(s.sample_rate_hz - FS) < 1e-3
            assert set(s.metadata) >= {"session_name", "user", "condition", "duration_mins", "keystrokes", "prompts"}
            assert s.condition == "on_keyboard" and s.session_name == path.stem
            starts = [k["start"] for k in s.keystrokes]
            assert starts == sorted(starts) and t[0] < starts[0] and starts[-1] < t[-1]
            assert all(k["end"] >= k["start"] for k in s.keystrokes)
            assert all(k["key"] in cs or k["key"] == KEY_SHIFT_R for k in s.keystrokes)
            assert s.prompts and all(p["name"] == "text_prompt" and p["payload"]["text"] for p in s.prompts)
            expected = generate_session(plans[s.session_name], cfg.seed, cfg.text)
            assert s.ground_truth().text == expected.label_text
            assert np.array_equal(emg, expected.emg)  # written by a worker process = generated alone


def test_label_keeps_typos_backspaces_and_drops_right_shift():
    """The reference label of a typed session keeps typos and ⌫, has ⇧ only for left shift, ⏎ per prompt;
    applying the backspaces recovers exactly the finished prompts (every typo corrected)."""
    prompts = ["The quick brown fox.", "Jumps over Rex, the lazy dog!", "Zebras Quietly Wander"]
    profile = TypistProfile(typo_rate=0.3, uncorrected_prob=0.0, shift_r_prob=1.0)
    seq = prompts * 10
    typed = type_session(seq, profile, np.random.default_rng(1), T0, T0 + 60.0)
    label = LabelData.from_keystrokes(typed.keystrokes)
    assert label.text == typed.label_text
    assert BACKSPACE in label.text and ENTER in label.text
    keys = [k["key"] for k in typed.keystrokes]
    assert KEY_SHIFT_R in keys and "Key.shift" in keys
    # Right shift (before left-hand capitals T, R, Z, Q, W) is dropped; left shift (J, !) becomes ⇧.
    assert label.text.count(SHIFT) == keys.count("Key.shift") < sum(c.isupper() or c == "!" for c in "".join(seq))
    n_done = label.text.count(ENTER)
    assert n_done >= 3 and len(typed.prompts) in (n_done, n_done + 1)  # the last one may be cut by the end
    assert n_done < len(seq)
    done_text = ENTER.join(seq[:n_done]) + ENTER
    edited = _apply_backspaces(label.text)
    assert edited.startswith(done_text) and len(edited) - len(done_text) <= len(seq[n_done])


def test_same_seed_same_bytes_different_seed_differs():
    """A session is a pure function of (seed, user, session index): same seed -> identical EMG and keys."""
    a, b = generate_session(_plan(), seed=7), generate_session(_plan(), seed=7)
    assert a.emg.tobytes() == b.emg.tobytes() and a.keystrokes == b.keystrokes and a.prompts == b.prompts
    c = generate_session(_plan(), seed=8)
    d = generate_session(_plan(index=1), seed=7)
    assert not np.array_equal(a.emg, c.emg) and not np.array_equal(a.emg, d.emg)


def test_left_hand_keys_drive_the_left_band():
    """Presses of left-hand keys carry more left-band than right-band energy, and vice versa."""
    s = generate_session(_plan(seconds=40.0), seed=1)
    ratios = {LEFT: [], RIGHT: []}
    for key, w in _press_windows(s.emg, s.time, s.keystrokes):
        if key.startswith("Key."):
            continue
        energy = (w.astype(np.float64) ** 2).mean(axis=(0, 2))
        ratios[key_place(key).hand].append(np.log(energy[0] / energy[1]))
    assert len(ratios[LEFT]) > 20 and len(ratios[RIGHT]) > 20
    assert np.median(ratios[LEFT]) > 0.5 and np.median(ratios[RIGHT]) < -0.5


def _key_features(s) -> tuple[np.ndarray, np.ndarray]:
    """Log-RMS of 4 sub-windows x 32 electrodes around each non-special press, and the keys."""
    feats, keys = [], []
    for key, w in _press_windows(s.emg, s.time, s.keystrokes, pre_s=0.15, post_s=0.05):
        if not key.startswith("Key."):
            feats.append(np.log((w.astype(np.float64).reshape(4, -1, 32) ** 2).mean(1) + 1.0).ravel())
            keys.append(key.lower())
    return np.array(feats), np.array(keys)


def _ridge_fit_score(train, tests, n_classes: int = 10) -> list[float]:
    x, y = train
    classes = np.array([k for k, _ in Counter(y.tolist()).most_common(n_classes)])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    m = np.isin(y, classes)
    a = np.c_[(x[m] - mu) / sd, np.ones(m.sum())]
    w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ (y[m, None] == classes[None]).astype(float))
    scores = []
    for xt, yt in tests:
        mt = np.isin(yt, classes)
        pred = classes[np.argmax(np.c_[(xt[mt] - mu) / sd, np.ones(mt.sum())] @ w, axis=1)]
        scores.append(float(np.mean(pred == yt[mt])))
    return scores


def test_key_decoder_transfers_across_sessions_better_than_across_users():
    """A key classifier trained on one session of a user scores clearly higher on that user's other session
    than on another user's session (anatomy differs per user; sessions only by placement and gains)."""
    feats = {(u, i): _key_features(generate_session(_plan(60.0, user=u, index=i), seed=1))
             for u in ("11111111", "22222222") for i in (0, 1)}
    for me, other in (("11111111", "22222222"), ("22222222", "11111111")):
        same_user, other_user = _ridge_fit_score(feats[(me, 0)], [feats[(me, 1)], feats[(other, 0)]])
        assert same_user > other_user + 0.1 and same_user > 0.3, (same_user, other_user)


def test_amplitude_scale_and_highpass():
    """Microvolt-like scale (quiet floor a few units, bursts tens to hundreds) and a 20 Hz high-pass."""
    s = generate_session(_plan(seconds=20.0), seed=2)
    x = s.emg.astype(np.float64)
    rms_100ms = np.sqrt((x[: len(x) // 200 * 200].reshape(-1, 200, 32) ** 2).mean(1)).max(1)
    assert 1.0 < np.percentile(rms_100ms, 5) < 15.0
    assert 20.0 < np.percentile(rms_100ms, 99) < 500.0
    psd = np.abs(np.fft.rfft(x.reshape(len(x), -1), axis=0)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / FS)
    assert psd[(f > 0.5) & (f < 8)].mean() < 0.01 * psd[(f > 80) & (f < 200)].mean()


def test_splits_follow_official_rules_and_resolve(corpus):
    """Split files parse, resolve against the corpus, keep held-out users out of generic train/val, and
    generic test is the union of the personalized tests; metadata.csv lists every file."""
    cfg, summary = corpus
    root = Path(cfg.out)
    names = sorted(p.stem for p in (root / "splits").glob("*.yaml"))
    assert names == ["generic", "single_user", "user0"]
    splits = {n: load_split(root / "splits" / f"{n}.yaml") for n in names}
    for split in splits.values():
        for part in ("train", "val", "test"):
            assert split.resolve(root, part)
    held = summary.heldout_users
    assert splits["user0"].users() == held
    assert not set(held) & set(splits["generic"].users("train") + splits["generic"].users("val"))
    assert splits["generic"]["test"] == splits["user0"]["test"]
    single = splits["single_user"]
    assert len(single.users()) == 1 and single.users()[0] not in held
    assert (len(single["val"]), len(single["test"]), len(single["train"])) == (1, 1, 2)
    rows = read_metadata(root)
    assert sorted(r.session for r in rows) == sorted(p.stem for p in session_files(root))
    assert summary.splits["generic"] == {p: len(splits["generic"][p]) for p in ("train", "val", "test")}


def test_tagged_users_are_not_held_out_and_too_many_raises(tmp_path):
    """Users with quality-check tags are never held out; asking for more held-out users than qualify fails."""
    cfg = _small_cfg(tmp_path, users=6, contact_artifact_prob=0.2, heldout_users=2)
    plans = plan_corpus(cfg)
    tagged = {p.user for p in plans if p.quality_check_tags}
    assert 0 < len(tagged) <= 4
    _, held, _ = make_splits(plans, cfg)
    assert len(held) == 2 and not set(held) & tagged
    with pytest.raises(ValueError, match="held-out"):
        make_splits(plans, _small_cfg(tmp_path, users=6, contact_artifact_prob=0.2, heldout_users=7 - len(tagged)))


@pytest.mark.skipif(not REAL_METADATA.is_file(), reason="real metadata.csv not available (needs ../shared)")
def test_layout_reproduces_real_dataset_shape():
    """--layout with the real metadata.csv plans 108 users / 1,135 sessions with their QC tags and relative
    lengths, and its splits have the official sizes (generic 837/192/16, course subject 16/1/1)."""
    cfg = SynthConfig(layout=str(REAL_METADATA), minutes=0.1)
    plans = plan_corpus(cfg)
    real = read_metadata(REAL_METADATA)
    assert len(plans) == len(real) == 1135 and len({p.user for p in plans}) == 108
    by_name = {r.session: r for r in real}
    assert all(list(p.quality_check_tags) == by_name[p.session].quality_check_tags for p in plans)
    durations = np.array([p.duration_s for p in plans])
    assert abs(durations.mean() - 6.0) < 0.05
    real_mins = np.array([by_name[p.session].duration_mins for p in plans])
    assert np.corrcoef(durations, real_mins)[0, 1] > 0.99
    splits, held, single = make_splits(plans, cfg)
    assert len(held) == 8 and single == "89335547"
    assert {k: len(splits["generic"][k]) for k in ("train", "val", "test")} == {"train": 837, "val": 192, "test": 16}
    tagged = {p.user for p in plans if p.quality_check_tags}
    assert not set(held) & tagged
    if OFFICIAL_SPLITS.is_dir():  # the official split files name sessions of the layout-named corpus
        names = {p.session for p in plans}
        official = load_split(OFFICIAL_SPLITS / "generic.yaml")
        assert all(r.session in names for part in ("train", "val", "test") for r in official[part])


def test_layout_corpus_end_to_end(tmp_path):
    """A corpus from a small layout CSV has its users, sessions, tags and relative lengths; fresh names work."""
    layout = tmp_path / "layout.csv"
    rows = [("71409769", "2020-08-13-1597363426-keystrokes-71409769", 10.0, "[]"),
            ("71409769", "2020-08-14-1597444340-keystrokes-71409769", 20.0, "[]"),
            ("9456349", "2020-08-13-1597354281-keystrokes", 15.0, "['contact artifact']"),
            ("9456349", "2020-08-13-1597355141-keystrokes", 15.0, "['contact artifact']"),
            ("9456349", "2020-08-14-1597355141-keystrokes", 15.0, "[]")]
    with layout.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "session", "condition", "duration_mins", "num_keystrokes", "num_prompts",
                    "quality_check_tags"])
        for u, s, d, tags in rows:
            w.writerow([u, s, "on_keyboard", d, 100, 10, tags])
    cfg = SynthConfig(out=str(tmp_path / "out"), layout=str(layout), minutes=0.1, heldout_users=0, seed=1)
    summary = generate_corpus(cfg)
    written = {r.session: r for r in read_metadata(cfg.out)}
    assert set(written) == {s for _, s, _, _ in rows} and summary.users == 2
    assert written[rows[2][1]].quality_check_tags == ["contact artifact"]
    ratio = written[rows[1][1]].duration_mins / written[rows[0][1]].duration_mins
    assert abs(ratio - 2.0) < 0.01
    assert abs(np.mean([r.duration_mins for r in written.values()]) - 0.1) < 0.002
    fresh = plan_corpus(SynthConfig(layout=str(layout), minutes=0.1, layout_names=False))
    assert not {p.session for p in fresh} & set(written) and len(fresh) == 5
    assert all(len(p.user) == 8 and "-keystrokes-dca-study@1-" in p.session for p in fresh)


def test_cli_writes_corpus_and_rejects_bad_options(tmp_path, capsys):
    """The CLI generates a corpus and prints a summary; an unknown key=value or bad value exits with 2."""
    out = tmp_path / "cli"
    text = tmp_path / "text.txt"
    text.write_text("Caf\u00e9 society met at noon.\n\nAnother paragraph, with a comma; and more words here.\n")
    code = synth_main(["--out", str(out), "--users", "2", "--sessions-per-user", "3", "--minutes", "0.1",
                       "--heldout-users", "1", "--text", str(text), "val_sessions_per_user=1",
                       "test_sessions_per_user=1", "min_train_sessions_per_user=1", "contact_artifact_prob=0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "6 sessions of 2 users" in printed and "splits/generic.yaml" in printed
    typed = "".join(p["payload"]["text"] for f in session_files(out) for p in EMGSession(f).prompts)
    assert "Cafe society" in typed or "Another paragraph" in typed
    assert synth_main(["--out", str(out), "no_such_key=1"]) == 2
    assert synth_main(["--out", str(out), "--minutes", "-1"]) == 2


def test_text_to_prompts_cuts_and_cleans():
    """Prompts are typable ASCII, at most max_chars (bar single long words), sentences cut at clauses."""
    text = ("\u201cWell,\u201d said he\u2014calmly. " * 3 + "\n\n" + "A very long sentence, which goes on and on "
            "with many words; it never seems to end, and yet it must, eventually, like all things do.")
    prompts = text_to_prompts(text, max_chars=30)
    assert prompts and all(len(p) <= 30 for p in prompts)
    assert all(all(" " <= c <= "~" for c in p) for p in prompts)
    assert prompts[0] == '"Well," said he-calmly.'


def test_existing_foreign_sessions_are_refused(tmp_path):
    """generate_corpus refuses an output directory holding session files of another corpus."""
    (tmp_path / "2020-01-01-1577836800-keystrokes-other.hdf5").write_bytes(b"")
    with pytest.raises(ValueError, match="empty directory"):
        generate_corpus(_small_cfg(tmp_path))


def test_benchmark_script_runs_on_tiny_settings():
    """benchmarks/bench_synth.py runs end to end and reports speed, size and the realism accuracies."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_synth.py"
    spec = importlib.util.spec_from_file_location("bench_synth", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--minutes", "0.1", "--sessions", "1", "--users", "3", "--realism-sessions", "2",
                      "--realism-minutes", "0.3"])
    assert out["speed"]["generate_x_real_time"] > 0 and 900 < out["speed"]["mb_per_hour_on_disk"] < 1100
    assert set(out["realism"]) >= {"same_sessions", "unseen_sessions_same_users", "unseen_users"}


def test_ensure_corpus_reuses_a_finished_corpus_only(tmp_path):
    """ensure_corpus generates once per config: a finished corpus is reused, one without its summary is made again."""
    from emgscale.synth import SynthConfig, ensure_corpus

    cfg = SynthConfig(out=str(tmp_path / "c"), users=3, sessions_per_user=3, minutes=0.05, heldout_users=0)
    root = ensure_corpus(cfg)
    summary = root / "synth_summary.json"
    stamp = summary.stat().st_mtime_ns
    assert ensure_corpus(cfg) == root and summary.stat().st_mtime_ns == stamp
    summary.unlink()  # as if generation had been killed before its last write
    ensure_corpus(cfg)
    assert summary.is_file() and summary.stat().st_mtime_ns != stamp
