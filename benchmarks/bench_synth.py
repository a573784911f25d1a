"""Benchmark the synthetic corpus generator: speed, size on disk, and whether the data means something.

Prints:
* generation speed on one core (x real time by wall clock, with and without writing the HDF5 file,
  and by CPU time, which a busy machine disturbs less);
* MB per hour of EMG on disk;
* a realism check: a simple key classifier (log-RMS of 5 x 50 ms sub-windows around each press,
  32 channels, ridge regression on the 20 most frequent keys) trained on some users' sessions and
  scored on (a) held-back presses of the training sessions, (b) unseen sessions of the training
  users, (c) unseen users. A corpus whose per-user and per-session variation matters gives
  (a) > (b) > (c), all well above chance.

Usage::

    python benchmarks/bench_synth.py                 # about 1-2 minutes on one core
    python benchmarks/bench_synth.py --quick         # = --minutes 0.5 --realism-minutes 1 --users 4
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one core: set before numpy loads (not when imported by the tests)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402

from emgscale.synth import SynthConfig, generate_session, plan_corpus, write_session  # noqa: E402
from emgscale.synth.signal import SAMPLE_RATE_HZ  # noqa: E402
from emgscale.synth.text import prompts_from_file  # noqa: E402

PRE_S, POST_S, SUB_WINDOWS = 0.15, 0.10, 5


def bench_speed(minutes: float, sessions: int, seed: int) -> dict[str, float]:
    """Generate and write ``sessions`` sessions of ``minutes``; time generation and writing apart."""
    prompts_from_file(None)  # text loading is a once-per-process cost, not per session
    plans = plan_corpus(SynthConfig(users=1, sessions_per_user=sessions, minutes=minutes, seed=seed,
                                    contact_artifact_prob=0.0))
    gen_s = write_s = emg_s = cpu_s = 0.0
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        for p in plans:
            c0, t0 = time.process_time(), time.perf_counter()
            s = generate_session(p, seed)
            t1 = time.perf_counter()
            _, nbytes = write_session(s, tmp)
            t2 = time.perf_counter()
            cpu_s += time.process_time() - c0
            gen_s += t1 - t0
            write_s += t2 - t1
            emg_s += len(s.time) / SAMPLE_RATE_HZ
            size += nbytes
    return {
        "emg_minutes": emg_s / 60.0,
        "generate_x_real_time": emg_s / gen_s,
        "generate_and_write_x_real_time": emg_s / (gen_s + write_s),
        "generate_and_write_x_real_time_cpu": emg_s / cpu_s,
        "mb_per_hour_on_disk": size / 1e6 / (emg_s / 3600.0),
    }


def _features(emg: np.ndarray, time_s: np.ndarray, keystrokes: list[dict]) -> tuple[np.ndarray, list[str]]:
    """(N, 5 * 32) log-RMS features around each press, and the pressed keys."""
    fs = SAMPLE_RATE_HZ
    pre, post = int(PRE_S * fs), int(POST_S * fs)
    x = emg.reshape(len(emg), -1)
    feats, keys = [], []
    for k in keystrokes:
        i = int(round((k["start"] - time_s[0]) * fs))
        if i - pre < 0 or i + post > len(x):
            continue
        w = x[i - pre:i + post].reshape(SUB_WINDOWS, -1, x.shape[1])
        feats.append(np.log(np.mean(w.astype(np.float64) ** 2, axis=1) + 1.0).ravel())
        keys.append(k["key"])
    return np.array(feats), keys


def _ridge_accuracy(xtr: np.ndarray, ytr: list[str], tests: dict[str, tuple[np.ndarray, list[str]]],
                    classes: list[str], lam: float = 10.0) -> dict[str, float]:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    keep = np.isin(ytr, classes)
    a = np.c_[(xtr[keep] - mu) / sd, np.ones(keep.sum())]
    y = (np.array(ytr)[keep][:, None] == np.array(classes)[None]).astype(np.float64)
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y)
    out = {}
    for name, (x, yt) in tests.items():
        m = np.isin(yt, classes)
        if not m.any():
            out[name] = float("nan")
            continue
        pred = np.array(classes)[np.argmax(np.c_[(x[m] - mu) / sd, np.ones(m.sum())] @ w, axis=1)]
        out[name] = float(np.mean(pred == np.array(yt)[m]))
    return out


def bench_realism(users: int, sessions: int, minutes: float, seed: int) -> dict[str, float]:
    """Key classification within sessions, across sessions and across users (see module docstring)."""
    plans = plan_corpus(SynthConfig(users=users, sessions_per_user=sessions, minutes=minutes, seed=seed,
                                    contact_artifact_prob=0.0))
    data: dict[tuple[str, int], tuple[np.ndarray, list[str]]] = {}
    for p in plans:
        s = generate_session(p, seed)
        data[(p.user, p.session_index)] = _features(s.emg, s.time, s.keystrokes)
    user_ids = sorted({u for u, _ in data})
    train_users, test_users = user_ids[:-1], user_ids[-1:]
    rng = np.random.default_rng(seed)
    xtr, ytr, xin, yin, xses, yses, xusr, yusr = [], [], [], [], [], [], [], []
    for (u, i), (x, y) in data.items():
        if u in test_users:
            xusr.append(x), yusr.extend(y)
        elif i == sessions - 1:
            xses.append(x), yses.extend(y)
        else:
            held = rng.random(len(y)) < 0.2
            xtr.append(x[~held]), ytr.extend(np.array(y)[~held])
            xin.append(x[held]), yin.extend(np.array(y)[held])
    classes = [k for k, _ in Counter(ytr).most_common(20)]
    acc = _ridge_accuracy(np.concatenate(xtr), ytr, {
        "same_sessions": (np.concatenate(xin), yin),
        "unseen_sessions_same_users": (np.concatenate(xses), yses),
        "unseen_users": (np.concatenate(xusr), yusr),
    }, classes)
    counts = Counter(k for k in yusr if k in classes)
    acc["majority_class"] = max(counts.values()) / sum(counts.values()) if counts else float("nan")
    return acc


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run both benchmarks, print the figures and return them."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="length of each speed-test session")
    ap.add_argument("--sessions", type=int, default=3, help="speed-test sessions")
    ap.add_argument("--users", type=int, default=5, help="realism check: users (the last one is unseen)")
    ap.add_argument("--realism-sessions", type=int, default=3, help="realism check: sessions per user")
    ap.add_argument("--realism-minutes", type=float, default=2.0, help="realism check: minutes per session")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--quick", action="store_true", help="a short run: --minutes 0.5 --realism-minutes 1 --users 4")
    args = ap.parse_args(argv)
    if args.quick:
        args.minutes, args.realism_minutes, args.users = 0.5, 1.0, 4
    speed = bench_speed(args.minutes, args.sessions, args.seed)
    print(f"speed (1 core, {speed['emg_minutes']:.1f} min of EMG): generate {speed['generate_x_real_time']:.0f}x "
          f"real time, generate+write {speed['generate_and_write_x_real_time']:.0f}x "
          f"({speed['generate_and_write_x_real_time_cpu']:.0f}x per CPU second); "
          f"{speed['mb_per_hour_on_disk']:.0f} MB per hour of EMG on disk", flush=True)
    realism = bench_realism(args.users, args.realism_sessions, args.realism_minutes, args.seed)
    print("key classification accuracy (ridge on log-RMS, 20 keys): "
          + ", ".join(f"{k} {v:.3f}" for k, v in realism.items()), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"speed": speed, "realism": realism}, fh, indent=2)
    return {"speed": speed, "realism": realism}


if __name__ == "__main__":
    main()
