"""``python -m emgscale.bench single_user|zero_shot|personalized|few_shot|sweep|all|demo [options]``.

``zero_shot --recipes reference,s4d,...`` compares generic-model recipes in one table (:mod:`emgscale.bench.recipes`).

``all`` and ``demo`` with ``--jobs J > 1`` run their suites side by side, J training runs or evaluations at a
time over all of them (:mod:`emgscale.bench.together`).

``demo`` is the README's main job: the default synthetic corpus -> shards -> a small generic model
-> zero-shot and personalized evaluation -> tables and plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emgscale.cli import cli

#: Names that run several suites (``all``: every suite of :data:`emgscale.bench.suites.SUITES`).
GROUPS = {"demo": ["zero_shot", "personalized"]}
#: Definition settings a group changes: the demo leaves the causal generic model out (it doubles the
#: generic training time; `bench zero_shot` and `bench all` have it).
GROUP_DEFINITIONS = {"demo": {"causal_arch": None}}


@cli("python -m emgscale.bench")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emgscale.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", help="a suite (single_user, zero_shot, ...), all, or demo")
    p.add_argument("--budget", default="small", help="tiny | small | paper (default small)")
    p.add_argument("--out", default="results", help="results folder (default results/)")
    p.add_argument("--cache", help="reuse corpora/shards/checkpoints from here (default: $EMGSCALE_CACHE, else "
                                   "$XDG_CACHE_HOME/emgscale/bench, else ~/.cache/emgscale/bench; shared by every "
                                   "--out, keyed by content)")
    p.add_argument("--data-root", help="session files (real data, HDF5 or a BIDS copy); default: the synthetic corpus")
    p.add_argument("--bids-metadata", type=Path,
                   help="the metadata.csv a BIDS --data-root was made from, when it has none")
    p.add_argument("--splits-dir", help="split YAMLs (generic.yaml, user0.yaml..., single_user.yaml)")
    p.add_argument("--definitions", help="benchmark definitions folder (default: the package's, "
                                         "emgscale/bench/definitions/)")
    p.add_argument("--configs", help="configs folder (default: the package's, emgscale/configs/)")
    p.add_argument("--lm-text", nargs="*", type=Path, help="text files for the character LM")
    p.add_argument("--generic-checkpoint", type=Path,
                   help="start from this generic model instead of training one: an emgscale checkpoint or a "
                        "reference Lightning checkpoint such as Meta's generic.ckpt (zero_shot evaluates it; "
                        "personalized and few_shot fine-tune it)")
    p.add_argument("--recipes", help="zero_shot only: compare these generic-model recipes (comma list of names "
                                     "under recipes: in zero_shot.yaml, e.g. reference,splashnet,s4d,student,"
                                     "student_no_teacher,adapt) in one table, <out>/zero_shot_recipes/")
    p.add_argument("--seeds", type=int, help="training seeds per recipe with --recipes (default: the definition's, 1)")
    p.add_argument("--shard-workers", type=int, default=1, help="shard-writing processes (default 1)")
    p.add_argument("--workers", type=int, help=argparse.SUPPRESS)  # the old name: refused with the new ones
    p.add_argument("--jobs", type=int, default=1,
                   help="independent training runs side by side: a GPU each (round robin), or cores/jobs "
                        "threads each on a CPU machine; all and demo run their suites at once on these J places "
                        "(default 1)")
    p.add_argument("overrides", nargs="*",
                   help="dotted.key=value for every training run, e.g. run.workers=8 run.use_gpu=true "
                        "(each run on 8 Ray Train DDP workers)")
    a = p.parse_intermixed_args(argv)  # overrides may come before or after the options
    from emgscale.bench.budget import get_budget
    from emgscale.config import ConfigError
    from emgscale.train.config import load_train_config

    if a.workers is not None:
        raise ConfigError(f"--workers is now --shard-workers {a.workers} (shard-writing processes); for DDP "
                          f"training workers give run.workers={a.workers}")
    load_train_config([], a.overrides)  # unknown keys and wrong types in the overrides: before torch loads
    get_budget(a.budget)  # an unknown budget fails now, not after the corpus is made
    for flag, path in (("--data-root", a.data_root), ("--splits-dir", a.splits_dir), ("--definitions", a.definitions),
                       ("--configs", a.configs)):
        if path is not None and not Path(path).is_dir():
            raise ConfigError(f"{flag} {path}: no such folder")
    if a.bids_metadata is not None and not a.bids_metadata.is_file():
        raise ConfigError(f"--bids-metadata {a.bids_metadata}: no such file")
    for path in a.lm_text or ():
        if not path.is_file():
            raise ConfigError(f"--lm-text {path}: no such file")
    from emgscale.bench.runner import run_benchmark
    from emgscale.bench.suites import SUITES

    known = [*SUITES, "all", *GROUPS]
    if a.benchmark not in known:
        raise ConfigError(f"unknown benchmark {a.benchmark!r}; choose from {', '.join(known)}")

    if a.generic_checkpoint is not None:
        from emgscale.models.checkpoint import load_checkpoint

        load_checkpoint(a.generic_checkpoint)  # a missing or unreadable file fails now, with its name
    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()] if a.recipes is not None else None
    if recipes is not None:
        if a.benchmark != "zero_shot":
            raise ConfigError(f"--recipes compares generic models: use it with zero_shot, not {a.benchmark}")
        if not recipes:
            raise ConfigError("--recipes: give a comma list of recipe names (zero_shot.yaml recipes:)")
        if a.generic_checkpoint is not None:
            raise ConfigError("--recipes trains its generic models: it does not take --generic-checkpoint")
    if a.seeds is not None and (a.seeds < 1 or recipes is None):
        raise ConfigError(f"--seeds {a.seeds}: give a count >= 1, with --recipes")
    names = list(SUITES) if a.benchmark == "all" else GROUPS.get(a.benchmark, [a.benchmark])
    kwargs = dict(out=a.out, budget=a.budget, data_root=a.data_root, splits_dir=a.splits_dir,
                  cache=a.cache, definitions_dir=a.definitions, configs_dir=a.configs, lm_texts=a.lm_text,
                  shard_workers=a.shard_workers, jobs=a.jobs, overrides=a.overrides,
                  generic_checkpoint=a.generic_checkpoint,
                  definition_overrides=GROUP_DEFINITIONS.get(a.benchmark), bids_metadata=a.bids_metadata,
                  recipes=recipes, seeds=a.seeds)
    # The plan first (every training run of every suite), so that the ETA covers the whole benchmark.
    from emgscale.bench.plan import set_plan
    from emgscale.common import print0

    print0(f"[bench] planning the training runs of {', '.join(names)} (corpora, shards and the LM are made now)")
    planned: dict = {}
    for name in names:
        planned.update(run_benchmark(name, **kwargs, plan_only=True)["planned"])
    set_plan(planned)
    print0(f"[bench] {len(planned)} training runs to make, "
           f"{sum(steps or 0 for steps, _ in planned.values())} steps in all")
    if a.jobs > 1 and len(names) > 1:  # suites side by side on one pool of --jobs workers
        from emgscale.bench.together import run_side_by_side

        kwargs.pop("jobs")
        run_side_by_side(names, a.jobs, **kwargs)
        return 0
    for name in names:
        run_benchmark(name, **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
