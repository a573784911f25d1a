"""Tests of the real-format data layer: charset, labels, session reader, splits, info CLI, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from emgscale.data import DataError, EMGSession, LabelData, WindowSpec, charset, load_split, read_window
from emgscale.data.__main__ import main as data_main
from emgscale.data.splits import Split, SessionRef, read_metadata
from emgscale.data.writer import TIMESERIES_DTYPE, write_session_file

SPLITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "emg2qwerty-splits"
METADATA = Path(__file__).resolve().parents[2] / "shared" / "emg2qwerty-metadata" / "metadata.csv"
T0 = 1_600_000_000.0


def _keys(*pairs: tuple[str, float]) -> list[dict]:
    return [{"key": k, "start": T0 + t, "end": T0 + t + 0.05} for k, t in pairs]


def _write(path: Path, seconds: float = 3.0, keystrokes: list[dict] | None = None, **kw) -> Path:
    n = int(seconds * 2000)
    rng = np.random.default_rng(0)
    emg = rng.normal(0, 5, size=(n, 2, 16)).astype(np.float32)
    t = T0 + np.arange(n) / 2000.0
    ks = keystrokes if keystrokes is not None else _keys(("h", 0.5), ("i", 1.0), ("Key.space", 1.5), ("Key.shift", 2.0), ("A", 2.1))
    return write_session_file(path, emg, t, session_name=path.stem, user="123", keystrokes=ks, **kw)


def test_charset_matches_reference_order():
    """Labels follow the reference: a=0, A=26, 0=52, '!'=62, backspace 94, enter 95, space 96, shift 97, blank 98."""
    cs = charset()
    assert (cs.char_to_label("a"), cs.char_to_label("A"), cs.char_to_label("0"), cs.char_to_label("!")) == (0, 26, 52, 62)
    assert [cs.char_to_label(c) for c in "⌫⏎ ⇧"] == [94, 95, 96, 97]
    assert cs.char_to_label("`") == 62 + 27 and cs.char_to_label("~") == 93
    assert cs.blank == 98 and cs.num_classes == 99 and len(cs) == 98


def test_keystrokes_to_labels_semantics():
    """Shift, backspace, space, enter map to glyphs; right shift, tab and unknown keys are dropped; é -> e."""
    ks = _keys(("Key.shift", 0), ("H", 0.1), ("i", 0.2), ("Key.space", 0.3), ("x", 0.4), ("Key.backspace", 0.5),
               ("Key.shift_r", 0.6), ("B", 0.7), ("Key.tab", 0.8), ("é", 0.9), ("Key.enter", 1.0), ("Key.ctrl", 1.1),
               ("'a'", 1.2), ("\n", 1.3))
    label = LabelData.from_keystrokes(ks)
    assert label.text == "⇧Hi x⌫Be⏎⏎"
    np.testing.assert_allclose(label.timestamps - T0, [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0, 1.3], atol=1e-6)
    assert list(label.labels[:3]) == [97, 33, 8]


def test_keystroke_window_bounds_are_inclusive_on_press_time():
    """Only presses with start_t <= start <= end_t count, both bounds inclusive."""
    ks = _keys(("a", 0), ("b", 1), ("c", 2), ("d", 3))
    assert LabelData.from_keystrokes(ks, T0 + 1, T0 + 2).text == "bc"
    assert LabelData.from_keystrokes(ks, T0 + 1.0001, T0 + 2.9999).text == "c"


def test_prompt_labels_end_in_enter():
    """Prompt labels are cleaned text, each prompt ending in ⏎; null payloads add nothing."""
    prompts = [{"name": "text_prompt", "start": 1, "end": 2, "payload": {"text": "Hi “you”"}},
               {"name": "text_prompt", "start": 3, "end": 4, "payload": None},
               {"name": "text_prompt", "start": 5, "end": 6, "payload": {"text": "ok⏎"}}]
    assert LabelData.from_prompts(prompts).text == 'Hi "you"⏎ok⏎'


def test_session_reads_back(tmp_path):
    """A written session reads back with float32 (T, 2, 16) EMG, float64 time, attributes and labels."""
    p = _write(tmp_path / "s1.hdf5")
    with EMGSession(p) as s:
        assert len(s) == 6000 and s.user == "123" and s.condition == "on_keyboard"
        emg, t = s.window(100, 300)
        assert emg.dtype == np.float32 and emg.shape == (200, 2, 16) and t.dtype == np.float64
        assert s.ground_truth().text == "hi ⇧A"
        assert s.index_of_time(T0 + 1.0) == 2000
        assert abs(s.sample_rate_hz - 2000) < 1e-3
        e2, _ = s.window_by_time(T0 + 0.05, T0 + 0.15)
        np.testing.assert_array_equal(e2, s.emg(100, 300))


def test_field_order_does_not_matter(tmp_path):
    """Fields are read by name: a file with fields in another order gives identical windows."""
    p = _write(tmp_path / "a.hdf5")
    q = tmp_path / "b.hdf5"
    with h5py.File(p) as f:
        rows = f["emg2qwerty/timeseries"][:]
        attrs = dict(f["emg2qwerty"].attrs)
    dt = np.dtype([("emg_right", np.float32, (16,)), ("time", np.float64), ("emg_left", np.float32, (16,))])
    other = np.empty(len(rows), dt)
    for k in dt.names:
        other[k] = rows[k]
    with h5py.File(q, "w") as f:
        g = f.create_group("emg2qwerty")
        g.create_dataset("timeseries", data=other)
        for k, v in attrs.items():
            g.attrs[k] = v
    with EMGSession(p) as a, EMGSession(q) as b:
        np.testing.assert_array_equal(a.emg(10, 50), b.emg(10, 50))


def test_windows_follow_reference_geometry(tmp_path):
    """Window 0 has no left context (8200 rows); later windows have 10000 rows; labels cover the un-padded window."""
    p = _write(tmp_path / "w.hdf5", seconds=11.0, keystrokes=_keys(("a", 0.5), ("b", 3.5), ("c", 4.5), ("d", 8.5)))
    spec = WindowSpec()
    with EMGSession(p) as s:
        assert spec.num_windows(len(s)) == 2
        w0, w1 = read_window(s, 0, spec), read_window(s, 1, spec)
    assert w0["emg"].shape[0] == 8200 and w1["emg"].shape[0] == 10000
    assert charset().labels_to_str(w0["labels"]) == "ab" and charset().labels_to_str(w1["labels"]) == "c"
    np.testing.assert_allclose(w1["label_time_s"], [4.5 - (4.0 - 0.9)], atol=1e-6)
    assert w1["key"] == f"123/w/8000"


# ------------------------------------------------------------------------------------------ bad input
def _raw_file(path: Path, rows: np.ndarray, attrs: dict) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group("emg2qwerty")
        g.create_dataset("timeseries", data=rows)
        for k, v in attrs.items():
            g.attrs[k] = v
    return path


def _rows(n: int = 100) -> np.ndarray:
    rows = np.zeros(n, TIMESERIES_DTYPE)
    rows["time"] = T0 + np.arange(n) / 2000
    return rows


def test_not_hdf5_names_file(tmp_path):
    """A file that is not HDF5 raises DataError naming it."""
    p = tmp_path / "x.hdf5"
    p.write_text("hello")
    with pytest.raises(DataError, match=r"x\.hdf5: not an HDF5 file"):
        EMGSession(p)


def test_truncated_file_is_reported(tmp_path):
    """A truncated HDF5 file raises DataError (on open or on read), never a raw h5py error."""
    p = _write(tmp_path / "t.hdf5", seconds=5)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.hdf5"):
        with EMGSession(p) as s:
            s.emg(0, len(s))


def test_missing_group_and_field(tmp_path):
    """A missing group or a missing field names what is missing."""
    p = tmp_path / "g.hdf5"
    with h5py.File(p, "w") as f:
        f.create_group("other")
    with pytest.raises(DataError, match="missing group 'emg2qwerty'"):
        EMGSession(p)
    dt = np.dtype([("emg_left", np.float32, (16,)), ("time", np.float64)])
    q = _raw_file(tmp_path / "f.hdf5", np.zeros(10, dt), {"keystrokes": "[]"})
    with pytest.raises(DataError, match="no field 'emg_right'"):
        EMGSession(q)


def test_wrong_channel_count(tmp_path):
    """A band with 8 electrodes is rejected with the count."""
    dt = np.dtype([("emg_left", np.float32, (8,)), ("emg_right", np.float32, (16,)), ("time", np.float64)])
    p = _raw_file(tmp_path / "c.hdf5", np.zeros(10, dt), {})
    with pytest.raises(DataError, match="'emg_left' has 8 channels, expected 16"):
        EMGSession(p)


def test_nan_and_nonmonotonic_time(tmp_path):
    """NaN EMG and decreasing timestamps raise DataError with the row."""
    rows = _rows()
    rows["emg_left"][42, 3] = np.nan
    p = _raw_file(tmp_path / "n.hdf5", rows, {"keystrokes": "[]"})
    with EMGSession(p) as s, pytest.raises(DataError, match="NaN or inf at row 42"):
        s.emg()
    rows = _rows()
    rows["time"][60] = rows["time"][10]
    q = _raw_file(tmp_path / "m.hdf5", rows, {"keystrokes": "[]"})
    with EMGSession(q) as s, pytest.raises(DataError, match="not monotonic at row 60"):
        s.scan_values()


def test_bad_keystroke_json(tmp_path):
    """Keystroke JSON that does not parse, or is unsorted, is rejected naming the attribute."""
    p = _raw_file(tmp_path / "k.hdf5", _rows(), {"keystrokes": "[{'key': 'a'"})
    with pytest.raises(DataError, match="'keystrokes' is not valid JSON"):
        EMGSession(p)
    ks = json.dumps(_keys(("a", 2), ("b", 1)))
    q = _raw_file(tmp_path / "u.hdf5", _rows(), {"keystrokes": ks})
    with pytest.raises(DataError, match="not sorted"):
        EMGSession(q)


def test_info_skips_bad_file_when_asked(tmp_path, capsys):
    """`data info` on a root with one bad file fails naming it, or reports it and goes on with --skip-bad."""
    _write(tmp_path / "good.hdf5")
    (tmp_path / "bad.hdf5").write_text("nope")
    assert data_main(["info", str(tmp_path)]) == 2
    assert "bad.hdf5" in capsys.readouterr().err
    assert data_main(["info", str(tmp_path), "--skip-bad", "--json", "--labels"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [s["session"] for s in out["sessions"]] == ["good"] and out["sessions"][0]["labels"] == "hi ⇧A"
    assert out["bad"][0]["path"].endswith("bad.hdf5")


# ------------------------------------------------------------------------------------------ splits
def test_split_roundtrip_and_missing_sessions(tmp_path):
    """A split written in the official layout parses back; resolving lists every missing session."""
    sp = Split("user0", {"train": [SessionRef("123", "s1"), SessionRef("123", "s2")], "val": [], "test": [SessionRef("9", "s3")]})
    path = tmp_path / "user0.yaml"
    path.write_text(sp.to_yaml())
    assert path.read_text().startswith("# @package _global_")
    back = load_split(path)
    assert back.sessions == sp.sessions and back.name == "user0"
    _write(tmp_path / "s1.hdf5")
    with pytest.raises(DataError, match=r"1 of 2 'train' sessions missing.*\n  s2\.hdf5"):
        back.resolve(tmp_path, "train")


@pytest.mark.skipif(not SPLITS_DIR.is_dir(), reason="official split files (../shared/emg2qwerty-splits) not present")
def test_official_split_files_parse():
    """The released split files parse with the documented counts (generic 837/192/16, user0 10/2/2)."""
    g = load_split(SPLITS_DIR / "generic.yaml")
    assert (len(g["train"]), len(g["val"]), len(g["test"])) == (837, 192, 16)
    u0 = load_split(SPLITS_DIR / "user0.yaml")
    assert (len(u0["train"]), len(u0["val"]), len(u0["test"])) == (10, 2, 2)
    su = load_split(SPLITS_DIR / "single_user.yaml")
    assert su.users() == ["89335547"]
    for i in range(8):
        ui = load_split(SPLITS_DIR / f"user{i}.yaml")
        assert set(r.session for r in ui["test"]) <= set(r.session for r in g["test"])
        assert not set(ui.users()) & set(g.users("train"))


@pytest.mark.skipif(not METADATA.is_file(), reason="real metadata.csv (../shared/emg2qwerty-metadata) not present")
def test_real_metadata_parses():
    """The real metadata.csv has 108 users and 1,135 sessions."""
    rows = read_metadata(METADATA)
    assert len(rows) == 1135 and len({r.user for r in rows}) == 108


def test_value_rule_on_float16_rows_finds_inf_and_nan_and_accepts_the_largest_half():
    """The value rule on float16 EMG (the shards' dtype, checked on its bits) names the first row holding
    inf or NaN, also in a non-contiguous view, and accepts every finite half, 65504 included."""
    from emgscale.data.values import value_problem

    rows = np.zeros((50, 2, 16), np.float16)
    rows[7, 1, 3] = 65504.0
    rows[9, 0, 0] = -65504.0
    assert value_problem(rows) is None and value_problem(rows[::2]) is None
    for bad in (np.inf, -np.inf, np.nan):
        r = rows.copy()
        r[30, 1, 5] = bad
        assert value_problem(r) == "EMG has NaN or inf at row 30"
        assert value_problem(r[::2]) == "EMG has NaN or inf at row 15"
