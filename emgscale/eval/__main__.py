"""``python -m emgscale.eval CHECKPOINT --split test|val --decoder greedy|beam [--lm PATH] [--adapt-seconds S] [--out R.json]``."""

from __future__ import annotations

import argparse
import json
import sys

from emgscale.cli import cli
from emgscale.config import from_dict, parse_overrides


@cli("python -m emgscale.eval")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emgscale.eval", description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--split-file", help="split YAML (default: the training config's)")
    p.add_argument("--data-root", help="session folder or BIDS copy (default: the training config's)")
    p.add_argument("--bids-metadata", help="the metadata.csv a BIDS data root was made from, when it has none "
                                           "(default: the training config's data.bids_metadata)")
    p.add_argument("--decoder", default="greedy", help="greedy | beam | flashlight")
    p.add_argument("--lm", help="KenLM binary/ARPA character LM for beam decoding")
    p.add_argument("--weights", default="auto", choices=["auto", "model", "averaged"])
    p.add_argument("--users", help="comma-separated user ids to evaluate")
    p.add_argument("--adapt-seconds", type=float, default=0.0,
                   help="unsupervised test-time adaptation: re-estimate the normalisation per user on this many "
                        "seconds of the user's unlabelled EMG before decoding (default 0: none)")
    p.add_argument("--adapt-part", default="train", choices=["train", "val", "test"],
                   help="the split part whose sessions adaptation reads (default train: the user's training sessions)")
    p.add_argument("--out", help="the JSON result (default: eval-<split>-<part>-<decoder>.json beside the checkpoint)")
    p.add_argument("overrides", nargs="*", help="EvalConfig dotted.key=value, e.g. decoder.beam_size=20")
    a = p.parse_intermixed_args(argv)  # overrides may come before or after the options
    from emgscale.eval import EvalConfig, evaluate

    raw = {"checkpoint": a.checkpoint, "split": a.split, "split_file": a.split_file, "data_root": a.data_root,
           "bids_metadata": a.bids_metadata,
           "weights": a.weights, "out": a.out, "decoder": {"kind": a.decoder, "lm_path": a.lm},
           "users": a.users.split(",") if a.users else None,
           "adapt_seconds": a.adapt_seconds, "adapt_part": a.adapt_part}
    for k, v in parse_overrides(a.overrides).items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    cfg = from_dict(EvalConfig, raw)
    result = evaluate(cfg)
    print(json.dumps({"cer": result["cer"], "rendered_cer": result["rendered_cer"], "summary": result["summary"],
                      "per_user": result["per_user"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
