"""Cached pipeline steps of the benchmarks: corpus -> shards -> LM -> training -> emissions -> CER.

Each step's output lives in ``<cache>/<kind>/<hash>/`` where the hash is of the settings that determine
it, and is reused when its ``DONE.json`` marker is there: benchmarks share corpora, shards, LMs and
checkpoints made with the same config instead of recomputing them. A step killed half-way leaves no
marker; training resumes from its last checkpoint on the next run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from emgscale.common import atomic_write_json, print0

DONE = "DONE.json"


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached(cache: Path, kind: str, key: Any, make: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Run ``make(folder)`` once per ``key``; later calls return the folder and what ``make`` returned."""
    folder = Path(cache) / kind / config_hash(key)
    marker = folder / DONE
    if marker.is_file():
        return folder, json.loads(marker.read_text())["result"]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "key.json", key)
    result = make(folder)
    atomic_write_json(marker, {"key": key, "result": result})
    return folder, result


@dataclass
class Corpus:
    """A data root with its split files."""

    data_root: Path
    splits_dir: Path

    def split(self, name: str) -> Path:
        path = self.splits_dir / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such split file")
        return path

    def heldout_splits(self, limit: int = 0) -> list[Path]:
        """The personalized split files ``user0.yaml``, ``user1.yaml``, ... (the held-out users)."""
        found = sorted(self.splits_dir.glob("user[0-9]*.yaml"), key=lambda p: int(p.stem[4:]))
        return found[:limit] if limit else found


def ensure_corpus(cache: Path, corpus_flags: dict[str, Any], seed: int = 0) -> Corpus:
    """The default synthetic corpus for these flags (generated once)."""
    from emgscale.config import from_dict
    from emgscale.synth import SynthConfig, generate_corpus

    key = {"synth": corpus_flags, "seed": seed}

    def make(folder: Path) -> dict[str, Any]:
        cfg = from_dict(SynthConfig, {**corpus_flags, "seed": seed, "out": str(folder / "corpus")})
        generate_corpus(cfg)
        return {"data_root": str(folder / "corpus")}

    folder, res = cached(cache, "corpus", key, make)
    root = Path(res["data_root"])
    return Corpus(root, root / "splits")


def ensure_shards(cache: Path, data_root: Path, split_file: Path, workers: int = 1) -> Path:
    """WebDataset shards of a split (train/val windows), made once."""
    from emgscale.config import from_dict
    from emgscale.shard import ShardConfig, shard_corpus

    key = {"data_root": str(Path(data_root).resolve()), "split": Path(split_file).read_text()}

    def make(folder: Path) -> dict[str, Any]:
        cfg = from_dict(ShardConfig, {"data_root": str(data_root), "split": str(split_file),
                                      "out": str(folder / "shards"), "workers": workers,
                                      "parts": ["train", "val"]})
        shard_corpus(cfg)
        return {"shards": str(folder / "shards")}

    _, res = cached(cache, "shards", key, make)
    return Path(res["shards"])


def ensure_lm(cache: Path, text_files: list[Path], order: int) -> Path:
    """A KenLM character n-gram of ``text_files`` (built once)."""
    from emgscale.lm import build_lm

    key = {"texts": [hashlib.sha256(Path(t).read_bytes()).hexdigest() for t in text_files], "order": order}

    def make(folder: Path) -> dict[str, Any]:
        out = folder / f"char{order}gram.bin"
        build_lm([str(t) for t in text_files], order=order, out=str(out))
        return {"lm": str(out)}

    _, res = cached(cache, "lm", key, make)
    return Path(res["lm"])


def _run_key(cfg: Any) -> dict[str, Any]:
    """What identifies a training run: its config less where it writes and how many threads it uses."""
    from emgscale.config import to_dict

    key = to_dict(cfg)
    key["run"] = {k: v for k, v in key["run"].items() if k not in ("out_dir", "tensorboard", "threads")}
    return key


def ensure_trained(cache: Path, files: list[str], overrides: list[str], log_to_file: bool = False) -> Path:
    """Train (or resume, or reuse) the run these config files and overrides define; returns its folder.

    With ``log_to_file``, the run's output (progress, validation lines) goes to ``<folder>/train.log``
    instead of the console.
    """
    from emgscale.train import load_train_config, train

    cfg = load_train_config(files, overrides)
    key = _run_key(cfg)
    folder = Path(cache) / "runs" / config_hash(key)
    if (folder / DONE).is_file():
        return folder
    cfg = load_train_config(files, [*overrides, f"run.out_dir={folder}"])
    print0(f"[bench] training {folder.name}: {' '.join(overrides)}")
    if not log_to_file:
        result = train(cfg, resume=True)
    else:
        import contextlib

        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "train.log", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            result = train(cfg, resume=True)
    atomic_write_json(folder / DONE, {"key": key, "best_val_cer": result.best_val_cer, "steps": result.steps,
                                      "wall_s": result.wall_s})
    return folder


def run_folder(cache: Path, files: list[str], overrides: list[str]) -> Path:
    """The cache folder of the run these config files and overrides define (trained or not)."""
    from emgscale.train import load_train_config

    return Path(cache) / "runs" / config_hash(_run_key(load_train_config(files, overrides)))


def _train_in_worker(cache: str, files: list[str], overrides: list[str]) -> str:
    return str(ensure_trained(Path(cache), files, overrides, log_to_file=True))


def ensure_trained_many(cache: Path, runs: list[tuple[list[str], list[str]]], jobs: int = 1) -> list[Path]:
    """:func:`ensure_trained` for independent runs, ``jobs`` at a time in separate processes.

    Each process gets ``cpu_count // jobs`` torch threads (small models rarely keep every core busy, and
    side-by-side runs also overlap their data loading and validation). Runs already done are not started
    again, and a run listed twice trains once. With ``jobs > 1`` each run's output goes to its folder's
    ``train.log``; a line per run tells where it stands. The processes are spawned, so a script that calls
    this needs the usual ``if __name__ == "__main__":`` guard.
    """
    import os
    import time

    folders = [run_folder(cache, f, o) for f, o in runs]
    todo: dict[Path, tuple[list[str], list[str]]] = {}
    for folder, run in zip(folders, runs):
        if not (folder / DONE).is_file():
            todo.setdefault(folder, run)
    if jobs <= 1 or len(todo) <= 1:
        for folder, (files, overrides) in todo.items():
            ensure_trained(cache, files, overrides)
        return folders
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    t0 = time.monotonic()
    print0(f"[bench] training {len(todo)} runs, {jobs} at a time x {threads} threads (logs: <run>/train.log)")
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_in_worker, str(cache), files, [*overrides, f"run.threads={threads}"]): folder
                   for folder, (files, overrides) in todo.items()}
        for n, fut in enumerate(as_completed(futures), 1):
            folder = futures[fut]
            try:
                fut.result()
            except Exception as e:
                raise RuntimeError(f"training run {folder} failed ({e}); see {folder / 'train.log'}") from e
            print0(f"[bench] {n}/{len(todo)} runs done ({folder.name}, {(time.monotonic() - t0) / 60:.1f} min)")
    return folders


def score_sessions(emissions: list[dict[str, Any]], decoder: Any) -> dict[str, Any]:
    """CER of decoded emissions: aggregate and per user (the paper's definition)."""
    from emgscale.evaluate import score

    meter = score(emissions, decoder)
    return {"cer": meter.cer, "per_user": meter.per_user()}


def run_emissions(checkpoint: Path, data_root: Path, split_file: Path, part: str,
                  which: str = "model") -> list[dict[str, Any]]:
    """Whole-session log-probs of every session of ``part`` (computed once, decoded many ways)."""
    import torch

    from emgscale.checkpoint import load_model
    from emgscale.data.splits import load_split
    from emgscale.evaluate import session_emissions

    model, tcfg = load_model(checkpoint, which=which)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    return list(session_emissions(model, data_root, load_split(split_file)[part], device=device,
                                  sample_rate_hz=tcfg.model.features.input_sample_rate_hz,
                                  desc=f"emissions {Path(split_file).stem}/{part}"))
