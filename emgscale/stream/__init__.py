"""Real-time decoding: streaming inference of causal models, online decoding, latency, export.

>>> from emgscale.stream import Streamer, OnlineGreedy
>>> streamer, decoder = Streamer(model), OnlineGreedy()
>>> for chunk in chunks:                        # (n, 2, 16) raw EMG as it arrives, any n
...     keys = decoder.push(streamer.push(chunk))   # labels final as of this chunk
>>> keys = decoder.push(streamer.flush()) + decoder.finish()

* :class:`Streamer` (``streamer.py``): pushes of any size give the offline forward's log-probs;
  every stage keeps its state (``step.py`` chains the streaming steps of the feature norm and the
  encoder, which live beside their offline forward: :mod:`emgscale.models.streaming`).
* :class:`OnlineGreedy`, :class:`OnlineBeam` (``decoding.py``): keys committed once final.
* :func:`replay_session` (``replay.py``): replays a session, per-chunk compute, real-time factor,
  key latency from logged press to emission.
* :func:`export_step` (``export.py``): the step as a ``torch.export`` program (TorchScript fallback).

CLI: ``python -m emgscale.stream CKPT SESSION.hdf5 [--realtime] [--chunk-ms 40]``.
"""

from emgscale.models.streaming import NotStreamable
from emgscale.stream.decoding import OnlineBeam, OnlineDecoder, OnlineGreedy, online_decoder
from emgscale.stream.export import ExportedStep, export_step
from emgscale.stream.replay import ReplayResult, key_latencies, replay_session
from emgscale.stream.step import StreamStep
from emgscale.stream.streamer import Streamer

__all__ = ["ExportedStep", "NotStreamable", "OnlineBeam", "OnlineDecoder", "OnlineGreedy", "ReplayResult",
           "StreamStep", "Streamer", "export_step", "key_latencies", "online_decoder", "replay_session"]
