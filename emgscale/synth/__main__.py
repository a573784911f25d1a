"""``python -m emgscale.synth``: generate a seeded synthetic emg2qwerty corpus.

Examples::

    python -m emgscale.synth --out data/synth                        # 6 users x 6 one-minute sessions
    python -m emgscale.synth --out data/s --users 20 --sessions-per-user 8 --minutes 5 --workers 2
    python -m emgscale.synth --out data/like-real --layout /path/to/metadata.csv --minutes 0.5
    python -m emgscale.synth --out data/s contact_artifact_prob=0 val_sessions_per_user=1
    python -m emgscale.synth fingers --out data/fingers --users 4 --minutes 2   # finger CSVs (8 ch, 200 Hz)

Any :class:`~emgscale.synth.corpus.SynthConfig` field can also be given as ``key=value``.
"""

from __future__ import annotations

import argparse
import sys

from emgscale.cli import cli
from emgscale.config import build_config
from emgscale.synth.corpus import SynthConfig, generate_corpus


@cli("python -m emgscale.synth fingers")
def fingers_main(argv: list[str]) -> int:
    """``python -m emgscale.synth fingers --out DIR [...]``: a synthetic finger corpus (CSV); returns 0."""
    import json

    from emgscale.synth.fingers import FingerSynthConfig, generate_fingers

    ap = argparse.ArgumentParser(prog="python -m emgscale.synth fingers",
                                 description="A synthetic 8-channel 200 Hz finger dataset in the course's CSV format.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--users", type=int)
    ap.add_argument("--sessions-per-user", type=int)
    ap.add_argument("--minutes", type=float, help="minutes per session")
    ap.add_argument("--seed", type=int)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="more FingerSynthConfig fields")
    a = ap.parse_intermixed_args(argv)
    base = {k: v for k, v in {"out": a.out, "users": a.users, "sessions_per_user": a.sessions_per_user,
                              "minutes": a.minutes, "seed": a.seed}.items() if v is not None}
    print(json.dumps(generate_fingers(build_config(FingerSynthConfig, [], a.overrides, base=base)), indent=1))
    return 0


@cli("python -m emgscale.synth")
def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate the corpus, print its summary; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fingers"]:  # the 8-channel 200 Hz finger dataset as CSV (emgscale.synth.fingers)
        return fingers_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m emgscale.synth", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output data root")
    ap.add_argument("--users", type=int, help="number of users (default 6; ignored with --layout)")
    ap.add_argument("--sessions-per-user", type=int, help="sessions per user (default 6; ignored with --layout)")
    ap.add_argument("--minutes", type=float,
                    help="mean session length in minutes (default 1); with --layout, sessions keep the "
                         "layout's relative lengths and their mean is this")
    ap.add_argument("--seed", type=int, help="corpus seed (default 0)")
    ap.add_argument("--heldout-users", type=int,
                    help="users held out for userN.yaml and the generic test set (default 2, or 8 with --layout)")
    ap.add_argument("--workers", type=int, help="parallel processes (default 1)")
    ap.add_argument("--text", help="UTF-8 text to cut prompts from (default: public-domain text shipped with emgscale)")
    ap.add_argument("--layout", help="a real metadata.csv: copy its users, sessions per user, relative "
                                     "lengths and quality-check tags")
    ap.add_argument("--fresh-names", action="store_true",
                    help="with --layout, make new user ids and session names instead of the layout's")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="more SynthConfig fields")
    args = ap.parse_args(argv)
    flags = {"out": args.out, "users": args.users, "sessions_per_user": args.sessions_per_user,
             "minutes": args.minutes, "seed": args.seed, "heldout_users": args.heldout_users,
             "workers": args.workers, "text": args.text, "layout": args.layout}
    base = {k: v for k, v in flags.items() if v is not None}
    if args.fresh_names:
        base["layout_names"] = False
    cfg = build_config(SynthConfig, [], args.overrides, base=base)
    summary = generate_corpus(cfg)
    print(summary.format(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
