"""Shard emg2qwerty sessions into WebDataset tar files, or verify a shard folder.

    python -m emgscale.shard --data-root DATA --split generic.yaml --out SHARDS [--workers 8]
    python -m emgscale.shard --data-root DATA --users 89335547 --parts train --out SHARDS
    python -m emgscale.shard verify SHARDS
    python -m emgscale.shard estimate --metadata DATA/metadata.csv --split generic.yaml

See sharding/README.md for the recipes at each scale, the sizes to expect and the Ray example.
"""

from __future__ import annotations

import argparse
import json
import sys

from emgscale.cli import cli
from emgscale.data.window_spec import WindowSpec
from emgscale.shard.build import default_workers, shard_corpus
from emgscale.shard.estimate import estimate_sizes, format_estimate
from emgscale.shard.plan import ShardConfig
from emgscale.shard.verify import verify_shards


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _write_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emgscale.shard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="folder of <session>.hdf5 files, or a BIDS copy of them")
    p.add_argument("--out", required=True, help="output folder (OUT/<part>/*.tar and OUT/manifest.json)")
    _content_options(p)
    p.add_argument("--workers", type=int, default=None, help="local writer processes (default: CPUs, at most 8)")
    p.add_argument("--ray-address", help="write with Ray tasks on this cluster: 'local' (a private instance), "
                        "'auto' (yours on this machine) or an address (host:6379, ray://host:10001)")
    p.add_argument("--skip-bad", action="store_true", help="report bad sessions, leave them out and go on")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    return p


def _content_options(p: argparse.ArgumentParser) -> None:
    d = ShardConfig()
    p.add_argument("--split", help="official split YAML (e.g. generic.yaml); without it: all sessions under "
                                   "--data-root into the one part given by --parts")
    p.add_argument("--bids-metadata", help="the metadata.csv a BIDS --data-root was made from, when it has none")
    p.add_argument("--users", type=_csv, help="keep only these users (comma-separated ids)")
    p.add_argument("--sessions", type=_csv, help="keep only these session names (comma-separated)")
    p.add_argument("--parts", type=_csv, default=None, help="parts to write (default: train,val,test with a split)")
    p.add_argument("--window-samples", type=int, default=d.window.window_samples)
    p.add_argument("--stride-samples", type=int, default=d.window.stride_samples, help="default: the window")
    p.add_argument("--pad-left-samples", type=int, default=d.window.pad_left_samples)
    p.add_argument("--pad-right-samples", type=int, default=d.window.pad_right_samples)
    p.add_argument("--train-windows-per-record", type=int, default=d.train_windows_per_record,
                   help="training windows stored per record with their jitter context (default %(default)s)")
    p.add_argument("--eval-mode", choices=("windows", "session"), help="set both --val-mode and --test-mode")
    p.add_argument("--val-mode", choices=("windows", "session"), default=d.val_mode)
    p.add_argument("--test-mode", choices=("windows", "session"), default=d.test_mode)
    p.add_argument("--dtype", choices=("float16", "float32"), default=d.dtype,
                   help="EMG storage (default %(default)s; records that float16 cannot hold within "
                        "--min-float16-snr-db are stored as float32)")
    p.add_argument("--min-float16-snr-db", type=float, default=d.min_float16_snr_db)
    p.add_argument("--shard-size-mb", type=float, default=d.shard_size_mb)
    p.add_argument("--max-samples-per-shard", type=int, default=d.max_samples_per_shard)
    p.add_argument("--group-shards", type=int, default=d.group_shards,
                   help="training shards per shuffling group (records are mixed across a group's sessions)")
    p.add_argument("--seed", type=int, default=d.seed)


def config_from_args(args: argparse.Namespace) -> ShardConfig:
    """The :class:`ShardConfig` of parsed ``write`` (or ``estimate``) arguments."""
    parts = args.parts or (["train", "val", "test"] if args.split else ["train"])
    return ShardConfig(
        data_root=getattr(args, "data_root", ""), out=getattr(args, "out", ""), split=args.split,
        bids_metadata=getattr(args, "bids_metadata", None), users=args.users, sessions=args.sessions,
        parts=parts, window=WindowSpec(args.window_samples, args.stride_samples, args.pad_left_samples,
                                       args.pad_right_samples, jitter=True),
        train_windows_per_record=args.train_windows_per_record, val_mode=args.eval_mode or args.val_mode,
        test_mode=args.eval_mode or args.test_mode, dtype=args.dtype, min_float16_snr_db=args.min_float16_snr_db,
        shard_size_mb=args.shard_size_mb, max_samples_per_shard=args.max_samples_per_shard,
        group_shards=args.group_shards, seed=args.seed,
        workers=getattr(args, "workers", None) or default_workers(), ray_address=getattr(args, "ray_address", None),
        skip_bad=getattr(args, "skip_bad", False), progress=not getattr(args, "no_progress", False))


@cli("python -m emgscale.shard")
def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv and argv[0] == "verify":
        p = argparse.ArgumentParser(prog="python -m emgscale.shard verify",
                                    description="Check every shard against OUT/manifest.json (exists, size, "
                                                "sha256, readable tar, sample count); exit 1 when any is bad.")
        p.add_argument("out", help="the shard folder")
        p.add_argument("--no-hash", action="store_true", help="skip sha256 (size, tar and counts only)")
        args = p.parse_args(argv[1:])
        report = verify_shards(args.out, hash_check=not args.no_hash)
        print(report.format())
        return 0 if report.ok else 1
    if argv and argv[0] == "estimate":
        p = argparse.ArgumentParser(prog="python -m emgscale.shard estimate",
                                    description="Expected shard sizes from a metadata.csv, before sharding.")
        p.add_argument("--metadata", required=True, help="a metadata.csv (or a data root holding one)")
        _content_options(p)
        args = p.parse_args(argv[1:])
        print(format_estimate(estimate_sizes(args.metadata, config_from_args(args))))
        return 0
    if argv and argv[0] == "write":
        argv = argv[1:]
    args = _write_parser().parse_args(argv)
    cfg = config_from_args(args)
    manifest = shard_corpus(cfg)
    if args.json:
        print(json.dumps({"parts": manifest.parts, "skipped": manifest.skipped}, indent=2))
    else:
        for part, s in manifest.parts.items():
            print(f"{part}: {s['num_shards']} shards, {s['num_records']} records, {s['num_windows']} windows, "
                  f"{s['num_sessions']} sessions of {s['num_users']} users, {s['emg_hours']:.2f} h of EMG, "
                  f"{s['gb']:.3f} GB ({s['kind']})")
        for s in manifest.skipped:
            print(f"skipped {s['path']}: {s['reason']}")
        print(f"manifest: {cfg.out}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
