"""Decoder speed and accuracy side by side: greedy, native backspace-aware beam search, flashlight-text
and the pure-Python reference, on simulated CTC emissions of typed text.

Emissions: prompts from the package's prompt text (or --text) typed with corrected typos (``c z ⌫ a t``),
turned into peaky CTC posteriors of a confident but noisy model (:mod:`emgscale.decode.simulate`).
LM: a character n-gram (default 6-gram) of the package's LM text (disjoint from the prompts), built once
and cached, or --lm. "wide" is the native search with a 10x beam and no pruning (the exhaustive check).
Speeds are frames per second of the decoding process's CPU time (best of repeats), which a machine shared
with other work does not distort; wall-clock rates are in the JSON. The last lines print the native beam
search's speed over the Python reference's on the same emissions, and both CERs.

    python benchmarks/bench_decode.py                       # 1k / 5k / 20k frames, beam 50, 6-gram
    python benchmarks/bench_decode.py --quick               # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emgscale.common import atomic_write_json, hardware
from emgscale.data.charset import charset
from emgscale.decode import DecoderConfig, build_decoder
from emgscale.decode.simulate import add_typos, simulate_frames
from emgscale.metrics import CERMeter

PKG_DATA = Path(__file__).resolve().parents[1] / "emgscale" / "data"


def prompt_labels(files: list[Path], rng: np.random.Generator, typo_rate: float) -> list[int]:
    """Paragraphs of the prompt text as one typed label stream (paragraphs end with enter)."""
    cs = charset()
    paras = []
    for f in files:
        for p in f.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            p = " ".join(p.split())
            if len(p) > 20:
                paras.append(p)
    order = rng.permutation(len(paras))
    return add_typos(cs.str_to_labels("\u23ce".join(paras[i] for i in order) + "\u23ce"), rng, typo_rate)


def ensure_lm(texts: list[Path], order: int, cache: Path) -> Path:
    """Build (once) the character n-gram of ``texts``; cached by content hash."""
    from emgscale.lm import build_lm

    h = hashlib.sha256(str(order).encode())
    for t in texts:
        h.update(t.read_bytes())
    out = cache / f"char{order}-{h.hexdigest()[:12]}.bin"
    if not out.is_file():
        build_lm(texts, out, order=order, paragraphs=True)
    return out


def timed(fn: Callable[[], Any], min_seconds: float) -> tuple[Any, float, float]:
    """Result of ``fn`` and its best CPU time and best wall time over repeats lasting about ``min_seconds``.

    CPU time is the process's (``time.process_time``): the decoders run on the calling thread.
    """
    best_cpu = best_wall = float("inf")
    total, out = 0.0, None
    while total < min_seconds or best_wall == float("inf"):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        best_cpu, best_wall, total = min(best_cpu, max(cpu, 1e-9)), min(best_wall, wall), total + wall
    return out, best_cpu, best_wall


def run(frames: list[int], lm_path: Path, prompt_files: list[Path], python_frames: int, wide_beam: int,
        beam_size: int, seed: int, typo_rate: float, min_seconds: float) -> dict[str, Any]:
    """Decode simulated emissions of each length with every decoder; returns rows of fps and CER."""
    rng = np.random.default_rng(seed)
    stream = prompt_labels(prompt_files, rng, typo_rate)
    base = dict(lm_path=str(lm_path), beam_size=beam_size)
    specs: dict[str, DecoderConfig] = {
        "greedy": DecoderConfig(kind="greedy"),
        "beam (native)": DecoderConfig(kind="beam", **base),
        f"wide beam {wide_beam} (native, no pruning)": DecoderConfig(
            kind="beam", lm_path=str(lm_path), beam_size=wide_beam, beam_threshold=0.0, label_threshold=0.0),
        "flashlight": DecoderConfig(kind="flashlight", **base),
        "flashlight (10 labels/frame)": DecoderConfig(kind="flashlight", max_labels_per_frame=10, **base),
        "python reference": DecoderConfig(kind="python", **base),
    }
    decoders: dict[str, Any] = {}
    for name, cfg in specs.items():
        try:
            decoders[name] = build_decoder(cfg)
        except Exception as e:  # a missing optional dependency, or an LM order flashlight cannot load
            print(f"[bench] skipping {name}: {type(e).__name__}: {e}", file=sys.stderr)
    rows, checks = [], {}
    for n in frames:
        start = int(rng.integers(0, max(1, len(stream) - n // 5)))
        lp, target = simulate_frames(stream[start:], n, rng)
        outs = {}
        for name, dec in decoders.items():
            if name == "python reference" and n > python_frames:
                continue
            pred, cpu_s, wall_s = timed(lambda: dec.decode(lp), 0.0 if name == "python reference" else min_seconds)
            outs[name] = pred
            meter = CERMeter()
            meter.update(pred, target)
            rows.append({"decoder": name, "frames": n, "seconds": cpu_s, "wall_seconds": wall_s,
                         "frames_per_s": n / cpu_s, "wall_frames_per_s": n / wall_s,
                         "cer": meter.cer, "errors": meter.total.errors, "keys": len(target)})
        if "python reference" in outs and "beam (native)" in outs:
            checks[f"native == python @ {n}"] = outs["python reference"] == outs["beam (native)"]
    return {"rows": rows, "checks": checks}


def table(result: dict[str, Any]) -> str:
    """Markdown table: one row per decoder, frames/s and CER per length."""
    frames = sorted({r["frames"] for r in result["rows"]})
    names = list(dict.fromkeys(r["decoder"] for r in result["rows"]))
    cell = {(r["decoder"], r["frames"]): r for r in result["rows"]}
    head = "| decoder | " + " | ".join(f"{n} fr: frames/s | CER" for n in frames) + " | CER, all lengths |"
    lines = [head, "|---|" + "---:|---:|" * len(frames) + "---:|"]
    for name in names:
        cells = []
        for n in frames:
            r = cell.get((name, n))
            cells += [f"{r['frames_per_s']:,.0f}", f"{r['cer']:.2%}"] if r else ["-", "-"]
        mine = [r for r in result["rows"] if r["decoder"] == name]
        pooled = sum(r["errors"] for r in mine) / max(1, sum(r["keys"] for r in mine))
        cells.append(f"{pooled:.2%}" + ("" if len(mine) == len(frames) else " (partial)"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [f"\n{k}: {'yes' if v else 'NO'}" for k, v in result["checks"].items()]
    for n in frames:  # the native search against its specification, side by side on the same emissions
        nat, ref = cell.get(("beam (native)", n)), cell.get(("python reference", n))
        if nat and ref:
            lines.append(f"native beam / python reference @ {n} frames: {nat['frames_per_s'] / ref['frames_per_s']:,.0f}x "
                         f"CPU time ({nat['wall_frames_per_s'] / ref['wall_frames_per_s']:,.0f}x wall); "
                         f"CER {nat['cer']:.2%} vs {ref['cer']:.2%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the table (and write JSON with --json)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[1000, 5000, 20000])
    p.add_argument("--lm", type=Path, default=None, help="KenLM model to use (default: build from --lm-text)")
    p.add_argument("--lm-text", type=Path, nargs="+", default=sorted((PKG_DATA / "lm_text").glob("*.txt")))
    p.add_argument("--lm-order", type=int, default=6)
    p.add_argument("--text", type=Path, nargs="+", default=sorted((PKG_DATA / "text").glob("*.txt")),
                   help="prompt text typed in the simulated emissions")
    p.add_argument("--beam-size", type=int, default=50)
    p.add_argument("--wide-beam", type=int, default=500)
    p.add_argument("--python-frames", type=int, default=1000, help="longest input for the slow Python reference")
    p.add_argument("--typo-rate", type=float, default=0.03)
    p.add_argument("--min-seconds", type=float, default=1.0, help="repeat fast decoders for this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "emgscale" / "bench_decode")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny run: 300 frames, 3-gram, beam 10, wide beam 50")
    a = p.parse_args(argv)
    if a.quick:
        a.frames, a.lm_order, a.beam_size, a.wide_beam, a.python_frames, a.min_seconds = [300], 3, 10, 50, 300, 0.0
    if not a.text or (a.lm is None and not a.lm_text):
        p.error("no prompt / LM text found: pass --text and --lm-text (or --lm)")
    lm = a.lm or ensure_lm(a.lm_text, a.lm_order, a.cache)
    t0 = time.perf_counter()
    result = run(a.frames, lm, a.text, a.python_frames, a.wide_beam, a.beam_size, a.seed, a.typo_rate,
                 a.min_seconds)
    result.update(lm=str(lm), lm_order=a.lm_order if a.lm is None else None, beam_size=a.beam_size,
                  wall_s=time.perf_counter() - t0, hardware=hardware())
    print(f"Decoding simulated emissions (99 classes), beam {a.beam_size}, LM {lm.name}; "
          "frames/s = frames / best CPU time of the process")
    print(table(result))
    if a.json:
        atomic_write_json(a.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
