"""``python -m emgscale.swad``: look at a run's SWAD segments and re-average any range afterwards.

    python -m emgscale.swad show RUN
    python -m emgscale.swad average RUN [--from STEP --to STEP] [--out FILE] [--bn-batches N] [--device cpu]

``RUN`` is the training ``run.out_dir``. ``average`` without a range re-applies the loss-valley rule;
with one it averages every segment whose steps lie in ``[--from, --to)`` (steps as the training log
numbers them), recomputes the norm statistics and writes a checkpoint that ``python -m emgscale.eval``
reads (default ``RUN/swad/average-<from>-<to>.pt``).
"""

from __future__ import annotations

import argparse
import sys

from emgscale.cli import cli
from emgscale.run_folder import RunFolder
from emgscale.swad.posthoc import write_average
from emgscale.swad.store import read_index


def _show(run: str) -> None:
    index = read_index(RunFolder(run).swad)
    v = index["valley"]
    print(f"mode {index['mode']}: valley start {v['start']} end {v['end']} threshold {v['threshold']:.4g}"
          f"{' (ended)' if v['dead'] else ''}")
    print(f"{'seg':>4} {'steps':>17} {'count':>6} {'val_loss':>9}  status   file")
    for s in index["segments"]:
        steps = f"[{s['start_step']}, {s['end_step']})"
        print(f"{s['index']:>4} {steps:>17} {s['count']:>6} {s['val_loss']:>9.4f}  {s['status']:<8} {s['file'] or '-'}")


def _check_stored_data(run: str) -> None:
    """The run's stored data config is data, not commands: a ``pipe:`` shard URL in it is refused before
    ``average`` reads the shards it names (:func:`emgscale.config.check_stored_values`)."""
    from emgscale.config import check_stored_values, from_dict
    from emgscale.loader import DataConfig
    from emgscale.models.checkpoint import load_checkpoint
    from emgscale.run_folder import RunFolder

    path = RunFolder(run).last
    check_stored_values(from_dict(DataConfig, load_checkpoint(path).config.get("data", {}), "data"), path, prefix="data")


@cli("python -m emgscale.swad")
def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m emgscale.swad", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the run's segment index")
    show.add_argument("run")
    avg = sub.add_parser("average", help="re-average the valley or a step range into a checkpoint")
    avg.add_argument("run")
    avg.add_argument("--from", dest="from_step", type=int, default=None, help="first step (inclusive)")
    avg.add_argument("--to", dest="to_step", type=int, default=None, help="last step (exclusive)")
    avg.add_argument("--out", default=None, help="output checkpoint (default RUN/swad/average-<from>-<to>.pt)")
    avg.add_argument("--bn-batches", type=int, default=None, help="batches for norm statistics (default: the run's)")
    avg.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.command == "show":
        _show(args.run)
        return 0
    _check_stored_data(args.run)
    path, result = write_average(args.run, args.out, args.from_step, args.to_step, args.bn_batches, args.device)
    segs = result.segments
    print(f"[swad] averaged {len(segs)} segments (steps [{segs[0]['start_step']}, {segs[-1]['end_step']}), "
          f"{result.steps} steps) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
