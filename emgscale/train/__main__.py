"""``python -m emgscale.train [CONFIG.yaml ...] [dotted.key=value ...] [--resume [CKPT]]``.

Trains as the config says, in this process or on Ray Train (``run.workers > 1``, ``run.use_gpu``, a Ray
address): see :func:`emgscale.train.launch`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emgscale.common import print0
from emgscale.config import ConfigError, to_dict
from emgscale.train.config import load_train_config
from emgscale.train.launch import launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emgscale.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", help="YAML config files and dotted.key=value overrides")
    parser.add_argument("--resume", nargs="?", const=True, default=False,
                        help="continue from <out_dir>/checkpoints/last.pt, or from the checkpoint given")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ns = parser.parse_args(argv)
    files = [a for a in ns.args if "=" not in a]
    overrides = [a for a in ns.args if "=" in a]
    try:
        cfg = load_train_config(files, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if ns.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    result = launch(cfg, resume=ns.resume)
    from emgscale.train.objective import OBJECTIVES

    metric = getattr(OBJECTIVES.get(cfg.loss.kind), "metric", "val_cer").removeprefix("val_").upper()
    print0(f"[train] done: {result.steps} steps on {result.world_size} worker(s), best val {metric} "
           f"{result.best_val_cer:.2%}, checkpoints in {Path(result.out_dir) / 'checkpoints'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
