"""``python -m emgscale.data info PATH [--split SPLIT.yaml] [--json] [--labels] [--skip-bad] [--quick]
[--bids-metadata CSV]``.

``python -m emgscale.data to-bids HDF5_ROOT BIDS_ROOT [--copy-metadata]`` writes the BIDS copy of an HDF5
data root as Meta's ``scripts/convert_to_bids.py`` does (no MNE needed).

PATH may be a BIDS copy (Meta's ``convert_to_bids.py`` layout) or one of its ``.vhdr`` recordings.

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
    p.add_argument("path", help="a <session>.hdf5 file, a BIDS .vhdr, or a data root (HDF5 files or a BIDS copy)")
    p.add_argument("--split", help="an official split YAML (PATH must then be the data root)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--labels", action="store_true", help="include each session's label text")
    p.add_argument("--skip-bad", action="store_true", help="report bad files and go on with the others")
    p.add_argument("--quick", action="store_true",
                   help="skip the pass over the values (NaN/inf EMG, timestamps going backwards)")
    p.add_argument("--bids-metadata", help="the metadata.csv a BIDS copy was made from, when its root has none "
                                           "(gives its sub-NN/ses-NN recordings their HDF5 session names)")
    t = sub.add_parser("to-bids", help="write the BIDS copy of an HDF5 data root, as Meta's convert_to_bids.py")
    t.add_argument("data_root", help="HDF5 data root with its metadata.csv")
    t.add_argument("bids_root", help="output folder")
    t.add_argument("--copy-metadata", action="store_true",
                   help="also copy metadata.csv into it (Meta's converter does not)")
    args = parser.parse_args(argv)
    if args.command == "to-bids":
        from emgscale.data.bids_export import export_bids

        written = export_bids(args.data_root, args.bids_root, copy_metadata=args.copy_metadata)
        print(f"wrote {len(written)} recordings under {args.bids_root}")
        return 0
    report = dataset_info(args.path, split=args.split, labels=args.labels, skip_bad=args.skip_bad,
                          check_values=not args.quick, bids_metadata=args.bids_metadata)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report, args.labels))
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())
