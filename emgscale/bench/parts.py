"""The parts every benchmark suite is built from: training runs (cached, ``ctx.jobs`` at a time) and
evaluations (whole sessions, greedy and with the character LM, its weight and bonus chosen on val; cached).

:mod:`emgscale.bench.suites` and :mod:`emgscale.bench.recipes` build their tables from these.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from emgscale.bench import plan
from emgscale.bench import pool as jobpool
from emgscale.bench.context import BenchContext
from emgscale.bench.report import EXTRA_METRICS
from emgscale.bench.steps import cached, content_key, content_sha256, data_key, ensure_shards, score_sessions
from emgscale.bench.training import ensure_trained_many
from emgscale.common import print0
from emgscale.run_folder import RunFolder


def model_files(ctx: BenchContext, arch: "str | list[str]") -> list[str]:
    """``configs/models/<arch><budget suffix>.yaml`` when it exists, else ``<arch>.yaml`` (a list of
    config files is taken as it is)."""
    if isinstance(arch, list):
        return arch
    for name in (f"{arch}{ctx.budget.model_suffix}", arch):
        path = ctx.configs_dir / "models" / f"{name}.yaml"
        if path.is_file():
            return [str(path)]
    raise FileNotFoundError(f"no model config for {arch!r} under {ctx.configs_dir / 'models'}")


#: One training run of a benchmark: (split file, arch or model config files, extra overrides, checkpoint to
#: fine-tune from or None).
RunSpec = tuple[Path, "str | list[str]", list[str], "Path | None"]


def train_runs(ctx: BenchContext, specs: list[RunSpec]) -> list[RunFolder]:
    """Train independent runs (cached, ``ctx.jobs`` at a time); returns their run folders in order."""
    runs = []
    for split_file, arch, extra, init_from in specs:
        meta = ctx.corpus.bids_metadata
        shards = ensure_shards(ctx.cache, ctx.corpus.data_root, split_file, shard_workers=ctx.shard_workers,
                               bids_metadata=meta)
        overrides = [*ctx.budget.train, *(ctx.budget.finetune if init_from else ()),
                     f"data.split={split_file}", f"data.data_root={ctx.corpus.data_root}", f"data.shards={shards}",
                     *([f"data.bids_metadata={meta}"] if meta else []),
                     *(["run.init_from=" + str(init_from)] if init_from else []), *extra, *ctx.overrides]
        runs.append((model_files(ctx, arch), overrides))
    return [RunFolder(folder) for folder in ensure_trained_many(ctx.cache, runs, ctx.jobs)]


def train_runs_meanwhile(ctx: BenchContext, specs: list[RunSpec]) -> Callable[[], list[RunFolder]]:
    """:func:`train_runs` of ``specs`` that do not wait for what this thread does next: with a job pool open
    (suites side by side), they are given to it now, at this thread's priority and suite, from a helper
    thread; the function returned waits for their folders. Without a pool (one run at a time in this
    process, or the planning pass) they train when it is called."""
    pool = jobpool.current()
    if pool is None or plan.is_planning():
        return lambda: train_runs(ctx, specs)
    priority, suite = jobpool.priority(), jobpool.suite()

    def run() -> list[RunFolder]:
        jobpool.set_priority(priority)
        jobpool.set_suite(suite)
        return train_runs(ctx, specs)

    executor = ThreadPoolExecutor(1, thread_name_prefix=f"{suite}-meanwhile")
    future = executor.submit(run)
    executor.shutdown(wait=False)
    return future.result


#: LM weight x insertion bonus tried on val for every +LM column (the reference's 2 / 2 among them).
LM_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
LM_BONUSES = (0.0, 1.0, 2.0)


def choose_lm_setting(val_emissions: list[dict[str, Any]], lm: Path) -> tuple[float, float]:
    """The (LM weight, insertion bonus) of :data:`LM_WEIGHTS` x :data:`LM_BONUSES` with the lowest val CER
    (ties go to the reference's 2 / 2, then to the first in the grid)."""
    from emgscale.decode import DecoderConfig, build_decoder

    def cer(w: float, b: float) -> float:
        dec = build_decoder(DecoderConfig(kind="beam", lm_path=str(lm), lm_weight=w, insertion_bonus=b))
        return score_sessions(val_emissions, dec)["cer"]

    grid = [(w, b) for w in LM_WEIGHTS for b in LM_BONUSES]
    scores = {wb: cer(*wb) for wb in grid}
    return min(grid, key=lambda wb: (scores[wb], wb != (2.0, 2.0)))


def eval_rows(ctx: BenchContext, checkpoint: Path, split_file: Path, variant: str,
              which: str = "model", parts: tuple[str, ...] = ("val", "test"),
              emission_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per-user CER, greedy and +LM, of one checkpoint on parts of one split (cached).

    The +LM decoder's LM weight and insertion bonus are chosen on the split's val sessions
    (:func:`choose_lm_setting`) and used for every part; the +LM rows carry them (``lm_weight``,
    ``insertion_bonus``). ``emission_options``: extra keywords of
    :func:`emgscale.eval.split_emissions` (e.g. ``adapt_seconds``), part of the cache key.
    """
    if plan.is_planning():  # the planning pass evaluates nothing (emgscale.bench.plan)
        return []
    pool = jobpool.current()
    if pool is not None:  # suites side by side: the evaluation takes a place in the shared job pool
        return pool.run(_eval_rows_in_worker, jobpool.threads_each(pool.jobs), jobpool.suite(), ctx,
                        checkpoint, split_file, variant, which, parts, emission_options,
                        key=("eval", str(checkpoint), str(split_file), variant, which, tuple(parts),
                             repr(emission_options)))
    from emgscale.decode import DecoderConfig, build_decoder
    from emgscale.eval import split_emissions

    key = eval_key(ctx, checkpoint, split_file, which, parts)
    if emission_options:
        key = {**key, "emission_options": emission_options}

    def make(_: Path) -> dict[str, Any]:
        rows = []
        em = {part: split_emissions(checkpoint, ctx.corpus.data_root, split_file, part, which=which,
                                    bids_metadata=ctx.corpus.bids_metadata, **(emission_options or {}))
              for part in dict.fromkeys(("val", *parts))}
        decoders: dict[str, Any] = {"greedy": (build_decoder(DecoderConfig(kind="greedy")), {})}
        if ctx.lm is not None:
            w, b = choose_lm_setting(em["val"], ctx.lm)
            print0(f"[bench] {variant}: LM weight {w:g}, insertion bonus {b:g} chosen on val")
            decoders["lm"] = (build_decoder(DecoderConfig(kind="beam", lm_path=str(ctx.lm), lm_weight=w,
                                                          insertion_bonus=b)),
                              {"lm_weight": w, "insertion_bonus": b})
        for part in parts:
            for name, (dec, setting) in decoders.items():
                for user, u in score_sessions(em[part], dec)["per_user"].items():
                    rows.append({"user": user, "part": part, "decoder": name, "cer": u["cer"],
                                 **{m: u[m] for m in EXTRA_METRICS}, **setting})
        return {"rows": rows}

    _, res = cached(ctx.cache, "eval", key, make, f"same checkpoint, LM (sha256), split contents and session "
                                                   f"files ({variant})")
    return [{"variant": variant, **r} for r in res["rows"]]


def _eval_rows_in_worker(threads: int, suite: "str | None", *args: Any) -> list[dict[str, Any]]:
    """:func:`eval_rows` in a job-pool worker, on ``threads`` torch threads, for ``suite``."""
    import torch

    torch.set_num_threads(threads)
    jobpool.set_suite(suite)
    return eval_rows(*args)


def eval_key(ctx: BenchContext, checkpoint: Path, split_file: Path, which: str = "model",
             parts: tuple[str, ...] = ("val", "test")) -> dict[str, Any]:
    """What an evaluation depends on, by content: the checkpoint's and LM's sha256, the split's contents
    and the session files it names under the data root (:func:`emgscale.bench.steps.data_key`), and the
    metrics it reports (rows cached before a metric existed are recomputed)."""
    return content_key({"checkpoint_sha256": content_sha256(checkpoint), "which": which,
                        "data": data_key(ctx.corpus.data_root, split_file),
                        "lm_sha256": content_sha256(ctx.lm) if ctx.lm else None,
                        "lm_on_val": [LM_WEIGHTS, LM_BONUSES], "parts": list(parts), "metrics": list(EXTRA_METRICS)})
