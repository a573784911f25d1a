"""``python -m emgscale.stream CKPT SESSION.hdf5 [--realtime] [--chunk-ms 40] [--decoder greedy|beam]``.

Replays a recorded session through a causal checkpoint chunk by chunk (at real time with
``--realtime``, else as fast as possible), prints the decoded text as it is committed, then reports
per-chunk compute, real-time factor, the model's algorithmic delay and the key latency from each
logged press to its emission (JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys

from emgscale.cli import cli
from emgscale.data.charset import charset


@cli("python -m emgscale.stream")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emgscale.stream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint of a causal model (or a run's checkpoints/ folder)")
    p.add_argument("session", help="session file to replay (HDF5, or a BIDS recording's .vhdr)")
    p.add_argument("--realtime", action="store_true", help="pace the replay by the session clock")
    p.add_argument("--chunk-ms", type=float, default=40.0, help="chunk length in ms (default 40)")
    p.add_argument("--decoder", default="greedy", choices=["greedy", "beam"])
    p.add_argument("--lm", help="KenLM character LM for --decoder beam")
    p.add_argument("--beam-size", type=int, default=50)
    p.add_argument("--lm-weight", type=float, default=2.0)
    p.add_argument("--lookahead-frames", type=int, default=None,
                   help="beam: commit the best hypothesis's keys this many frames after they appear "
                        "(default: only when every hypothesis agrees)")
    p.add_argument("--weights", default="model", choices=["model", "averaged"])
    p.add_argument("--max-seconds", type=float, help="replay only the first seconds of the session")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="do not print the text live")
    p.add_argument("--json", help="write the report here")
    a = p.parse_args(argv)
    if a.chunk_ms <= 0:
        raise ValueError(f"--chunk-ms must be > 0, got {a.chunk_ms}")

    import torch

    from emgscale.common import atomic_write_json
    from emgscale.decode import DecoderConfig
    from emgscale.eval import load_model
    from emgscale.stream import Streamer, online_decoder, replay_session

    torch.set_num_threads(max(1, a.threads))
    cs = charset()

    def show(new: list[int], _partial: list[int]) -> None:
        if new:
            sys.stdout.write(cs.labels_to_str(new).replace("⏎", "⏎\n"))
            sys.stdout.flush()

    model, _ = load_model(a.checkpoint, which=a.weights)
    streamer = Streamer(model)  # NotStreamable (a ValueError) names the setting that keeps a model offline
    decoder = online_decoder(DecoderConfig(kind=a.decoder, lm_path=a.lm, beam_size=a.beam_size,
                                           lm_weight=a.lm_weight), a.lookahead_frames)
    result = replay_session(streamer, a.session, chunk_ms=a.chunk_ms, decoder=decoder, realtime=a.realtime,
                            max_seconds=a.max_seconds, on_keys=None if a.quiet else show)
    report = {"checkpoint": a.checkpoint, "session": a.session, "decoder": a.decoder,
              "lookahead_frames": a.lookahead_frames, "threads": a.threads, **result.summary()}
    if not a.quiet:
        print()
    print(json.dumps(report, indent=2))
    if a.json:
        atomic_write_json(a.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
