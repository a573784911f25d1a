"""Streaming latency benchmark: per-chunk compute, real-time factor, algorithmic delay, key latency.

For each causal model config (``configs/models/<name>.yaml``, untrained weights: compute does not
depend on them) it streams ``--seconds`` of random EMG through :class:`emgscale.stream.Streamer` in
``--chunk-ms`` chunks with online greedy decoding, on ``--threads`` torch threads (default 1), and
reports:

* per-chunk compute, median / p99 / max, in wall-clock ms and in this thread's CPU ms (on a shared
  machine the wall time includes waiting for a core; the CPU time does not). The first second of
  chunks is warm-up and left out;
* the real-time factor (compute / audio time, wall and CPU);
* the algorithmic delay: the look-ahead (an output frame aligned to input sample ``t`` reads samples
  up to ``t + lookahead``) and the buffering (the step computes whole output frames, so a frame
  can wait up to this long after its last input sample), in ms and output frames;
* with ``--export``, the same per-chunk compute through the ``torch.export``-ed step.

With ``--checkpoint CKPT --session S.hdf5`` it also replays that recorded session through the trained
model and reports the end-to-end key latency (logged key press -> emission by the online decoder,
median / p90 over the matched keys), the CER of the online decoding and the same compute figures.

    python benchmarks/bench_stream.py                                   # the causal configs, 40 ms chunks
    python benchmarks/bench_stream.py --configs cnn_gru_causal_small --seconds 10 --export
    python benchmarks/bench_stream.py --checkpoint runs/x/checkpoints/best.pt --session data/s.hdf5
    python benchmarks/bench_stream.py --json benchmarks/results/stream.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "emgscale" / "configs" / "models"
sys.path.insert(0, str(ROOT))  # this checkout's emgscale, not an installed one
DEFAULT_CONFIGS = ("tds_causal_small", "cnn_gru_causal_small", "conformer_causal_small", "s4d_small", "tds",
                   "cnn_gru_causal", "conformer_causal", "s4d")


def build(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The untrained model of ``configs/models/<name>.yaml`` (seed 0, eval mode)."""
    import torch
    import yaml

    from emgscale.config import from_dict
    from emgscale.models import ModelConfig, build_model

    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model config")
    data = yaml.safe_load(path.read_text())["model"]
    for k, v in (overrides or {}).items():
        data = {**data, k: {**data.get(k, {}), **v} if isinstance(v, dict) else v}
    torch.manual_seed(0)
    return build_model(from_dict(ModelConfig, data)).eval()


def compute_row(model: Any, seconds: float, chunk_ms: float, warmup_s: float, export: bool) -> dict[str, Any]:
    """Streams ``seconds`` of random EMG through ``model`` and summarises the timings."""
    import numpy as np

    from emgscale.models import count_parameters
    from emgscale.stream import Streamer, replay_session

    rate = float(model.input_sample_rate_hz)
    emg = (np.random.default_rng(0).standard_normal((int(seconds * rate), 2, 16)) * 20).astype(np.float32)
    streamer = Streamer(model)
    res = replay_session(streamer, emg, chunk_ms=chunk_ms)
    skip = min(int(warmup_s * 1e3 / res.chunk_ms), max(len(res.chunk_s) - 1, 0))
    row = {"params": count_parameters(model), "unit_ms": streamer.unit_samples * 1e3 / rate,
           "lookahead_frames": -(-streamer.lookahead_samples // streamer.unit_samples),
           "buffering_frames": streamer.buffering_samples / streamer.unit_samples,
           **timing(res.chunk_s[skip:], res.chunk_cpu_s[skip:], seconds), "lookahead_ms": res.lookahead_ms,
           "buffering_ms": res.buffering_ms, "chunk_ms": res.chunk_ms, "chunks": len(res.chunk_s) - skip}
    if export:
        from emgscale.stream import export_step

        units = max(1, int(round(res.chunk_ms * rate / 1e3)) // streamer.unit_samples)
        ex = export_step(model, units=units)
        s2 = Streamer(model, step=ex.module, units_per_step=units)
        r2 = replay_session(s2, emg, chunk_ms=chunk_ms)
        t = timing(r2.chunk_s[skip:], r2.chunk_cpu_s[skip:], seconds)
        row["export"] = {"kind": ex.kind, "units_per_step": units, **t}
    return row


def timing(wall: Any, cpu: Any, seconds: float) -> dict[str, Any]:
    """Median / p99 / max chunk compute (ms) and the real-time factors."""
    import numpy as np

    def stats(x: Any) -> dict[str, float]:
        x = np.asarray(x) * 1e3
        return {"median": float(np.median(x)), "p99": float(np.percentile(x, 99)), "max": float(x.max())}

    return {"wall_ms": stats(wall), "cpu_ms": stats(cpu), "rtf": float(np.sum(wall)) / seconds,
            "rtf_cpu": float(np.sum(cpu)) / seconds}


def latency_row(checkpoint: str, session: str, chunk_ms: float, decoder: str, lm: str | None,
                lookahead_frames: int | None) -> dict[str, Any]:
    """Replay a recorded session through a trained checkpoint: key latency, CER, compute."""
    from emgscale.eval import load_model
    from emgscale.decode import DecoderConfig
    from emgscale.stream import Streamer, online_decoder, replay_session

    model, _ = load_model(checkpoint)
    dec = online_decoder(DecoderConfig(kind=decoder, lm_path=lm), lookahead_frames)
    res = replay_session(Streamer(model), session, chunk_ms=chunk_ms, decoder=dec)
    return {"checkpoint": checkpoint, "session": session, "decoder": decoder, "lookahead_frames": lookahead_frames,
            **res.summary()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated configs/models names")
    p.add_argument("--seconds", type=float, default=30.0, help="EMG streamed per config (default 30)")
    p.add_argument("--chunk-ms", type=float, default=40.0)
    p.add_argument("--warmup-s", type=float, default=1.0, help="leading chunks left out of the statistics")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--export", action="store_true", help="also time the torch.export-ed step")
    p.add_argument("--tiny", action="store_true", help="shrink every model (frontend 16, 1 layer) for tests")
    p.add_argument("--checkpoint", help="trained causal checkpoint for the key-latency replay")
    p.add_argument("--session", help="session HDF5 to replay with --checkpoint")
    p.add_argument("--decoder", default="greedy", choices=["greedy", "beam"])
    p.add_argument("--lm", help="KenLM LM for --decoder beam")
    p.add_argument("--lookahead-frames", type=int, default=None)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    import torch

    from emgscale.common import atomic_write_json, hardware

    torch.set_num_threads(a.threads)
    out: dict[str, Any] = {"threads": a.threads, "chunk_ms": a.chunk_ms, "seconds": a.seconds,
                           "load_average": list(os.getloadavg()), "hardware": hardware(), "models": {}}
    tiny = {"frontend": {"mlp_features": [16]}, "tds": {"block_channels": [4, 4], "kernel_width": 4},
            "cnn_rnn": {"conv_channels": [16], "strides": [2], "hidden_size": 16, "num_layers": 1},
            "conformer": {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 32, "left_frames": 8},
            "s4d": {"d_model": 16, "d_state": 8, "num_layers": 1}}
    print(f"{'config':24s} {'params':>9s} {'wall med/p99 ms':>16s} {'cpu med/p99 ms':>15s} {'RTF':>6s} "
          f"{'lookahead ms':>12s} {'buffer ms':>9s}")
    for name in [c for c in a.configs.split(",") if c]:
        model = build(name, tiny if a.tiny else None)
        row = compute_row(model, a.seconds, a.chunk_ms, a.warmup_s, a.export)
        out["models"][name] = row
        w, c = row["wall_ms"], row["cpu_ms"]
        print(f"{name:24s} {row['params']:9,d} {w['median']:7.2f}/{w['p99']:7.2f} {c['median']:7.2f}/{c['p99']:6.2f} "
              f"{row['rtf']:6.3f} {row['lookahead_ms']:12.1f} {row['buffering_ms']:9.1f}")
        if "export" in row:
            e = row["export"]
            print(f"{'  exported (' + e['kind'] + ')':24s} {'':9s} {e['wall_ms']['median']:7.2f}/{e['wall_ms']['p99']:7.2f} "
                  f"{e['cpu_ms']['median']:7.2f}/{e['cpu_ms']['p99']:6.2f} {e['rtf']:6.3f}")
    if a.checkpoint:
        if not a.session:
            p.error("--checkpoint needs --session")
        out["replay"] = latency_row(a.checkpoint, a.session, a.chunk_ms, a.decoder, a.lm, a.lookahead_frames)
        r = out["replay"]
        print(f"replay {Path(a.session).name}: CER {r['cer']:.1%}, {r['keys_matched']}/{r['keys_target']} keys "
              f"matched, key latency median {r['key_latency_ms']['median']} ms, p90 {r['key_latency_ms']['p90']} ms, "
              f"RTF {r['rtf']:.3f}")
    out["load_average_end"] = list(os.getloadavg())
    if a.json:
        atomic_write_json(a.json, out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
