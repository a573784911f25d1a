"""``python -m emgscale.tune SEARCH.yaml [dotted.key=value ...]``: a Ray Tune search (see :mod:`emgscale.tune`)."""

from __future__ import annotations

import argparse
import sys

from emgscale.cli import cli
from emgscale.config import build_config
from emgscale.tune import SearchConfig, run_search
from emgscale.tune import __doc__ as tune_doc


@cli("python -m emgscale.tune")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emgscale.tune", description=tune_doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("search", help="search YAML (base config, space, metric, scheduler, resources)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the search file")
    ns = parser.parse_args(argv)
    search = build_config(SearchConfig, [ns.search], ns.overrides)
    result = run_search(search)
    print(f"\n{result.table_md}\n")
    if result.best is None:
        print("[tune] no trial reported the metric", file=sys.stderr)
        return 1
    params = " ".join(f"{k}={v}" for k, v in result.best["params"].items())
    rank = search.rank_by or search.metric
    print(f"[tune] best trial {result.best['trial']}: {rank} {result.best[rank]:.4g} with {params}")
    print(f"[tune] results in {result.out_dir}/results.md; train the best config with:\n"
          f"  python -m emgscale.train {result.out_dir}/best_config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
