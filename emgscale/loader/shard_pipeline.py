"""WebDataset pipelines over shards: an endless shuffled training stream and an exactly-once eval pass.

Training (per rank and DataLoader worker, seeded by ``seed, epoch, rank, worker``)::

    ResampledShards -> tar samples -> drop unselected records (metadata only) -> decode + filter -> shuffle records -> crop windows with the
    reference's jitter -> shuffle windows -> batches of ``collate`` -> ``with_epoch(batches)``

Evaluation: each of the ``R = world_size x num_workers`` readers gets whole shards when there are at
least as many shards as readers (reader ``r`` takes shards ``r, r + R, ...``); otherwise reader ``r``
reads shard ``r mod S`` and keeps every ``m``-th sample of it, ``m`` being the number of readers
sharing that shard. Either way every sample is seen exactly once over all ranks and workers, and no
shard is read by more than ``ceil(R / S)`` readers.

A shard that cannot be opened or read (missing, truncated, corrupt) is logged by name and skipped;
so is a record with a missing or corrupt member, or whose bytes parse but hold garbage (non-finite EMG,
labels outside the charset, times going backwards: :func:`emgscale.shard.records.decode_record`), named
by shard and key. None of them stops training, and none reaches the model. The warnings are rate
limited per pipeline (:class:`emgscale.common.RateLimitedLog`: each shard and problem once a minute,
at most 10 lines a minute). When every shard of the training stream has been drawn since the last readable
record (a full pass that gave nothing: every shard unreadable, or none holds a selected record), the
stream stops with one :class:`~emgscale.data.errors.DataError` instead of drawing shards forever.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from webdataset.utils import make_seed

from emgscale.common import RateLimitedLog
from emgscale.data.errors import DataError
from emgscale.data.windows import collate
from emgscale.loader.feature_cache import CacheWriteError, FeatureCache
from emgscale.shard.records import decode_record, record_samples

log = logging.getLogger("emgscale.loader")


_FILEOBJ = re.compile(r" @ <.*name='([^']*)'.*>$")
Handler = Callable[[BaseException], bool]


def log_and_continue(exn: BaseException, warnings: RateLimitedLog | None = None) -> bool:
    """WebDataset ``handler=``: log the error with the shard it came from, then go on.

    Args:
        exn: the error.
        warnings: the rate limit of the pipeline it happened in (each pipeline has its own:
            :func:`_handler`); None logs every error.

    Returns:
        True (go on).
    """
    if isinstance(exn, DataError):
        where, message = exn.path, exn.problem
    else:
        message = exn.strerror if isinstance(exn, OSError) and exn.strerror else (
            str(exn.args[0]) if exn.args else repr(exn))
        found = _FILEOBJ.search(message)
        if found:  # raised inside a tar stream: "<error> @ <file object name='...'>"
            where, message = found.group(1), message[: found.start()]
        else:  # webdataset appends the URL to the exception's args
            where = next((a for a in reversed(exn.args[1:]) if isinstance(a, str) and a), None)
    line = ("skipping unreadable or bad shard data in %s: %s: %s", where, type(exn).__name__, message)
    if warnings is None:
        log.warning(*line)
    else:
        warnings.warning((where, type(exn).__name__, message), *line)
    return True


def worker_info() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the current DataLoader worker, ``(0, 1)`` outside one."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def assign_shards(num_shards: int, reader: int, readers: int) -> list[tuple[int, int, int]]:
    """Eval assignment of one reader: ``[(shard index, m, r)]`` meaning "keep samples ``i % m == r``"."""
    if readers <= num_shards:
        return [(s, 1, 0) for s in range(reader, num_shards, readers)]
    s = reader % num_shards
    return [(s, len(range(s, readers, num_shards)), reader // num_shards)]


# ----------------------------------------------------------------------------- stages
class _Progress:
    """The shards a training stream has drawn since its last readable record (shared by two stages)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = frozenset(urls)
        self.drawn: set[str] = set()


def _stop_after_empty_pass(src: Iterable[dict[str, Any]], progress: _Progress) -> Iterator[dict[str, Any]]:
    """Pass shard URLs on, until every one has been drawn since the last readable record."""
    progress.drawn.clear()
    for item in src:
        if progress.drawn >= progress.urls:
            raise DataError(_common_root(sorted(progress.urls)), f"none of the {len(progress.urls)} training "
                            "shards gave a readable record in a full pass (each unreadable, empty or outside the "
                            "selected users/sessions; see the warnings above)")
        progress.drawn.add(item["url"])
        yield item


def _made_progress(src: Iterable[dict[str, Any]], progress: _Progress) -> Iterator[dict[str, Any]]:
    for rec in src:
        progress.drawn.clear()
        yield rec


def _common_root(urls: list[str]) -> str:
    """Where the shards are: their common prefix up to a ``/`` (the shard folder), or the one URL."""
    if len(urls) == 1:
        return urls[0]
    prefix = os.path.commonprefix(urls)
    return prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else prefix or "?"


def _handler() -> Handler:
    """A pipeline's error handler: :func:`log_and_continue` under a rate limit of its own (a bad shard
    drawn again and again is named once a minute, at most 10 lines a minute in all)."""
    return partial(log_and_continue, warnings=RateLimitedLog(log))


def _skip_unselected(src: Iterable[dict[str, Any]], keep: Callable[[dict[str, Any]], bool] | None,
                     max_rows: dict[str, int] | None) -> Iterator[dict[str, Any]]:
    """Drop the raw records of unselected sessions, and those wholly past their session's row budget, from
    their metadata alone, before their EMG is decoded; a record whose metadata does not parse goes on (to
    :func:`_decode`, which names it)."""
    if keep is None and max_rows is None:
        yield from src
        return
    for raw in src:
        try:
            meta = json.loads(raw["json"])
            selected = keep is None or keep(meta)
            limit = None if max_rows is None else max_rows.get(meta["session"])
            if selected and limit is not None:
                selected = int(meta["start"]) < limit
        except (KeyError, TypeError, ValueError):
            selected = True
        if selected:
            yield raw


def _decode(src: Iterable[dict[str, Any]], keep: Callable[[dict[str, Any]], bool] | None,
            handler: Handler = log_and_continue) -> Iterator[dict[str, Any]]:
    for raw in src:
        try:
            rec = decode_record(raw)
        except DataError as e:
            handler(e)
            continue
        if keep is None or keep(rec["meta"]):
            yield rec


def _expand(src: Iterable[dict[str, Any]], jitter: bool, seed: tuple[int, ...],
            max_rows: dict[str, int] | None, cache: FeatureCache | None = None,
            handler: Handler = log_and_continue) -> Iterator[dict[str, Any]]:
    worker, _ = worker_info()
    rng = np.random.default_rng([*seed, worker])
    for rec in src:
        limit = None if max_rows is None else max_rows.get(rec["meta"]["session"])
        try:
            samples = record_samples(rec, jitter=jitter, rng=rng, max_rows=limit, float32=cache is None)
            if cache is not None:  # the record is the block: its spectra, computed once
                block, first_row = cache.record_block(rec), int(rec["meta"]["start"])
                samples = (cache.serve(s, block, first_row) for s in samples)
            yield from samples
        except CacheWriteError:
            raise  # a full disk stops training; a bad record does not
        except DataError as e:
            handler(e)
        except (KeyError, TypeError, ValueError, IndexError) as e:  # metadata that parses but does not fit
            handler(DataError(rec.get("__url__", "?"), f"record {rec['meta'].get('key', '?')!r} is "
                                                                  f"inconsistent ({type(e).__name__}: {e})"))


def _shuffle(src: Iterable[Any], bufsize: int, seed: tuple[int, ...]) -> Iterator[Any]:
    if bufsize <= 1:
        yield from src
        return
    worker, _ = worker_info()
    yield from wds.shuffle(bufsize, bufsize, seed=make_seed(*seed, worker))(iter(src))


def _worker_seed(rank: int) -> int:
    return rank * 1000 + worker_info()[0]


def _eval_urls(urls: list[str], rank: int, world: int) -> Iterator[dict[str, str]]:
    worker, workers = worker_info()
    for s, _, _ in assign_shards(len(urls), rank * workers + worker, world * workers):
        yield {"url": urls[s]}


def _keep_assigned(src: Iterable[dict[str, Any]], urls: list[str], rank: int, world: int) -> Iterator[dict[str, Any]]:
    worker, workers = worker_info()
    rule = {urls[s]: (m, r) for s, m, r in assign_shards(len(urls), rank * workers + worker, world * workers)}
    current, i = None, 0
    for sample in src:
        url = sample.get("__url__")
        if url != current:
            current, i = url, 0
        m, r = rule.get(url, (1, 0))
        if i % m == r:
            yield sample
        i += 1


# ----------------------------------------------------------------------------- pipelines
def train_pipeline(urls: list[str], *, seed: int, epoch: int, rank: int, batch_size: int, batches_per_worker: int,
                   record_buffer: int, sample_buffer: int, keep: Callable[[dict[str, Any]], bool] | None = None,
                   max_rows: dict[str, int] | None = None, jitter: bool = True,
                   cache: FeatureCache | None = None) -> wds.DataPipeline:
    """Endless resampled training stream cut into epochs of ``batches_per_worker`` batches per worker.

    Args:
        urls: shard URLs (anything WebDataset opens).
        seed, epoch, rank: with the worker id, seed shard choice, shuffles and jitter.
        batch_size: samples per batch (full batches only).
        batches_per_worker: epoch length of each DataLoader worker.
        record_buffer: records (training chunks) in the first shuffle buffer.
        sample_buffer: windows in the second shuffle buffer.
        keep: predicate on a record's metadata (user/session filters).
        max_rows: per-session row budget (see :func:`emgscale.shard.records.record_samples`).
        jitter: draw the reference's window jitter.
        cache: serve the windows' spectra from this feature cache (one block per record).
    """
    if not urls:
        raise ValueError("no shards to train on")
    progress, handler = _Progress(urls), _handler()
    return wds.DataPipeline(
        wds.ResampledShards(urls, seed=make_seed(seed, epoch), worker_seed=partial(_worker_seed, rank),
                            deterministic=True),
        partial(_stop_after_empty_pass, progress=progress),
        wds.tarfile_to_samples(handler=handler),
        partial(_skip_unselected, keep=keep, max_rows=max_rows),
        partial(_decode, keep=keep, handler=handler),
        partial(_made_progress, progress=progress),
        partial(_shuffle, bufsize=record_buffer, seed=(seed, epoch, rank, 1)),
        partial(_expand, jitter=jitter, seed=(seed, epoch, rank), max_rows=max_rows, cache=cache, handler=handler),
        partial(_shuffle, bufsize=sample_buffer, seed=(seed, epoch, rank, 2)),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    ).with_epoch(batches_per_worker)


def eval_pipeline(urls: list[str], *, rank: int, world: int, batch_size: int,
                  keep: Callable[[dict[str, Any]], bool] | None = None,
                  max_rows: dict[str, int] | None = None, cache: FeatureCache | None = None) -> wds.DataPipeline:
    """One deterministic pass over every sample of ``urls``, split exactly once over ranks x workers
    (``cache``: their spectra from this feature cache)."""
    handler = _handler()
    return wds.DataPipeline(
        partial(_eval_urls, urls, rank, world),
        wds.tarfile_to_samples(handler=handler),
        partial(_keep_assigned, urls=urls, rank=rank, world=world),
        partial(_decode, keep=keep, handler=handler),
        partial(_expand, jitter=False, seed=(0,), max_rows=max_rows, cache=cache, handler=handler),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )


def eval_samples_per_reader(counts: list[int], reader: int, readers: int) -> int:
    """Samples reader ``reader`` yields in an eval pass, from per-shard sample counts."""
    total = 0
    for s, m, r in assign_shards(len(counts), reader, readers):
        total += max(0, math.ceil((counts[s] - r) / m))
    return total
