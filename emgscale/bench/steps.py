"""Cached pipeline steps of the benchmarks: corpus -> shards -> LM -> training -> emissions -> CER.

Training runs, one or ``jobs`` at a time, are :mod:`emgscale.bench.training`.

Each step's output lives in ``<cache>/<kind>/<hash>/`` where the hash is of what determines it, and is
reused when its ``DONE.json`` marker is there (a line says so, and why): benchmarks share corpora,
shards, LMs and checkpoints made with the same inputs instead of recomputing them. A step killed
half-way leaves no marker; training resumes from its last checkpoint on the next run.

Keys are content, not paths (:func:`content_key`): a split file by its bytes and the name and size of
every session file it names, a checkpoint or LM by its sha256, a shard folder by its manifest's sha256,
plus the settings and the emgscale version. So a split edited in place, an init checkpoint replaced
behind the same path or a data root holding other files makes a new step, never reuses an old one.

Since keys are content, one cache serves every results folder: the default (:func:`default_cache`) is a
user-level folder, so a benchmark run after the demo with another ``--out`` reuses what the demo made.
Two processes making the same step at once do not both make it: the step's folder is locked while it
is made (:func:`step_lock`, a ``.lock`` file with an ``flock``, released however its holder exits), the
second waits and then reuses the first one's result; the ``DONE.json`` marker is written last, atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from emgscale.bench import pool as jobpool
from emgscale.common import DirLock, LockedError, atomic_write_json, print0

DONE = "DONE.json"
#: The environment variable that moves the benchmark cache (:func:`default_cache`).
CACHE_ENV = "EMGSCALE_CACHE"


def default_cache() -> Path:
    """The user-level benchmark cache: ``$EMGSCALE_CACHE`` if set, else ``$XDG_CACHE_HOME/emgscale/bench``
    (an absolute ``XDG_CACHE_HOME`` only, as the XDG spec says), else ``~/.cache/emgscale/bench``.

    Returns:
        The folder (not created here).
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "emgscale" / "bench"


#: Seconds between "still waiting" lines while another process makes a step.
WAIT_LINE_EVERY_S = 300.0


@contextlib.contextmanager
def step_lock(folder: Path, what: str, poll_s: float = 1.0) -> Iterator[None]:
    """Hold the lock of a cache step's folder, waiting while another process holds it.

    Args:
        folder: the step's folder (created if missing).
        what: the step, e.g. ``runs/3f2a...`` (for the waiting line and the lock file).
        poll_s: seconds between tries while another process holds the lock.
    """
    lock = DirLock(folder, f"bench step {what}")
    said = 0.0
    while True:
        try:
            lock.acquire()
            break
        except LockedError as e:
            if time.monotonic() - said > WAIT_LINE_EVERY_S:
                print0(f"[bench] waiting: {str(e).split(';')[0]}")  # whom for; a dead holder's lock is taken over
                said = time.monotonic()
            time.sleep(poll_s)
    try:
        yield
    finally:
        lock.release()


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


_SHA256: dict[tuple[str, int, int], str] = {}


def content_sha256(path: "str | Path") -> str:
    """sha256 of a file's bytes (computed once per file version and process: path, size, mtime)."""
    from emgscale.shard.writer import file_sha256

    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = file_sha256(p)
    return _SHA256[key]


def data_key(data_root: "str | Path", split_file: "str | Path", data_format: str = "emg2qwerty") -> dict[str, Any]:
    """What a split under a data root holds: the split file's sha256 and the name and size of every
    data file it names (None where missing), hashed. ``data_format``: ``emg2qwerty`` (a split of
    sessions, ``<root>/<session>.hdf5``) or ``csv`` (a split of files or globs under the root)."""
    root = Path(data_root)
    if data_format == "csv":
        from emgscale.data.tables import load_file_split

        parts = load_file_split(split_file, root).values()
        files = sorted({str(f.relative_to(root)) if f.is_relative_to(root) else str(f) for part in parts for f in part})
    else:
        from emgscale.data.errors import DataError
        from emgscale.data.splits import DataRoot, load_split

        split = load_split(split_file)
        names = sorted({r.session for part in ("train", "val", "test") for r in split[part]})
        try:  # a BIDS copy: each recording's header and its binary EMG
            paths = DataRoot(root).paths(names)
        except DataError:  # sessions a BIDS copy cannot map: keyed by name (the loader names them)
            paths = [root / f"{n}.hdf5" for n in names]
        files = sorted({str(q.relative_to(root)) if q.is_relative_to(root) else str(q)
                        for p in paths for q in ([p, p.with_suffix(".eeg")] if p.suffix == ".vhdr" else [p])})
    sizes = {name: (root / name).stat().st_size if (root / name).is_file() else None for name in files}
    return {"split_sha256": content_sha256(split_file), "files": config_hash(sizes), "num_files": len(files)}


def content_key(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` plus the emgscale version: the code that makes a step is part of what it depends on."""
    import emgscale

    return {**key, "emgscale": emgscale.__version__}


def cached(cache: Path, kind: str, key: Any, make: Callable[[Path], dict[str, Any]],
           why: str = "same settings") -> tuple[Path, dict[str, Any]]:
    """Run ``make(folder)`` once per ``key``; later calls return the folder and what ``make`` returned
    (with one line naming the step reused and ``why``: what its key covers).

    The step's ``DONE.json`` holds its key, ``make``'s result, its ``kind``, the wall seconds ``make`` took
    (``wall_s``), when it started and finished (``started_at``, ``finished_at``: unix seconds) and the suite
    that made it where suites run side by side (``suite``, :func:`emgscale.bench.pool.suite`), for
    ``benchmarks/bench_suite.py``.
    """
    folder = Path(cache) / kind / config_hash(key)
    marker = folder / DONE
    if not marker.is_file():
        with step_lock(folder, f"{kind}/{folder.name}"):
            if not marker.is_file():  # not made by another process while this one waited
                atomic_write_json(folder / "key.json", key)
                started, t0 = time.time(), time.monotonic()
                result = make(folder)
                atomic_write_json(marker, {"key": key, "result": result, "kind": kind,
                                           "wall_s": time.monotonic() - t0, "started_at": started,
                                           "finished_at": time.time(), "suite": jobpool.suite()})
                return folder, result
    print0(f"[bench] reusing {kind}/{folder.name}: {why}")
    return folder, json.loads(marker.read_text())["result"]


@dataclass
class Corpus:
    """A data root (HDF5 files or a BIDS copy) with its split files, and the ``metadata.csv`` a BIDS copy
    without one was made from."""

    data_root: Path
    splits_dir: Path
    bids_metadata: Path | None = None

    def split(self, name: str) -> Path:
        path = self.splits_dir / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such split file")
        return path

    def heldout_splits(self, limit: int = 0) -> list[Path]:
        """The personalized split files ``user0.yaml``, ``user1.yaml``, ... (the held-out users)."""
        found = sorted(self.splits_dir.glob("user[0-9]*.yaml"), key=lambda p: int(p.stem[4:]))
        return found[:limit] if limit else found


def ensure_cached_corpus(cache: Path, corpus_flags: dict[str, Any], seed: int = 0) -> Corpus:
    """The benchmark's synthetic corpus for these flags, generated once into ``cache``."""
    from emgscale.config import from_dict
    from emgscale.synth import SynthConfig, generate_corpus

    key = content_key({"synth": corpus_flags, "seed": seed})

    def make(folder: Path) -> dict[str, Any]:
        cfg = from_dict(SynthConfig, {**corpus_flags, "seed": seed, "out": str(folder / "corpus")})
        generate_corpus(cfg)
        return {"data_root": str(folder / "corpus")}

    folder, res = cached(cache, "corpus", key, make)
    root = Path(res["data_root"])
    return Corpus(root, root / "splits")


def ensure_shards(cache: Path, data_root: Path, split_file: Path, shard_workers: int = 1,
                  bids_metadata: Path | None = None) -> Path:
    """WebDataset shards of a split (train/val windows), made once by ``shard_workers`` processes."""
    from emgscale.config import from_dict
    from emgscale.shard import ShardConfig, shard_corpus

    key = content_key({"data": data_key(data_root, split_file), "parts": ["train", "val"],
                       **({"bids_metadata": Path(bids_metadata).read_text()} if bids_metadata else {})})

    def make(folder: Path) -> dict[str, Any]:
        cfg = from_dict(ShardConfig, {"data_root": str(data_root), "split": str(split_file),
                                      "out": str(folder / "shards"), "workers": shard_workers,
                                      "parts": ["train", "val"],
                                      "bids_metadata": str(bids_metadata) if bids_metadata else None})
        shard_corpus(cfg)
        return {"shards": str(folder / "shards")}

    _, res = cached(cache, "shards", key, make, f"same split contents and session files as {split_file}")
    return Path(res["shards"])


def ensure_lm(cache: Path, text_files: list[Path], order: int) -> Path:
    """A KenLM character n-gram of ``text_files`` (built once)."""
    from emgscale.lm import build_lm

    key = content_key({"texts": [content_sha256(t) for t in text_files], "order": order})

    def make(folder: Path) -> dict[str, Any]:
        out = folder / f"char{order}gram.bin"
        build_lm([str(t) for t in text_files], order=order, out=str(out))
        return {"lm": str(out)}

    _, res = cached(cache, "lm", key, make, "same text files (sha256) and order")
    return Path(res["lm"])


def score_sessions(emissions: list[dict[str, Any]], decoder: Any) -> dict[str, Any]:
    """CER of decoded emissions, pooled and per user (the paper's definition), with the rendered-text CER;
    ``per_user`` also holds the insertion / deletion / substitution rates
    (:meth:`~emgscale.metrics.CERMeter.per_user`)."""
    from emgscale.eval import score

    meter = score(emissions, decoder)
    return {"cer": meter.cer, "rendered_cer": meter.rendered_cer, "per_user": meter.per_user()}

