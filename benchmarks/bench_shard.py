"""Benchmark of sharding and shard reading, side by side in one run.

    python benchmarks/bench_shard.py            # 1 user x 4 sessions of 2 min; 100 users x 1 session of 0.5 min
    python benchmarks/bench_shard.py --quick    # 1 user x 2 x 0.5 min; 20 users x 1 x 0.25 min

Prints four tables:

1. Shard writing (one process each, ``workers=1``): MB/s of EMG (float32 bytes of the sessions) and the
   writer's peak RSS, for a 1-user corpus and a many-user corpus. Peak memory should not grow with
   the corpus: sessions are streamed one record at a time.
2. Reading training windows: windows/s from shards (the resampled, shuffled training stream) vs the
   same windows read in random order straight from the HDF5 files (``SessionWindows``), same corpus,
   same process, ``num_workers=0``. Files were just written, so both mostly read from the page cache.
3. Storage: bytes per hour of EMG at float16 and float32, for training chunks, val windows and test sessions.
4. float16 fidelity on the synthetic EMG (microvolt-like scale): relative error and SNR of the round trip,
   and the change it makes to the log-spectrogram features the models see.

The corpora come from ``python -m emgscale.synth`` in a temporary folder (``--work DIR`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("EMGSCALE_PROGRESS", "0")


def _run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def make_corpus(root: Path, users: int, sessions: int, minutes: float, seed: int) -> Path:
    """A synthetic corpus (reused when ``root`` already holds one)."""
    if not (root / "metadata.csv").is_file():
        _run([sys.executable, "-m", "emgscale.synth", "--out", str(root), "--users", str(users), "--sessions-per-user",
              str(sessions), "--minutes", str(minutes), "--heldout-users", "0", "--seed", str(seed)])
    return root


def write_job(data_root: str, out: str, part: str, dtype: str) -> dict[str, Any]:
    """Shard a corpus in this (fresh) process; returns time, peak RSS and sizes."""
    import torch

    torch.set_num_threads(1)
    from emgscale.common import peak_rss_mb
    from emgscale.shard import ShardConfig, shard_corpus

    baseline = peak_rss_mb()
    t0 = time.perf_counter()
    m = shard_corpus(ShardConfig(data_root=data_root, out=out, parts=[part], dtype=dtype, workers=1, progress=False))
    seconds = time.perf_counter() - t0
    hours = m.parts[part]["emg_hours"]
    emg_mb = hours * 3600 * 2000 * 32 * 4 / 2**20
    return {"seconds": seconds, "emg_hours": hours, "emg_mb": emg_mb, "bytes": m.parts[part]["bytes"],
            "windows": m.parts[part]["num_windows"], "sessions": m.parts[part]["num_sessions"],
            "users": m.parts[part]["num_users"], "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb()}


def shard(data_root: Path, out: Path, part: str, dtype: str) -> dict[str, Any]:
    """Run :func:`write_job` in a subprocess so its peak RSS is its own (into an empty folder)."""
    shutil.rmtree(out, ignore_errors=True)
    text = _run([sys.executable, __file__, "--_job", json.dumps([str(data_root), str(out), part, dtype])])
    return json.loads(text.strip().splitlines()[-1])


def read_rates(data_root: Path, shards: Path, windows: int, batch_size: int = 32) -> dict[str, float]:
    """Windows/s: shard training stream and HDF5 random order (``windows`` each), shard eval pass (all once)."""
    from emgscale.data.splits import SessionRef, Split, save_split, session_files
    from emgscale.loader import DataConfig, build_loader

    split = data_root / "bench_all_train.yaml"
    save_split(Split("bench", {"train": [SessionRef("0", p.stem) for p in session_files(data_root)],
                               "val": [], "test": []}), split)
    rates = {}
    kw = dict(batch_size=batch_size, train_samples_per_epoch=windows)
    runs = {"shards, training stream": (DataConfig(shards=str(shards), **kw), True),
            "shards, eval pass": (DataConfig(shards=str(shards), **kw), False),
            "HDF5, random order": (DataConfig(data_root=str(data_root), split=str(split), **kw), True)}
    for name, (cfg, train) in runs.items():
        loader = build_loader(cfg, "train", train=train, seed=0)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch)
        rates[name] = n / (time.perf_counter() - t0)
    return rates


def float16_fidelity(data_root: Path, max_sessions: int = 4) -> dict[str, float]:
    """Round-trip error of float16 storage and its effect on log-spectrogram features."""
    import torch

    from emgscale.data import open_session
    from emgscale.data.splits import session_files

    try:
        from emgscale.features.spectral import SpectralFeatures

        feats = SpectralFeatures("log_spectrogram", 64, 16)
    except ImportError:  # pragma: no cover - the features module is optional here
        feats = None
    err2 = sig2 = 0.0
    max_rel, dfeat, fstd, amps = 0.0, [], [], []
    for p in session_files(data_root)[:max_sessions]:
        with open_session(p) as s:
            x = s.emg()
        y = x.astype(np.float16).astype(np.float32)
        d = (y.astype(np.float64) - x)
        err2, sig2 = err2 + float(np.sum(d ** 2)), sig2 + float(np.sum(x.astype(np.float64) ** 2))
        nz = np.abs(x) > 1e-3
        max_rel = max(max_rel, float(np.max(np.abs(d[nz]) / np.abs(x[nz]))))
        amps.append(np.percentile(np.abs(x), [50, 99]))
        if feats is not None:
            n = (len(x) // 10000) * 10000
            xb = torch.from_numpy(x[:n].reshape(-1, 10000, 2, 16))
            yb = torch.from_numpy(y[:n].reshape(-1, 10000, 2, 16))
            lengths = torch.full((len(xb),), 10000)
            fx, _ = feats(xb, lengths)
            fy, _ = feats(yb, lengths)
            dfeat.append((fx - fy).abs().reshape(-1, fx.shape[-1]))
            fstd.append(float(fx.std()))
    out = {"snr_db": 10 * np.log10(sig2 / err2), "rel_rms_error": float(np.sqrt(err2 / sig2)),
           "max_rel_error": max_rel, "median_abs_uv": float(np.mean([a[0] for a in amps])),
           "p99_abs_uv": float(np.mean([a[1] for a in amps]))}
    if dfeat:
        allf = torch.cat(dfeat)  # (values, bins)
        inner = allf[:, 1:-1]
        out.update(feat_mean_abs_diff=float(allf.mean()), feat_max_abs_diff=float(allf.max()),
                   feat_p999_inner=float(torch.quantile(inner.flatten()[::7], 0.999)),
                   feat_p999_edge=float(torch.quantile(allf[:, [0, -1]].flatten(), 0.999)),
                   feat_frac_over_0_1=float((allf > 0.1).float().mean()), feat_std=float(np.mean(fstd)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small corpora (about a minute)")
    parser.add_argument("--work", help="keep corpora and shards here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--_job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._job:
        print(json.dumps(write_job(*json.loads(args._job))))
        return 0
    import torch

    torch.set_num_threads(1)
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench_shard_")
    work = Path(args.work or tmp.name)  # type: ignore[union-attr]
    one = (1, 2, 0.5) if args.quick else (1, 4, 2.0)
    many = (20, 1, 0.25) if args.quick else (100, 1, 0.5)
    t0 = time.perf_counter()
    c1 = make_corpus(work / f"one_user_{one[1]}x{one[2]}", *one, seed=1)
    cm = make_corpus(work / f"many_users_{many[0]}x{many[2]}", *many, seed=2)
    print(f"corpora ready in {time.perf_counter() - t0:.0f} s under {work}\n", flush=True)

    writes = {"1 user": shard(c1, work / "s1_f16", "train", "float16"),
              f"{many[0]} users": shard(cm, work / "sm_f16", "train", "float16")}
    print("1. shard writing (train part, float16, 1 process)")
    print(f"{'corpus':<11} {'sessions':>8} {'EMG h':>7} {'EMG MB':>8} {'s':>6} {'MB/s':>7} {'RSS base':>9} {'RSS peak':>9}")
    for name, w in writes.items():
        print(f"{name:<11} {w['sessions']:>8} {w['emg_hours']:>7.3f} {w['emg_mb']:>8.1f} {w['seconds']:>6.1f} "
              f"{w['emg_mb'] / w['seconds']:>7.1f} {w['baseline_rss_mb']:>8.0f}M {w['peak_rss_mb']:>8.0f}M")

    windows = 1000 if args.quick else 4000
    rates = read_rates(cm, work / "sm_f16", windows)
    base = rates["HDF5, random order"]
    print(f"\n2. reading training windows ({many[0]} users, {windows} windows, batch 32, num_workers=0)")
    print(f"{'source':<26} {'windows/s':>10} {'vs HDF5':>8}")
    for name, r in rates.items():
        print(f"{name:<26} {r:>10.1f} {r / base:>7.2f}x")

    sizes: dict[str, dict[str, float]] = {}
    for part in ("train", "val", "test"):
        for dtype in ("float16", "float32"):
            w = writes["1 user"] if (part, dtype) == ("train", "float16") else shard(c1, work / f"s1_{part}_{dtype}",
                                                                                    part, dtype)
            sizes.setdefault(part, {})[dtype] = w["bytes"] / w["emg_hours"]
    raw = 3600 * 2000 * 32 * 4
    print("\n3. storage per hour of EMG (GB/h; the HDF5 files hold 0.979 GB/h: 32 x float32 + float64 time)")
    print(f"{'part':<6} {'float16':>8} {'float32':>8} {'f16/raw f32':>12}")
    for part, s in sizes.items():
        print(f"{part:<6} {s['float16'] / 1e9:>8.3f} {s['float32'] / 1e9:>8.3f} {s['float16'] / raw:>12.2f}")

    fid = float16_fidelity(c1)
    print("\n4. float16 round trip on the synthetic EMG "
          f"(median |x| {fid['median_abs_uv']:.1f}, 99th percentile {fid['p99_abs_uv']:.0f})")
    print(f"SNR {fid['snr_db']:.1f} dB, relative RMS error {fid['rel_rms_error']:.2e}, "
          f"max relative error {fid['max_rel_error']:.2e}")
    if "feat_std" in fid:
        print(f"log10-power features (std {fid['feat_std']:.2f}): mean |diff| {fid['feat_mean_abs_diff']:.1e}; "
              f"99.9th percentile {fid['feat_p999_inner']:.1e} in bins 1-31, {fid['feat_p999_edge']:.1e} in the DC "
              f"and Nyquist bins; max {fid['feat_max_abs_diff']:.1f}; {fid['feat_frac_over_0_1']:.2%} of values "
              "move by > 0.1")
    if args.json:
        Path(args.json).write_text(json.dumps({"writes": writes, "read_windows_per_s": rates,
                                               "bytes_per_emg_hour": sizes, "float16": fid}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
