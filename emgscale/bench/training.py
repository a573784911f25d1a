"""The benchmarks' training runs: cached by content, one or ``jobs`` at a time, with an honest ETA.

A run's folder is ``<cache>/runs/<hash>/`` where the hash is of its config less where it runs, with the
files it reads replaced by their content (:func:`run_key`). Its ``DONE.json`` (written last) says what it
reached and what it cost: ``wall_s`` (the whole call, start-up included), ``steps``, ``expected_steps``,
``timings`` (the loop's breakdown, :attr:`emgscale.train.TrainResult.timings`, where the loop gives one),
``label`` (split, architecture, fine-tune or not) and ``rate_key`` (:func:`emgscale.bench.eta.rate_key`).
While it trains, ``RUNNING.json`` says since when and from which step, for the ETA (:mod:`emgscale.bench.eta`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

from emgscale.bench import plan
from emgscale.bench import pool as jobpool
from emgscale.bench.eta import (RUNNING, RunEstimate, eta_seconds, expected_steps, known_step_costs, rate_key,
                                read_json, step_cost, steps_done)
from emgscale.bench.steps import DONE, config_hash, content_key, content_sha256, data_key, step_lock
from emgscale.common import atomic_write_json, format_seconds, print0

#: Run settings that say where and how a run executes, not what it trains: not part of its identity.
PLACEMENT_KEYS = ("out_dir", "tensorboard", "threads", "device", "ray_address", "resource_timeout_s", "overwrite",
                  "keep_freed_memory")
#: Seconds between the ETA lines while runs train.
ETA_EVERY_S = 30.0


def run_key(cfg: Any) -> dict[str, Any]:
    """What identifies a training run: its config less where it writes and runs (:data:`PLACEMENT_KEYS`),
    with the files it reads replaced by their content (:func:`content_key`): the split and data root by
    :func:`data_key`, ``run.init_from`` and ``loss.distill_from`` by their sha256, a local ``data.shards`` folder by its manifest's."""
    from emgscale.config import to_dict

    key = to_dict(cfg)
    key["run"] = {k: v for k, v in key["run"].items() if k not in PLACEMENT_KEYS}
    data, run = key["data"], key["run"]
    if data.get("split") and data.get("data_root") and Path(data["split"]).is_file():
        data["split"] = data_key(data["data_root"], data["split"], data.get("format") or "emg2qwerty")
        data["data_root"] = None
    shards = data.get("shards")
    if shards and (Path(shards) / "manifest.json").is_file():
        data["shards"] = {"manifest_sha256": content_sha256(Path(shards) / "manifest.json")}
    if run.get("init_from") and Path(run["init_from"]).is_file():
        run["init_from"] = {"sha256": content_sha256(run["init_from"])}
    loss = key.get("loss") or {}
    if loss.get("distill_from") and Path(loss["distill_from"]).is_file():
        loss["distill_from"] = {"sha256": content_sha256(loss["distill_from"])}
    return content_key(key)


#: What :func:`run_key` covers, for the line that says why a run is reused.
RUN_REUSE_WHY = ("same config, split contents, session files, shards manifest and init checkpoint (sha256) "
                 "as before")


def run_label(cfg: Any) -> dict[str, Any]:
    """What a run is, for reports: its split's name, architecture, and whether it fine-tunes a checkpoint."""
    return {"split": Path(cfg.data.split).stem if cfg.data.split else None, "arch": cfg.model.arch,
            "finetune": bool(cfg.run.init_from)}


def ensure_trained(cache: Path, files: list[str], overrides: list[str], log_to_file: bool = False) -> Path:
    """Train (or resume, or reuse) the run these config files and overrides define; returns its folder.

    Training goes through :func:`emgscale.train.launch`, so ``run.workers`` / ``run.use_gpu`` / a Ray
    address in the overrides put the run on Ray Train. With ``log_to_file``, the run's output
    (progress, validation lines) goes to ``<folder>/train.log`` instead of the console. Another process
    training the same run holds its folder's lock: this one waits, then reuses its result.
    """
    from emgscale.train import load_train_config

    cfg = load_train_config(files, overrides)
    key = run_key(cfg)
    folder = Path(cache) / "runs" / config_hash(key)
    if not (folder / DONE).is_file():
        with step_lock(folder, f"runs/{folder.name}"):
            if not (folder / DONE).is_file():  # not trained by another process while this one waited
                _train(folder, key, load_train_config(files, [*overrides, f"run.out_dir={folder}"]), overrides,
                       log_to_file)
                return folder
    print0(f"[bench] reusing runs/{folder.name}: {RUN_REUSE_WHY}")
    return folder


def _timings(result: Any) -> dict[str, Any]:
    """The loop's time breakdown of a run (``TrainResult.timings``; {} where the loop gives none)."""
    t = getattr(result, "timings", None) or {}
    return dataclasses.asdict(t) if dataclasses.is_dataclass(t) and not isinstance(t, type) else dict(t)


def _train(folder: Path, key: dict[str, Any], cfg: Any, overrides: list[str], log_to_file: bool) -> None:
    """Train one run into ``folder`` (its lock held) and write its ``DONE.json``."""
    from emgscale.train import launch

    print0(f"[bench] training {folder.name}: {' '.join(overrides)}")
    folder.mkdir(parents=True, exist_ok=True)
    started, t0, first_step = time.time(), time.monotonic(), steps_done(folder)
    atomic_write_json(folder / RUNNING, {"pid": os.getpid(), "started_at": started, "steps_at_start": first_step})
    try:
        if not log_to_file:
            result = launch(cfg, resume=True)
        else:
            with open(folder / "train.log", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                result = launch(cfg, resume=True)
    finally:
        (folder / RUNNING).unlink(missing_ok=True)
    atomic_write_json(folder / DONE, {
        "key": key, "kind": "runs", "label": run_label(cfg), "rate_key": rate_key(cfg),
        "best_val_score": result.best_val_score, "best_val_metric": result.best_val_metric,
        "steps": result.steps, "steps_at_start": first_step, "expected_steps": expected_steps(cfg),
        "wall_s": time.monotonic() - t0, "train_wall_s": result.wall_s, "started_at": started,
        "finished_at": time.time(), "world_size": result.world_size, "timings": _timings(result),
        "suite": jobpool.suite()})


def run_folder(cache: Path, files: list[str], overrides: list[str]) -> Path:
    """The cache folder of the run these config files and overrides define (trained or not)."""
    from emgscale.train import load_train_config

    return Path(cache) / "runs" / config_hash(run_key(load_train_config(files, overrides)))


def _train_in_worker(cache: str, files: list[str], overrides: list[str], suite: "str | None" = None) -> str:
    jobpool.set_suite(suite)
    return str(ensure_trained(Path(cache), files, overrides, log_to_file=True))


def job_overrides(jobs: int, gpus: int, cpus: int, ray_address: str | None) -> list[list[str]]:
    """Per-slot overrides of ``jobs`` concurrent runs: a GPU each (round robin over ``gpus``), else
    ``cpus // jobs`` threads each; every slot joins the Ray cluster at ``ray_address`` when given."""
    slots = []
    for i in range(jobs):
        extra = [f"run.device=cuda:{i % gpus}"] if gpus else [f"run.threads={jobpool.threads_each(jobs, cpus)}"]
        slots.append(extra + ([f"run.ray_address={ray_address}"] if ray_address else []))
    return slots


class Progress:
    """Where a batch of runs stands (done / running / queued) and its ETA (:func:`emgscale.bench.eta.eta_seconds`),
    read from the run folders: ``DONE.json``, ``RUNNING.json`` and ``metrics.jsonl``.

    Args:
        cache: the benchmark cache (runs done before, with the same rate key, give a first s/step).
        todo: the runs to train, in the order they start: folder -> (expected steps, rate key).
        jobs: runs at a time.
        later: runs the benchmark trains after this batch (:func:`emgscale.bench.plan.later_runs`): queued
            behind it in the ETA.
    """

    def __init__(self, cache: Path, todo: dict[Path, tuple[int | None, str]], jobs: int,
                 later: "plan.Plan | None" = None) -> None:
        self.todo, self.jobs, self.later = todo, jobs, dict(later or {})
        self.since = time.time() - 1.0  # a RUNNING marker older than this batch, of a process gone, is stale
        keys = {key for _, key in [*todo.values(), *self.later.values()]}
        self.before: dict[str, list[float]] = {}
        for done in sorted(Path(cache).glob(f"runs/*/{DONE}")):
            d = read_json(done)
            if d.get("rate_key") in keys and done.parent not in todo:
                self._add(self.before, d["rate_key"], float(d.get("wall_s") or 0),
                          int(d.get("steps", 0)) - int(d.get("steps_at_start", 0)))

    def _running(self, marker: dict[str, Any]) -> bool:
        """A ``RUNNING.json`` written since this batch began, or by a process that still runs."""
        if not marker or "started_at" not in marker:
            return False
        if float(marker["started_at"]) >= self.since:
            return True
        try:
            pid = int(marker.get("pid", 0))
            if pid <= 0:
                return False
            os.kill(pid, 0)  # signal 0: is it there?
        except (OSError, ValueError, TypeError):
            return False
        return True

    @staticmethod
    def _add(measured: dict[str, list[float]], key: str, seconds: float, steps: int) -> None:
        if key and steps > 0:
            m = measured.setdefault(key, [0.0, 0])
            m[0], m[1] = m[0] + seconds, m[1] + steps

    def line(self) -> str:
        """One line: runs done / total, steps of the running ones, queued, ETA."""
        measured = {k: list(v) for k, v in self.before.items()}
        left, running, done = [], [], 0
        for folder, (expected, key) in self.todo.items():
            d = read_json(folder / DONE)
            if d:
                done += 1
                self._add(measured, key, float(d.get("wall_s") or 0),
                          int(d.get("steps", 0)) - int(d.get("steps_at_start", 0)))
                continue
            r, n = read_json(folder / RUNNING), steps_done(folder)
            now_running = self._running(r)
            if now_running:
                self._add(measured, key, time.time() - float(r["started_at"]), n - int(r.get("steps_at_start", 0)))
                running.append(f"{n}/{expected if expected is not None else '?'}")
            left.append(RunEstimate(expected, n, key, running=now_running))
        left += [RunEstimate(expected, 0, key) for expected, key in self.later.values()]
        eta = eta_seconds(left, {k: (s, int(n)) for k, (s, n) in measured.items()}, self.jobs, known_step_costs())
        what = (f"ETA {format_seconds(eta[0])}" + (f" + {eta[1]} runs of unknown length" if eta[1] else "")
                if eta else "ETA after the first steps")
        return (f"[bench] training runs: {done}/{len(self.todo)} done, {len(running)} running"
                + (f" ({', '.join(running)} steps)" if running else "")
                + f", {len(left) - len(running) - len(self.later)} queued"
                + (f" (+ {len(self.later)} later in this benchmark; {what} of all its training)" if self.later
                   else f"; {what}"))

    def tick(self, stop: threading.Event) -> None:
        """Print :meth:`line` every :data:`ETA_EVERY_S` seconds until ``stop`` is set (a thread's target)."""
        while not stop.wait(ETA_EVERY_S):
            print0(self.line())


def ensure_trained_many(cache: Path, runs: list[tuple[list[str], list[str]]], jobs: int = 1) -> list[Path]:
    """:func:`ensure_trained` for independent runs, ``jobs`` at a time in separate processes.

    ``--jobs`` and ``run.workers`` combine: ``jobs`` independent runs go side by side, each on
    ``run.workers`` DDP workers. In-process runs (``run.workers=1``) get a GPU each, round robin over
    the visible GPUs, or ``cpu_count // jobs`` torch threads on a CPU machine. Runs on Ray Train share
    one Ray cluster (started or joined here) that schedules their workers by the resources each asks
    for. Runs already done are not started again, and a run listed twice trains once. With
    ``jobs > 1`` each run's output goes to its folder's ``train.log``, and the runs go to a job pool of their
    own (:mod:`emgscale.bench.pool`; the one open already when suites run side by side). Every
    :data:`ETA_EVERY_S` seconds while runs train, and when the batch (or, one at a time, a run) ends, a line
    says where the batch stands and its ETA (expected steps of every running and queued run x measured
    seconds per step, :class:`Progress`). The pool's processes are spawned, so a script that calls this
    needs the usual ``if __name__ == "__main__":`` guard.
    """
    from emgscale.train import load_train_config

    folders = [run_folder(cache, f, o) for f, o in runs]
    todo: dict[Path, tuple[list[str], list[str]]] = {}
    ids: dict[Path, str] = {}
    for folder, run in zip(folders, runs):
        if (folder / DONE).is_file():
            plan.settle([plan.plan_id(*run)])
        else:
            todo.setdefault(folder, run)
            ids.setdefault(folder, plan.plan_id(*run))
    if not todo:
        return folders
    pool = jobpool.current()
    if pool is not None and not plan.is_planning():  # suites side by side: one pool for all their runs
        _train_in_pool(pool, cache, todo, ids)
        return folders
    parallel = jobs > 1 and len(todo) > 1
    if plan.is_planning():  # the planning pass: record, don't train (emgscale.bench.plan)
        slots = job_overrides(jobs, _gpus(), os.cpu_count() or 1, None) if parallel else [[]]
        for i, (folder, (f, o)) in enumerate(todo.items()):
            cfg = load_train_config(f, [*o, *slots[i % len(slots)]])
            plan.record(ids[folder], expected_steps(cfg), rate_key(cfg))
            step_cost(cfg)  # counted now, for the ETA of runs whose model config is not measured yet
        return folders
    if parallel:  # this suite's runs side by side, on a job pool of their own
        with jobpool.open_pool(jobs) as pool:
            stop = threading.Event()
            threading.Thread(target=tick_pool, args=(stop, pool, cache), daemon=True).start()
            try:
                _train_in_pool(pool, cache, todo, ids)
            finally:
                stop.set()
            print0(pool_progress_line(pool, cache))
        return folders
    cfgs = {folder: load_train_config(f, o) for folder, (f, o) in todo.items()}
    for c in cfgs.values():
        step_cost(c)
    progress = Progress(cache, {folder: (expected_steps(c), rate_key(c)) for folder, c in cfgs.items()}, 1,
                        later=plan.later_runs(set(ids.values())))
    try:
        _train_here(cache, todo, progress)
    finally:
        plan.settle([ids[f] for f in todo if (f / DONE).is_file()])
    return folders


def _train_in_pool(pool: jobpool.JobPool, cache: Path, todo: dict[Path, tuple[list[str], list[str]]],
                   ids: dict[Path, str]) -> None:
    """Train ``todo`` on the shared job pool (a run another suite already gave it is trained once) and wait."""
    from emgscale.train import load_train_config

    slots = _slots(pool.jobs, [load_train_config(f, o) for f, o in todo.values()])
    futures = {}
    for i, (folder, (files, overrides)) in enumerate(todo.items()):
        run_overrides = [*overrides, *slots[i % len(slots)]]
        cfg = load_train_config(files, run_overrides)
        step_cost(cfg)
        pool.note(("run", folder), (expected_steps(cfg), rate_key(cfg), ids[folder]))
        futures[folder] = pool.submit(_train_in_worker, str(cache), files, run_overrides, jobpool.suite(),
                                      key=("run", str(folder)))
    try:
        for folder, fut in futures.items():
            try:
                fut.result()
            except Exception as e:
                raise RuntimeError(f"training run {folder} failed ({e}); see {folder / 'train.log'}") from e
    finally:
        plan.settle([ids[f] for f in todo if (f / DONE).is_file()])


def pool_progress_line(pool: jobpool.JobPool, cache: Path) -> str | None:
    """Where every run given to ``pool`` stands (its notes, :func:`_train_in_pool`), with the ETA of all the
    benchmark's training left (None before the first run is given)."""
    runs = {key[1]: value for key, value in pool.notes().items() if key[0] == "run"}
    if not runs:
        return None
    todo = {folder: (steps, rate) for folder, (steps, rate, _) in runs.items()}
    ids = {plan_id for _, _, plan_id in runs.values()}
    return Progress(cache, todo, pool.jobs, later=plan.later_runs(ids)).line()


def tick_pool(stop: threading.Event, pool: jobpool.JobPool, cache: Path) -> None:
    """Every :data:`ETA_EVERY_S` seconds until ``stop``, where all the runs given to ``pool`` stand (once one is)."""
    while not stop.wait(ETA_EVERY_S):
        line = pool_progress_line(pool, cache)
        if line:
            print0(line)


def _train_here(cache: Path, todo: dict[Path, tuple[list[str], list[str]]], progress: Progress) -> None:
    """Train ``todo`` one at a time in this process, printing ``progress``."""
    stop = threading.Event()
    threading.Thread(target=progress.tick, args=(stop,), daemon=True).start()
    try:
        for files, overrides in todo.values():
            ensure_trained(cache, files, overrides)
            print0(progress.line())
    finally:
        stop.set()


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _slots(jobs: int, cfgs: list[Any]) -> list[list[str]]:
    """:func:`job_overrides` for this machine (its GPUs or cores), joining one Ray cluster when a run wants Ray."""
    from emgscale.train import wants_ray

    ray_address = None
    if any(wants_ray(c) for c in cfgs):
        from emgscale.train.launch import connect

        ray_address = connect(os.environ.get("RAY_ADDRESS"))  # one cluster for every run's workers
    gpus = _gpus()
    print0(f"[bench] training {len(cfgs)} runs, {jobs} at a time "
           f"({f'one of {gpus} GPUs each' if gpus else f'{jobpool.threads_each(jobs)} threads each'}; "
           f"logs: <run>/train.log)")
    return job_overrides(jobs, gpus, os.cpu_count() or 1, ray_address)
