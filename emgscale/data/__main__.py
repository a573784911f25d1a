"""``python -m emgscale.data info PATH [--split SPLIT.yaml] [--json] [--labels] [--skip-bad]``."""

from __future__ import annotations

import argparse
import json
import sys

from emgscale.data.errors import DataError
from emgscale.data.info import dataset_info, format_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emgscale.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="per-session summary of a session file, a data root or a split")
    p.add_argument("path", help="a <session>.hdf5 file or a data root (folder of session files)")
    p.add_argument("--split", help="an official split YAML (PATH must then be the data root)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--labels", action="store_true", help="include each session's label text")
    p.add_argument("--skip-bad", action="store_true", help="report bad files and go on with the others")
    args = parser.parse_args(argv)
    try:
        report = dataset_info(args.path, split=args.split, labels=args.labels, skip_bad=args.skip_bad)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report, args.labels))
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())
