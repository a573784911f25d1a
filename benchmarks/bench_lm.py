"""The character LM's CER gain on a trained model: greedy vs beam + KenLM over LM weight x insertion bonus.

    python benchmarks/bench_lm.py CHECKPOINT --lm LM.bin [--split-file S.yaml] [--data-root D]
                                  [--weights 0,0.5,1,2] [--bonus 0,1,2] [--beam 50] [--out lm_gain.json]

Whole-session log-probs of the checkpoint's val and test sessions are computed once (the paper's
whole-session test, :func:`emgscale.eval.session_emissions`); then every (LM weight, insertion
bonus) pair decodes them with the native backspace-aware beam search. The setting with the lowest *val*
CER is chosen and its *test* CER reported next to greedy, so the gain is not tuned on the test set.
The reference's defaults (weight 2, bonus 2) are always in the grid.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emgscale.common import atomic_write_json, hardware  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--lm", required=True, help="KenLM character n-gram (python -m emgscale.lm build)")
    p.add_argument("--split-file", default=None, help="split YAML (default: the training config's)")
    p.add_argument("--data-root", default=None, help="session folder (default: the training config's)")
    p.add_argument("--weights", default="0,0.5,1,2", help="LM weights to try (comma-separated)")
    p.add_argument("--bonus", default="0,1,2", help="insertion bonuses to try (comma-separated)")
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--out", default=None, help="also write the JSON result here")
    a = p.parse_args(argv)

    from emgscale.data.splits import load_split
    from emgscale.decode import DecoderConfig, build_decoder
    from emgscale.eval import load_model, score, session_emissions

    model, tcfg = load_model(a.checkpoint)
    split = load_split(a.split_file or tcfg.data.split)
    root = a.data_root or tcfg.data.data_root
    em = {part: list(session_emissions(model, root, split[part], device="cpu",
                                       sample_rate_hz=tcfg.model.features.input_sample_rate_hz, desc=part))
          for part in ("val", "test")}
    frames = {part: sum(len(e["log_probs"]) for e in em[part]) for part in em}

    def cer(cfg: DecoderConfig) -> dict[str, float]:
        dec = build_decoder(cfg)
        out = {}
        for part in ("val", "test"):
            t0 = time.perf_counter()
            out[part] = score(em[part], dec).cer
            out[f"{part}_frames_per_s"] = frames[part] / max(time.perf_counter() - t0, 1e-9)
        return out

    greedy = cer(DecoderConfig(kind="greedy"))
    grid = sorted(set(itertools.product(_floats(a.weights), _floats(a.bonus))) | {(2.0, 2.0)})
    rows = []
    for w, b in grid:
        r = cer(DecoderConfig(kind="beam", lm_path=a.lm, beam_size=a.beam, lm_weight=w, insertion_bonus=b))
        rows.append({"lm_weight": w, "insertion_bonus": b, **r})
    best = min(rows, key=lambda r: (r["val"], r["lm_weight"] != 2.0 or r["insertion_bonus"] != 2.0))
    default = next(r for r in rows if r["lm_weight"] == 2.0 and r["insertion_bonus"] == 2.0)

    print(f"# {hardware()}")
    print(f"# {a.checkpoint}: {len(em['val'])} val / {len(em['test'])} test sessions, "
          f"{frames['val']} / {frames['test']} frames; beam {a.beam}, LM {a.lm}")
    print(f"{'decoder':<28}{'val CER':>9}{'test CER':>10}{'frames/s':>11}")
    print(f"{'greedy':<28}{100 * greedy['val']:>8.2f}%{100 * greedy['test']:>9.2f}%{greedy['val_frames_per_s']:>11.0f}")
    for r in rows:
        mark = "  <- best on val" if r is best else ("  (reference defaults)" if r is default else "")
        name = f"beam+LM w={r['lm_weight']:g} bonus={r['insertion_bonus']:g}"
        print(f"{name:<28}{100 * r['val']:>8.2f}%{100 * r['test']:>9.2f}%{r['val_frames_per_s']:>11.0f}{mark}")
    print(f"LM gain on test at the val-chosen setting: {100 * (greedy['test'] - best['test']):+.2f} CER points "
          f"(greedy {100 * greedy['test']:.2f}% -> {100 * best['test']:.2f}%)")
    result = {"checkpoint": a.checkpoint, "lm": a.lm, "beam": a.beam, "greedy": greedy, "grid": rows,
              "best_on_val": best, "reference_defaults": default, "hardware": hardware()}
    if a.out:
        atomic_write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
