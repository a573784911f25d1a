"""``python -m emgscale.train [CONFIG.yaml ...] [dotted.key=value ...] [--resume [CKPT]] [--overwrite]``.

Trains as the config says, in this process or on Ray Train (``run.workers > 1``, ``run.use_gpu``, a Ray
address): see :func:`emgscale.train.launch`.

``--resume`` continues the run in ``run.out_dir`` with the config saved in its folder (``config.yaml``)
and the command line's ``dotted.key=value`` overrides on top, so the config files only have to name the
run (``python -m emgscale.train configs/single_user.yaml run.max_epochs=40 --resume``). When the folder
has no checkpoint yet, ``--resume`` says so and starts the run fresh. It lists the values it takes from
the stored config; a stored value that would run a shell command (a ``pipe:`` shard URL) is refused
unless the command line or its YAML files give it. Without ``--resume``, a folder that
already holds a run is refused unless ``--overwrite`` replaces it. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys

from emgscale.cli import cli
from emgscale.common import print0
from emgscale.config import to_dict
from emgscale.run_folder import RunFolder
from emgscale.train.config import load_train_config, resumed_config


@cli("python -m emgscale.train")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emgscale.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", help="YAML config files and dotted.key=value overrides")
    parser.add_argument("--resume", nargs="?", const=True, default=False,
                        help="continue the run in run.out_dir (its saved config + these overrides), or from "
                             "the checkpoint given")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in run.out_dir (same as run.overwrite=true)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ns = parser.parse_intermixed_args(argv)
    if isinstance(ns.resume, str) and ("=" in ns.resume or ns.resume.endswith((".yaml", ".yml"))):
        ns.args.append(ns.resume)  # "--resume key=value": the value is an override, not a checkpoint
        ns.resume = True
    files = [a for a in ns.args if "=" not in a]
    overrides = [a for a in ns.args if "=" in a] + (["run.overwrite=true"] if ns.overwrite else [])
    if ns.resume is not False:
        cfg, note = resumed_config(files, overrides, ns.resume)
        if note:
            print0(f"[train] --resume: {note}")
    else:
        cfg = load_train_config(files, overrides)
    if ns.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    from emgscale.train.config import check_train_config

    check_train_config(cfg)  # before torch is imported: a bad value comes back in a fraction of a second
    from emgscale.train.launch import launch

    result = launch(cfg, resume=ns.resume)
    metric = result.best_val_metric.removeprefix("val_").upper()
    print0(f"[train] done: {result.steps} steps on {result.world_size} worker(s), best val {metric} "
           f"{result.best_val_score:.2%}, checkpoints in {RunFolder(result.out_dir).checkpoints}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
