"""Read speed of a BIDS copy vs the HDF5 original: ms per 4 s window, open cost, import cost.

    python benchmarks/bench_bids.py [--root ../shared/emg2qwerty-bids] [--repeats 3]

``--root`` holds ``hdf5/`` (sessions + ``metadata.csv``) and ``bids/`` (the same sessions after Meta's
``convert_to_bids.py``). Per session it reads every 4 s window (8000 rows + 1800/200 context = 10000
rows, the training sample) in a shuffled order, with emgscale's HDF5 reader, emgscale's BIDS reader
(a memmap of the ``.eeg``) and — when installed — MNE's lazy BrainVision reader (``read_raw_brainvision``,
``preload=False``; what ``mne_bids.read_raw_bids`` returns), and prints the median ms per window. Open
cost is one session opened (header, events, metadata); import cost is a fresh interpreter importing the
reader. Files are in the page cache after the first pass (the numbers are CPU cost, not disk speed).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emgscale.data.source import open_session  # noqa: E402
from emgscale.data.splits import DataRoot  # noqa: E402
from emgscale.data.windows import WindowSpec  # noqa: E402

SPEC = WindowSpec()  # 8000-row windows, 1800 / 200 rows of context


def _windows(n: int, seed: int) -> list[tuple[int, int]]:
    rows = [SPEC.padded_rows(i * SPEC.stride, SPEC.window_samples, n) for i in range(SPEC.num_windows(n))]
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


def _ms_per_window(read, n: int, repeats: int) -> float:
    times = []
    for r in range(repeats):
        wins = _windows(n, r)
        t0 = time.perf_counter()
        for a, b in wins:
            read(a, b)
        times.append((time.perf_counter() - t0) * 1e3 / max(len(wins), 1))
    return statistics.median(times)


def _import_ms(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1e3)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return float(out.stdout.strip()) if out.returncode == 0 else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "emg2qwerty-bids")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    meta = a.root / "hdf5" / "metadata.csv"
    try:
        import mne  # noqa: PLC0415

        mne.set_log_level("ERROR")
    except ImportError:
        mne = None
    rows = {"hdf5": [], "bids": [], "mne": []}
    opens = {"hdf5": [], "bids": [], "mne": []}
    for user, session, vhdr in DataRoot(a.root / "bids", meta).sessions():
        h5 = a.root / "hdf5" / f"{session}.hdf5"
        for name, path in (("hdf5", h5), ("bids", vhdr)):
            t0 = time.perf_counter()
            with open_session(path, meta) as s:
                opens[name].append((time.perf_counter() - t0) * 1e3)
                rows[name].append(_ms_per_window(s.window, len(s), a.repeats))
        if mne is not None:
            t0 = time.perf_counter()
            raw = mne.io.read_raw_brainvision(vhdr, preload=False)
            opens["mne"].append((time.perf_counter() - t0) * 1e3)
            rows["mne"].append(_ms_per_window(lambda a_, b_: raw.get_data(start=a_, stop=b_), raw.n_times, a.repeats))
    print(f"{len(rows['hdf5'])} sessions from {a.root}; 4 s windows (10000 rows x 32 channels), median of {a.repeats}")
    print(f"{'reader':<34} {'ms/window':>10} {'open ms':>9} {'import ms':>10}")
    readers = (("hdf5", "emgscale EMGSession (h5py)", "emgscale.data.session"),
               ("bids", "emgscale BIDSSession (memmap)", "emgscale.data.bids"),
               ("mne", "mne read_raw_brainvision (lazy)", "mne"))
    for key, label, module in readers:
        if rows[key]:
            print(f"{label:<34} {statistics.median(rows[key]):10.3f} {statistics.median(opens[key]):9.2f} "
                  f"{_import_ms(module):10.0f}")
        else:
            print(f"{label:<34} {'(not installed)':>10}")
    if mne is not None:
        print(f"{'':<34} {'':>10} {'':>9} {_import_ms('mne_bids'):10.0f}  (mne_bids)")


if __name__ == "__main__":
    main()
