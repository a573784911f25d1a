"""Replay a recorded session through a :class:`~emgscale.stream.Streamer` and measure latency.

The session is cut into chunks of ``chunk_ms``; chunk ``[a, b)`` *arrives* at the timestamp of its
last sample. Its processing starts when it has arrived and the previous chunk is done (a queue, so a
model slower than real time accumulates delay) and takes the measured compute time (model step +
online decoder). Keys committed by a chunk are *emitted* when its processing ends. With ``realtime``
the replay sleeps until each chunk's arrival and emission times are read from the wall clock instead.

Key latency: decoded keys are aligned to the session's logged key presses (``difflib`` matching
blocks over the label sequences); for each matched key, latency = emission time - logged press time.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from emgscale.data.charset import charset
from emgscale.data.errors import DataError
from emgscale.data.session import EMGSession
from emgscale.data.source import open_session
from emgscale.metrics import edit_distance
from emgscale.stream.decoding import OnlineDecoder, OnlineGreedy
from emgscale.stream.streamer import Streamer


def _pct(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if len(x) else None


@dataclass
class ReplayResult:
    """What a replay measured.

    Attributes:
        labels: decoded labels, in emission order.
        emit_s: emission time of each label, seconds from the session's first sample.
        target: the session's ground-truth labels; press_s their press times (same clock; None for
            prompt-labelled sessions).
        chunk_s: wall-clock compute time of each chunk (model step + decoder); step_s: the model
            step alone; chunk_cpu_s: the chunk's CPU time in this thread (on a shared machine the
            wall time includes waiting for a core; CPU time does not).
        chunk_ms: chunk length; duration_s: session length replayed.
        lookahead_ms, buffering_ms: the model's algorithmic delay (see :class:`Streamer`).
        frames: output frames; frame_rate_hz: their rate.
        repaired_values: input values the streamer repaired (NaN, inf or out of range).
    """

    labels: list[int]
    emit_s: np.ndarray
    target: list[int]
    press_s: np.ndarray | None
    chunk_s: np.ndarray
    step_s: np.ndarray
    chunk_cpu_s: np.ndarray
    chunk_ms: float
    duration_s: float
    lookahead_ms: float
    buffering_ms: float
    frames: int
    frame_rate_hz: float
    realtime: bool = False
    repaired_values: int = 0
    latency_s: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def text(self) -> str:
        return charset().labels_to_str(self.labels)

    @property
    def cer(self) -> float:
        """Character error rate of the decoded labels against the target (the paper's edit distance)."""
        return edit_distance(self.labels, self.target) / max(len(self.target), 1)

    @property
    def rtf(self) -> float:
        """Real-time factor: total compute / session duration (< 1 keeps up)."""
        return float(self.chunk_s.sum()) / max(self.duration_s, 1e-9)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (times in milliseconds)."""
        ms = 1e3
        lat = self.latency_s * ms
        return {
            "chunk_ms": self.chunk_ms, "duration_s": self.duration_s, "frames": self.frames,
            "chunks": len(self.chunk_s), "realtime": self.realtime,
            "chunk_compute_ms": {"median": _pct(self.chunk_s * ms, 50), "p99": _pct(self.chunk_s * ms, 99),
                                 "max": float(self.chunk_s.max() * ms) if len(self.chunk_s) else None},
            "step_compute_ms": {"median": _pct(self.step_s * ms, 50), "p99": _pct(self.step_s * ms, 99)},
            "chunk_cpu_ms": {"median": _pct(self.chunk_cpu_s * ms, 50), "p99": _pct(self.chunk_cpu_s * ms, 99)},
            "rtf_cpu": float(self.chunk_cpu_s.sum()) / max(self.duration_s, 1e-9),
            "rtf": self.rtf, "lookahead_ms": self.lookahead_ms, "buffering_ms": self.buffering_ms,
            "repaired_values": self.repaired_values,
            "keys_decoded": len(self.labels), "keys_target": len(self.target), "keys_matched": len(lat),
            "cer": self.cer,
            "key_latency_ms": {"median": _pct(lat, 50), "p90": _pct(lat, 90), "mean": float(lat.mean()) if len(lat)
                               else None},
        }


class _ArraySession:
    """The parts of :class:`EMGSession` a replay reads, for an in-memory EMG array without labels."""

    def __init__(self, emg: np.ndarray, rate_hz: float) -> None:
        self._emg, self._rate = emg, rate_hz

    def __len__(self) -> int:
        return len(self._emg)

    def time(self, start: int, stop: int) -> np.ndarray:
        return np.arange(start, stop, dtype=np.float64) / self._rate

    def emg(self, start: int, stop: int) -> np.ndarray:
        return self._emg[start:stop]

    def ground_truth(self, start_t: float, end_t: float) -> Any:
        from emgscale.data.labels import LabelData

        return LabelData("", None)


def key_latencies(target: list[int], press_s: np.ndarray, labels: list[int], emit_s: np.ndarray) -> np.ndarray:
    """Emission minus press time of each decoded key matched to a logged key (see the module docstring).

    Args:
        target: ground-truth labels; press_s: their press times (seconds).
        labels: decoded labels; emit_s: their emission times (same clock).

    Returns:
        (matched,) latencies in seconds, in key order.
    """
    sm = difflib.SequenceMatcher(None, list(target), list(labels), autojunk=False)
    out = [emit_s[j + k] - press_s[i + k] for i, j, n in sm.get_matching_blocks() for k in range(n)]
    return np.asarray(out, dtype=np.float64)


def replay_session(streamer: Streamer, session: "EMGSession | str | np.ndarray", *, chunk_ms: float = 40.0,
                   decoder: OnlineDecoder | None = None, realtime: bool = False, max_seconds: float | None = None,
                   on_keys: Callable[[list[int], list[int]], None] | None = None) -> ReplayResult:
    """Stream a session chunk by chunk, decode online and time everything.

    Args:
        streamer: the model's streamer (reset here).
        session: an open :class:`EMGSession`, a path to one (HDF5, or a BIDS ``.vhdr``), or a (T, 2, 16) EMG array (timed at the
            model's input rate, no labels: no key latency).
        chunk_ms: chunk length in milliseconds (at least one sample).
        decoder: online decoder (default :class:`OnlineGreedy`); reset here.
        realtime: pace the replay by the session clock (sleeping between chunks).
        max_seconds: replay only the first this many seconds.
        on_keys: called after each chunk as ``on_keys(new_labels, partial_labels)`` (for live printing).

    Returns:
        The :class:`ReplayResult`.
    """
    if isinstance(session, (str, bytes)) or hasattr(session, "__fspath__"):
        with open_session(session) as sess:  # type: ignore[arg-type]
            return replay_session(streamer, sess, chunk_ms=chunk_ms, decoder=decoder, realtime=realtime,
                                  max_seconds=max_seconds, on_keys=on_keys)
    sess = _ArraySession(session, streamer.sample_rate_hz) if isinstance(session, np.ndarray) else session
    decoder = decoder or OnlineGreedy()
    streamer.reset()
    decoder.reset()
    rate = streamer.sample_rate_hz
    chunk = max(1, int(round(chunk_ms * rate / 1e3)))
    n = len(sess) if max_seconds is None else min(len(sess), int(max_seconds * rate))
    if n == 0:
        raise DataError(getattr(sess, "path", "the EMG array"), "holds no EMG rows: nothing to replay")
    times = sess.time(0, n)
    t0 = float(times[0])
    labels: list[int] = []
    emit: list[float] = []
    chunk_s, step_s, cpu_s = [], [], []
    done_at = 0.0  # session clock when the previous chunk finished processing
    wall0 = time.perf_counter()

    def process(x: np.ndarray | None, arrival: float) -> None:
        nonlocal done_at
        cpu0, tic = time.thread_time(), time.perf_counter()
        lp = streamer.push(x) if x is not None else streamer.flush()
        mid = time.perf_counter()
        new = decoder.push(lp) + ([] if x is not None else decoder.finish())
        toc, cpu1 = time.perf_counter(), time.thread_time()
        if x is not None:  # the end-of-session flush is not a chunk
            chunk_s.append(toc - tic)
            cpu_s.append(cpu1 - cpu0)
            step_s.append(mid - tic)
        done_at = (toc - wall0) if realtime else max(arrival, done_at) + (toc - tic)
        labels.extend(new)
        emit.extend([done_at] * len(new))
        if on_keys is not None:
            on_keys(new, decoder.partial())

    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        arrival = float(times[b - 1]) - t0
        if realtime:
            wait = arrival - (time.perf_counter() - wall0)
            if wait > 0:
                time.sleep(wait)
        process(sess.emg(a, b), arrival)
    process(None, float(times[-1]) - t0)

    gt = sess.ground_truth(float(times[0]), float(times[-1]))
    press = None if gt.timestamps is None else gt.timestamps - t0
    emit_s = np.asarray(emit, dtype=np.float64)
    model = streamer.model
    result = ReplayResult(
        labels=labels, emit_s=emit_s, target=gt.labels.tolist(), press_s=press, chunk_s=np.asarray(chunk_s),
        step_s=np.asarray(step_s), chunk_cpu_s=np.asarray(cpu_s), chunk_ms=chunk * 1e3 / rate, duration_s=n / rate,
        lookahead_ms=streamer.lookahead_samples * 1e3 / rate, buffering_ms=streamer.buffering_samples * 1e3 / rate,
        frames=streamer.frames_out, frame_rate_hz=float(model.frame_rate_hz), realtime=realtime,
        repaired_values=streamer.repaired_values)
    if press is not None:
        result.latency_s = key_latencies(result.target, press, labels, emit_s)
    return result
