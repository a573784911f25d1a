"""How much unlabelled EMG does test-time adaptation need? CER of a generic model on held-out users vs
seconds of each user's unlabelled EMG its normalisation is re-estimated on (:mod:`emgscale.models.adapt`).

    python benchmarks/bench_adapt.py --checkpoint GENERIC/checkpoints/best.pt --data-root DATA \\
        --splits HELDOUT_USER1.yaml HELDOUT_USER2.yaml ... [--seconds 0,5,15,30,60,120] \\
        [--part test] [--adapt-part train] [--out adapt.json]

Each split is a held-out user's split (the ``user*.yaml`` files of the reference, or a benchmark's
held-out splits): the model decodes the sessions of ``--part`` (greedy, no LM) after adapting, per user,
on the first S seconds of that user's sessions of ``--adapt-part`` (labels never read); S = 0 is the
generic model as it is. Prints, per S, the pooled CER, the mean and population std of the per-user
CERs and the EMG actually read (a user with fewer seconds of ``--adapt-part`` EMG uses all of it);
``--out`` writes every per-user figure as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emgscale.cli import cli  # noqa: E402


def measure(checkpoint: str, data_root: str, splits: list[str], seconds: list[float], *, part: str = "test",
            adapt_part: str = "train", device: str = "auto", which: str = "auto") -> list[dict[str, Any]]:
    """One row per adaptation length: pooled and per-user greedy CER over the splits' ``part`` sessions."""
    from emgscale.decode import DecoderConfig, build_decoder
    from emgscale.eval import score, split_emissions

    decoder = build_decoder(DecoderConfig(kind="greedy"))
    rows = []
    for s in seconds:
        t0 = time.monotonic()
        emissions = [e for split in splits for e in split_emissions(
            checkpoint, data_root, split, part, which=which, device=device, adapt_seconds=s, adapt_part=adapt_part)]
        meter = score(emissions, decoder)
        per_user = {str(u): d["cer"] for u, d in meter.per_user().items()}
        used = {str(e["user"]): (e["adaptation"] or {}).get("seconds", 0.0) for e in emissions}
        cers = list(per_user.values())
        rows.append({"adapt_seconds": s, "cer": meter.cer, "user_cer_mean": statistics.fmean(cers),
                     "user_cer_std": statistics.pstdev(cers), "users": len(cers), "per_user_cer": per_user,
                     "per_user_adapt_seconds_used": used, "wall_s": time.monotonic() - t0})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The plain-text table of :func:`measure`'s rows."""
    head = f"{'adapt s':>8} {'pooled CER':>11} {'user CER mean ± std':>22} {'users':>6} {'EMG read (mean s)':>18}"
    lines = [head, "-" * len(head)]
    for r in rows:
        used = statistics.fmean(r["per_user_adapt_seconds_used"].values())
        lines.append(f"{r['adapt_seconds']:>8g} {100 * r['cer']:>10.2f}% {100 * r['user_cer_mean']:>12.2f}% ± "
                     f"{100 * r['user_cer_std']:>5.2f}% {r['users']:>6} {used:>18.1f}")
    return "\n".join(lines)


@cli("benchmarks/bench_adapt.py")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the generic model (file or run's checkpoint folder)")
    p.add_argument("--data-root", required=True, help="the session files")
    p.add_argument("--splits", nargs="+", required=True, help="held-out users' split YAML files")
    p.add_argument("--seconds", default="0,5,15,30,60,120", help="adaptation lengths, comma-separated")
    p.add_argument("--part", default="test", choices=["train", "val", "test"], help="the sessions decoded")
    p.add_argument("--adapt-part", default="train", choices=["train", "val", "test"],
                   help="the sessions whose unlabelled EMG adaptation reads")
    p.add_argument("--weights", default="auto", choices=["auto", "model", "averaged"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    from emgscale.common import atomic_write_json, git_commit, hardware
    from emgscale.config import ConfigError

    try:
        seconds = [float(s) for s in a.seconds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seconds={a.seconds!r}: expected numbers separated by commas") from None
    if not seconds or any(not 0 <= s < float("inf") for s in seconds):
        raise ConfigError(f"--seconds={a.seconds!r}: expected finite numbers >= 0")
    for path, what in [(a.checkpoint, "--checkpoint"), (a.data_root, "--data-root"), *((s, "--splits") for s in a.splits)]:
        if not Path(path).exists():
            raise ConfigError(f"{what}={path!r}: no such file or folder")
    rows = measure(a.checkpoint, a.data_root, a.splits, seconds, part=a.part, adapt_part=a.adapt_part,
                   device=a.device, which=a.weights)
    print(f"test-time adaptation of {a.checkpoint} on {len(a.splits)} held-out split(s), part {a.part}, "
          f"greedy decoding; adaptation EMG from part {a.adapt_part}")
    print(format_rows(rows))
    if a.out:
        atomic_write_json(a.out, {"checkpoint": a.checkpoint, "data_root": a.data_root, "splits": a.splits,
                                  "part": a.part, "adapt_part": a.adapt_part, "decoder": "greedy", "rows": rows,
                                  "git_commit": git_commit(), "hardware": hardware()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
