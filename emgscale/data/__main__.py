"""``python -m emgscale.data info PATH [--split SPLIT.yaml] [--json] [--labels] [--skip-bad] [--quick]``.

``info`` checks every file: its structure and attributes, and (unless ``--quick``) its values in one
streaming pass — EMG that is NaN/inf, timestamps that go backwards. It exits 0 when every file is good,
1 when ``--skip-bad`` reported bad files, 2 on the first bad file otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

from emgscale.cli import cli
from emgscale.data.info import dataset_info, format_report


@cli("python -m emgscale.data")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emgscale.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="per-session summary and checks of a session file, a data root or a split")
    p.add_argument("path", help="a <session>.hdf5 file or a data root (folder of session files)")
    p.add_argument("--split", help="an official split YAML (PATH must then be the data root)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--labels", action="store_true", help="include each session's label text")
    p.add_argument("--skip-bad", action="store_true", help="report bad files and go on with the others")
    p.add_argument("--quick", action="store_true",
                   help="skip the pass over the values (NaN/inf EMG, timestamps going backwards)")
    args = parser.parse_args(argv)
    report = dataset_info(args.path, split=args.split, labels=args.labels, skip_bad=args.skip_bad,
                          check_values=not args.quick)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report, args.labels))
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())
