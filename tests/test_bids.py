"""A BIDS copy (Meta's ``convert_to_bids.py`` layout) reads like the HDF5 root it was made from.

On the shared fixture (``../shared/emg2qwerty-bids``: 4 sessions as HDF5 and after Meta's converter) and on
BIDS copies written here from tiny synthetic corpora by ``python -m emgscale.data to-bids`` (whose
output is byte-identical to the converter's on the fixture).
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from emgscale.data import DataError, DataRoot, open_session
from emgscale.data.__main__ import main as data_main
from emgscale.data.bids import BIDSSession
from emgscale.data.bids_export import export_bids
from emgscale.data.splits import SessionRef, Split, load_split, save_split
from emgscale.data.windows import WindowSpec, read_window
from emgscale.shard import ShardConfig, shard_corpus

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "emg2qwerty-bids"
needs_fixture = pytest.mark.skipif(not (FIXTURE / "bids").is_dir(), reason=f"no BIDS fixture at {FIXTURE}")
#: float32 rounding: the converter stores fl32(x * 1e7); x comes back within one float32 ulp.
ULP = 2.0 ** -23


def _bids_copy(corpus, tmp_path: Path, name: str = "bids") -> Path:
    out = tmp_path / name
    export_bids(corpus.root, out)
    return out


def _shard_members(out: Path) -> dict[str, dict[str, object]]:
    """``{tar key: {member: value}}`` of every shard under ``out`` (npy members loaded, json parsed)."""
    import json

    found: dict[str, dict[str, object]] = {}
    for tar in sorted(out.glob("*/*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, member = m.name.partition(".")
                data = tf.extractfile(m).read()
                value = np.load(io.BytesIO(data)) if member.endswith("npy") else json.loads(data)
                found.setdefault(f"{tar.parent.name}/{key}", {})[member] = value
    return found


def _assert_same_shards(h5_out: Path, bids_out: Path) -> int:
    """Same records, identical labels and identity, EMG within float32 rounding; returns the record count."""
    a, b = _shard_members(h5_out), _shard_members(bids_out)
    assert sorted(a) == sorted(b)
    for key in a:
        ra, rb = a[key], b[key]
        for field in ("user", "session", "key", "kind", "start", "offset", "num_rows", "num_windows"):
            assert ra["json"][field] == rb["json"][field], (key, field)
        np.testing.assert_array_equal(ra["labels.npy"], rb["labels.npy"], err_msg=key)
        ea, eb = ra["emg.npy"], rb["emg.npy"]
        assert ea.shape == eb.shape and ea.dtype == eb.dtype == np.float32
        assert np.all(np.abs(ea - eb) <= ULP * np.abs(ea)), key
    return len(a)


def _shard(root: Path, split: Path, out: Path, bids_metadata: "Path | None" = None) -> Path:
    shard_corpus(ShardConfig(data_root=str(root), out=str(out), split=str(split), dtype="float32",
                             window=WindowSpec(4000, None, 1800, 200, jitter=True), train_windows_per_record=2,
                             bids_metadata=str(bids_metadata) if bids_metadata else None, progress=False))
    return out


# ----------------------------------------------------------------------------- the shared fixture
@needs_fixture
def test_fixture_sessions_equal_hdf5_in_emg_and_labels():
    """Every fixture recording: EMG within one float32 ulp of the HDF5 values, same rows, same labels of the
    whole session and of every window, same identity (via the HDF5 root's metadata.csv)."""
    meta = FIXTURE / "hdf5" / "metadata.csv"
    spec = WindowSpec(4000, 1000)
    worst = 0.0
    for user, session, vhdr in DataRoot(FIXTURE / "bids", meta).sessions():
        with open_session(vhdr, meta) as b, open_session(FIXTURE / "hdf5" / f"{session}.hdf5") as h:
            assert isinstance(b, BIDSSession) and (b.user, b.session_name) == (h.user, h.session_name) == (user, session)
            assert len(b) == len(h)
            eb, eh = b.emg(), h.emg()
            assert np.all(np.abs(eb - eh) <= ULP * np.abs(eh))
            worst = max(worst, float(np.abs(eb - eh).max()))
            assert b.ground_truth(b.start_time, b.end_time).text == h.ground_truth(h.start_time, h.end_time).text
            for i in range(spec.num_windows(len(b))):
                wb, wh = read_window(b, i, spec), read_window(h, i, spec)
                np.testing.assert_array_equal(wb["labels"], wh["labels"])
                assert wb["key"] == wh["key"]
    assert 0.0 < worst < 1e-3  # the converter's float32 rounding is there, and tiny


@needs_fixture
def test_fixture_shards_from_bids_equal_shards_from_hdf5(tmp_path):
    """``shard`` on the BIDS root (with the HDF5 root's metadata.csv) writes the HDF5 route's records: same
    keys and labels, EMG to float32 rounding."""
    from emgscale.data.splits import read_metadata

    rows = read_metadata(FIXTURE / "hdf5" / "metadata.csv")
    refs = [SessionRef(r.user, r.session) for r in rows]
    split = tmp_path / "fixture.yaml"
    save_split(Split("fixture", {"train": refs[:2], "val": refs[2:3], "test": refs[3:]}), split)
    h5 = _shard(FIXTURE / "hdf5", split, tmp_path / "h5")
    bids = _shard(FIXTURE / "bids", split, tmp_path / "bids", FIXTURE / "hdf5" / "metadata.csv")
    assert _assert_same_shards(h5, bids) > 4


@needs_fixture
def test_exporter_writes_what_meta_converter_wrote(tmp_path):
    """``to-bids`` of the fixture's HDF5 root reproduces the converter's data, header, markers and events
    byte for byte."""
    assert data_main(["to-bids", str(FIXTURE / "hdf5"), str(tmp_path / "out")]) == 0
    theirs = sorted(p.relative_to(FIXTURE / "bids") for p in (FIXTURE / "bids").rglob("*")
                    if p.suffix in (".eeg", ".vhdr", ".vmrk") or p.name.endswith(("_events.tsv", "_channels.tsv",
                                                                                   "_scans.tsv")))
    assert len(theirs) == 4 * 6
    for rel in theirs:
        assert (tmp_path / "out" / rel).read_bytes() == (FIXTURE / "bids" / rel).read_bytes(), rel


@needs_fixture
def test_mne_reads_the_same_values_and_events():
    """MNE (when installed) reads the fixture's recordings as the HDF5 values in volts, and mne-bids gives
    the key annotations this reader turns into keystrokes."""
    mne = pytest.importorskip("mne")
    mne_bids = pytest.importorskip("mne_bids")
    mne.set_log_level("ERROR")
    path = mne_bids.BIDSPath(subject="01", session="02", task="emg2qwerty", datatype="eeg", root=FIXTURE / "bids")
    raw = mne_bids.read_raw_bids(path, verbose=False)
    with open_session(path.fpath) as s:
        emg = s.emg()
        np.testing.assert_allclose(raw.get_data().T.astype(np.float32), emg.reshape(len(emg), -1), rtol=ULP, atol=0)
        keys = [d[len("key/"):] for d in raw.annotations.description if d.startswith("key/")]
        assert keys == [k["key"] for k in s.keystrokes]


# ----------------------------------------------------------------------------- synthetic copies
def test_synthetic_copy_shards_equal_and_users_numbered_as_the_converter(tiny_corpus, tmp_path):
    """A tiny corpus and its BIDS copy shard to the same records; sub-01 is the numerically smallest user id
    (pandas sorts the int column), not the first in string order."""
    bids = _bids_copy(tiny_corpus, tmp_path)
    names = DataRoot(bids, tiny_corpus.root / "metadata.csv").bids_names()
    assert names["sub-01_ses-01"].user == "9456349" and names["sub-02_ses-01"].user == "43037958"
    h5 = _shard(tiny_corpus.root, tiny_corpus.split_path, tmp_path / "h5")
    out = _shard(bids, tiny_corpus.split_path, tmp_path / "sb", tiny_corpus.root / "metadata.csv")
    assert _assert_same_shards(h5, out) >= 12


def test_copy_with_its_own_metadata_needs_no_flag_and_reads_everywhere(tiny_corpus, tmp_path, capsys):
    """With metadata.csv inside the BIDS root, ``data info --split`` and the HDF5 loader path find every split
    session by its HDF5 name, and users/sessions come out as in the HDF5 root."""
    bids = tmp_path / "bids"
    export_bids(tiny_corpus.root, bids, copy_metadata=True)
    assert data_main(["info", str(bids), "--split", str(tiny_corpus.split_path), "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert sorted(r["session"] for r in report["sessions"]) == sorted(tiny_corpus.all_sessions())
    assert {r["user"] for r in report["sessions"]} == set(tiny_corpus.users)


def test_split_mapping_names_every_unmappable_session(tiny_corpus, tmp_path):
    """Without metadata every HDF5-named split session is named as unmappable; with it they map to the
    converter's sub/ses; a session the metadata lacks is named; BIDS-named splits need no metadata."""
    bids = _bids_copy(tiny_corpus, tmp_path)
    split = load_split(tiny_corpus.split_path)
    with pytest.raises(DataError) as e:
        split.resolve(bids, "train")
    assert all(r.session in str(e.value) for r in split["train"]) and "bids_metadata" in str(e.value)
    meta = tiny_corpus.root / "metadata.csv"
    paths = split.resolve(bids, "train", meta)
    for ref, p in zip(split["train"], paths):
        with open_session(p, meta) as s:
            assert (s.session_name, s.user) == (ref.session, ref.user)
    stranger = Split("x", {"train": [*split["train"], SessionRef("1", "2020-01-01-not-in-metadata")]})
    with pytest.raises(DataError, match="(?s)1 of 7 sessions cannot be mapped.*2020-01-01-not-in-metadata"):
        stranger.resolve(bids, "train", meta)
    by_bids = Split("b", {"train": [SessionRef("sub-01", "sub-01_ses-02")]})
    (path,) = by_bids.resolve(bids, "train")
    assert path.name == "sub-01_ses-02_task-emg2qwerty_eeg.vhdr"


def test_metadata_of_another_copy_is_caught(corpus_factory, tmp_path):
    """A metadata.csv whose sessions last other than the recordings (not the one the copy was made from)
    is a one-line error naming the recording."""
    a = corpus_factory("a", seconds=6.0, seed=1)
    b = corpus_factory("b", seconds=12.0, seed=2)
    bids = _bids_copy(a, tmp_path)
    vhdr = next(bids.rglob("*.vhdr"))
    with pytest.raises(DataError, match="is that the metadata.csv the copy was made from"):
        open_session(vhdr, b.root / "metadata.csv")


def test_window_read_maps_only_the_window(tmp_path):
    """A window of a 47-minute recording is sliced from a memmap of the .eeg (no read() of the file): the
    bytes read through syscalls stay far below the file size and only the window's rows are sliced."""
    io_file = Path("/proc/self/io")
    if not io_file.is_file():
        pytest.skip("needs /proc/self/io (Linux)")
    from tests.conftest import make_tiny_corpus

    corpus = make_tiny_corpus(tmp_path / "c", users=("1",), sessions_per_user=1, seconds=6.0)
    bids = _bids_copy(corpus, tmp_path)
    vhdr = next(bids.rglob("*.vhdr"))
    eeg = vhdr.with_suffix(".eeg")
    rows = 47 * 60 * 2000
    with open(eeg, "r+b") as fh:  # a sparse 47-minute file (zeros after the real 6 s)
        fh.truncate(rows * 32 * 4)

    def rchar() -> int:
        return int(next(line for line in io_file.read_text().splitlines() if line.startswith("rchar")).split()[1])

    before = rchar()
    with open_session(vhdr) as s:
        assert len(s) == rows and isinstance(s._data, np.memmap)
        sliced = []
        real = s._data

        class Spy:
            def __getitem__(self, key):
                sliced.append(key)
                return real[key]

        s._data = Spy()
        emg, t = s.window(rows - 10_000, rows)
        assert emg.shape == (10_000, 2, 16) and not emg.any() and t[-1] == pytest.approx((rows - 1) / 2000)
    assert sliced == [slice(rows - 10_000, rows)]
    assert rchar() - before < 2**20 < eeg.stat().st_size // 100


# ----------------------------------------------------------------------------- bad input
def _one_recording(tmp_path: Path) -> Path:
    from tests.conftest import make_tiny_corpus

    corpus = make_tiny_corpus(tmp_path / "c", users=("7",), sessions_per_user=1, seconds=3.0)
    return next(_bids_copy(corpus, tmp_path).rglob("*.vhdr"))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def _drop_last_channel(vhdr: Path) -> None:
    _edit(vhdr, "NumberOfChannels=32", "NumberOfChannels=31")
    _edit(vhdr, "Ch32=emg15_right,,0.1,µV\n", "")


def _unknown_key(vhdr: Path) -> None:
    events = vhdr.with_name(vhdr.name.replace("_eeg.vhdr", "_events.tsv"))
    lines = events.read_text().splitlines()
    cols = lines[1].split("\t")
    cols[2] = "key/Key.tab"
    events.write_text("\n".join([lines[0], "\t".join(cols), *lines[2:]]) + "\n")


def _no_keys(vhdr: Path) -> None:
    events = vhdr.with_name(vhdr.name.replace("_eeg.vhdr", "_events.tsv"))
    lines = events.read_text().splitlines()
    events.write_text("\n".join([lines[0], *(ln for ln in lines[1:] if "\tkey/" not in ln)]) + "\n")


BAD = {
    "missing .eeg": (lambda v: v.with_suffix(".eeg").unlink(), "_eeg.vhdr", "DataFile=.*no such file"),
    "31 channels": (_drop_last_channel, "_eeg.vhdr", "31 channels, expected 32"),
    "unknown key name": (_unknown_key, "_events.tsv", "unknown key name 'Key.tab'"),
    "no key events": (_no_keys, "_events.tsv", "no key/<name> events"),
    "vhdr names a missing file": (lambda v: _edit(v, "DataFile=sub-01", "DataFile=gone-sub-01"), "_eeg.vhdr",
                                  "DataFile=gone-sub-01.*no such file"),
    "truncated .eeg": (lambda v: open(v.with_suffix(".eeg"), "r+b").truncate(1001), ".eeg", "not a whole number"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_bids_input_is_one_line_naming_the_file(tmp_path, capsys, case):
    """Each kind of broken BIDS recording raises DataError naming the file, and ``data info`` prints it as
    one line with exit code 2."""
    vhdr = _one_recording(tmp_path)
    damage, suffix, message = BAD[case]
    damage(vhdr)
    with pytest.raises(DataError, match=message) as e:
        open_session(vhdr)
    assert e.value.path.endswith(suffix)
    assert data_main(["info", str(vhdr.parents[3])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and suffix in err


def test_info_and_cli_take_a_vhdr_and_a_bids_root(tiny_corpus, tmp_path, capsys):
    """``data info`` on a single .vhdr and on a BIDS root without metadata names sessions by their BIDS names."""
    bids = _bids_copy(tiny_corpus, tmp_path)
    vhdr = sorted(bids.rglob("*.vhdr"))[0]
    assert data_main(["info", str(vhdr), "--quick"]) == 0
    assert "sub-01_ses-01" in capsys.readouterr().out
    shutil.copy(tiny_corpus.root / "metadata.csv", tmp_path / "m.csv")
    assert data_main(["info", str(bids), "--bids-metadata", str(tmp_path / "m.csv"), "--quick"]) == 0
    out = capsys.readouterr().out
    assert all(s in out for s in tiny_corpus.all_sessions())


def test_eval_and_stream_read_a_bids_copy_as_the_hdf5_root(tiny_corpus, tmp_path):
    """Whole-session emissions (eval) and a streamed replay of a BIDS recording give the HDF5 route's
    targets, users and decoded keys, and emissions equal to float32 rounding."""
    from emgscale.eval.inference import session_emissions
    from emgscale.stream import Streamer, replay_session
    from tests.test_stream import tiny

    bids = _bids_copy(tiny_corpus, tmp_path)
    meta = tiny_corpus.root / "metadata.csv"
    model = tiny("cnn_gru_causal", seed=3)
    refs = tiny_corpus.split["test"]
    a = list(session_emissions(model, tiny_corpus.root, refs))
    b = list(session_emissions(model, bids, refs, bids_metadata=meta))
    for ea, eb in zip(a, b, strict=True):
        assert (ea["session"], ea["user"], ea["target"]) == (eb["session"], eb["user"], eb["target"])
        np.testing.assert_allclose(ea["log_probs"], eb["log_probs"], atol=1e-4)
    (vhdr,) = Split("t", {"test": refs[:1]}).resolve(bids, "test", meta)
    ra = replay_session(Streamer(model), str(tiny_corpus.path(refs[0].session)), chunk_ms=40.0)
    rb = replay_session(Streamer(model), str(vhdr), chunk_ms=40.0)
    assert ra.labels == rb.labels and list(ra.target) == list(rb.target)


@pytest.mark.slow
def test_readme_bids_lines_run_as_written(tmp_path):
    """The README's BIDS block — to-bids, data info, shard, train, eval — runs as written (training with the
    quick settings the README tests use) on a small synthetic corpus."""
    import json

    from tests.test_readme import QUICK, _sh, readme_command

    (tmp_path / "emgscale").symlink_to(Path(__file__).resolve().parents[1] / "emgscale")
    _sh("python -m emgscale.synth --out data/synth --users 2 --sessions-per-user 4 --minutes 0.3 --heldout-users 1 "
        "val_sessions_per_user=1 test_sessions_per_user=1 min_train_sessions_per_user=1", tmp_path)
    for prefix in ("python -m emgscale.data to-bids", "python -m emgscale.data info data/synth-bids",
                   "python -m emgscale.shard --data-root data/synth-bids"):
        _sh(readme_command(prefix), tmp_path)
    assert (tmp_path / "shards/bids/manifest.json").is_file()
    _sh(readme_command("python -m emgscale.train configs/single_user.yaml configs/models/tds_tiny.yaml data.data_root=")
        + " " + " ".join(QUICK), tmp_path)
    _sh(readme_command("python -m emgscale.eval runs/bids/"), tmp_path)
    result = json.loads((tmp_path / "runs/bids/checkpoints/eval-single_user-test-greedy.json").read_text())
    assert result["per_session"]


def test_bench_shards_of_a_bids_root_match_the_hdf5_root(tiny_corpus, tmp_path):
    """``bench --data-root BIDS --bids-metadata CSV`` writes its cached train/val shards from the BIDS copy
    with the HDF5 route's records, labels and (to float16 storage) EMG."""
    from emgscale.bench.steps import ensure_shards

    bids = _bids_copy(tiny_corpus, tmp_path)
    a = ensure_shards(tmp_path / "cache_h5", tiny_corpus.root, tiny_corpus.split_path)
    b = ensure_shards(tmp_path / "cache_bids", bids, tiny_corpus.split_path,
                      bids_metadata=tiny_corpus.root / "metadata.csv")
    ra, rb = _shard_members(a), _shard_members(b)
    assert sorted(ra) == sorted(rb) and ra
    for key in ra:
        np.testing.assert_array_equal(ra[key]["labels.npy"], rb[key]["labels.npy"])
        assert ra[key]["json"]["key"] == rb[key]["json"]["key"]


def test_time_lookup_matches_the_generic_search(tiny_corpus, tmp_path):
    """Rows are at ``i / 2000`` s; the closed-form ``index_of_time`` equals the HDF5 session's binary search
    over those timestamps, and ``window_by_time`` returns the rows in ``[start_t, end_t)``."""
    from emgscale.data.session import EMGSession

    vhdr = sorted(_bids_copy(tiny_corpus, tmp_path).rglob("*.vhdr"))[0]
    with open_session(vhdr) as s:
        t = s.time()
        np.testing.assert_array_equal(t, np.arange(len(s)) / 2000.0)
        for q in (-1.0, 0.0, 0.00049, 0.0005, 1.2345, float(t[-1]), float(t[-1]) + 1, float("inf")):
            assert s.index_of_time(q) == EMGSession.index_of_time(s, q), q
        emg, times = s.window_by_time(float(t[10]), float(t[20]))
        assert len(emg) == 10 and times[0] == t[10]


@needs_fixture
def test_prompts_come_back_with_their_newlines(tmp_path):
    """Prompts read as the HDF5 ``text_prompt`` payloads (``\\n`` back to ``⏎``), also when an older pandas made
    the converter write a real newline that cuts the TSV row."""
    rel = Path("sub-01/ses-01/eeg")
    shutil.copytree(FIXTURE / "bids" / "sub-01", tmp_path / "sub-01", copy_function=shutil.copyfile)
    for p in (tmp_path / "sub-01").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # the fixture is read-only
    events = tmp_path / rel / "sub-01_ses-01_task-emg2qwerty_events.tsv"
    events.write_text(events.read_text().replace("prompt/framed in blue-black", "prompt/framed\\nin\nblue-black"))
    with open_session(tmp_path / rel / "sub-01_ses-01_task-emg2qwerty_eeg.vhdr") as s:
        assert [p["payload"]["text"] for p in s.prompts] == ["framed⏎in⏎blue-black hair and", "a black butterfly tie."]
        assert len(s.keystrokes) == 53


@pytest.mark.parametrize("variant", ["vectorized", "int16", "channel order"])
def test_other_brainvision_layouts_read_the_same_values(tmp_path, variant):
    """A recording stored vectorized, as int16 counts at a coarser resolution, or with its channels in
    another order reads as the same (T, 2, 16) EMG (to the storage's rounding)."""
    vhdr = _one_recording(tmp_path)
    eeg = vhdr.with_suffix(".eeg")
    with open_session(vhdr) as s:
        want = s.emg()
    counts = np.fromfile(eeg, dtype="<f4").reshape(-1, 32)  # value * 1e7 (µV at 0.1 µV)
    tol = ULP
    if variant == "vectorized":
        counts.T.astype("<f4").tofile(eeg)
        _edit(vhdr, "DataOrientation=MULTIPLEXED", "DataOrientation=VECTORIZED")
    elif variant == "int16":
        scale = float(np.abs(counts).max()) / 30000  # counts of `scale` x 0.1 µV
        np.round(counts / scale).astype("<i2").tofile(eeg)
        _edit(vhdr, "BinaryFormat=IEEE_FLOAT_32", "BinaryFormat=INT_16")
        _edit(vhdr, ",,0.1,µV", f",,{0.1 * scale!r},µV")
        tol = 1.0 / 30000 * float(np.abs(want).max())
    else:
        perm = np.random.default_rng(0).permutation(32)
        counts[:, perm].astype("<f4").tofile(eeg)
        text = vhdr.read_text(encoding="utf-8")
        lines = [f"Ch{i + 1}=emg{j % 16}_{'left' if j < 16 else 'right'},,0.1,µV" for i, j in enumerate(perm)]
        head, _, _ = text.partition("Ch1=")
        vhdr.write_text(head + "\n".join(lines) + "\n\n[Comment]\n\n", encoding="utf-8")
        vhdr.with_name(vhdr.name.replace("_eeg.vhdr", "_channels.tsv")).unlink()
    with open_session(vhdr) as s:
        got = s.emg()
    assert got.shape == want.shape
    if variant == "int16":
        assert np.abs(got - want).max() <= tol
    else:
        assert np.all(np.abs(got - want) <= tol * np.abs(want))
