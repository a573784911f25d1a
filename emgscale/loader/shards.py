"""The shard source of :func:`emgscale.loader.build_loader`: manifest -> URLs, subsets, epoch sizes, pipelines."""

from __future__ import annotations

import math
from typing import Any

import torch
from webdataset.shardlists import expand_urls

from emgscale.loader.feature_cache import FeatureCache
from emgscale.loader.base import DataConfig, Loader, Selection, minutes_budget
from emgscale.loader import shard_pipeline
from emgscale.shard.manifest import MANIFEST, Manifest, load_manifest, shard_url
from emgscale.shard.records import KIND_SESSION, KIND_TRAIN


class _KeepSessions:
    """Picklable record filter: a record is kept when its session is in the set."""

    def __init__(self, sessions: set[str]) -> None:
        self.sessions = frozenset(sessions)

    def __call__(self, meta: dict[str, Any]) -> bool:
        return meta["session"] in self.sessions


class _KeepSelection:
    """Picklable record filter on user and session (no manifest to resolve sessions with)."""

    def __init__(self, sel: Selection) -> None:
        self.sel = sel

    def __call__(self, meta: dict[str, Any]) -> bool:
        return self.sel.keep(str(meta["user"]), meta["session"])


def check_windowing(cfg: DataConfig, manifest: Manifest, part: str) -> None:
    """The config's windowing (and eval mode of ``part``) must be the shards'."""
    s, w = manifest.settings, cfg.window
    keys = ["window_samples", "pad_left_samples", "pad_right_samples"]
    for key in keys:
        if key in s and s[key] != getattr(w, key):
            raise ValueError(f"data.window.{key} is {getattr(w, key)!r} but the shards at {manifest.location} were "
                             f"written with {s[key]!r}; reshard or set data.window.{key}={s[key]!r}")
    if part in ("val", "test") and f"{part}_mode" in s and s[f"{part}_mode"] != getattr(cfg, f"{part}_mode"):
        raise ValueError(f"data.{part}_mode is {getattr(cfg, f'{part}_mode')!r} but the shards at {manifest.location} "
                         f"were written with {s[f'{part}_mode']!r}; reshard or set data.{part}_mode={s[f'{part}_mode']!r}")
    stride, theirs = w.stride, s.get("stride_samples") or s.get("window_samples")
    if theirs != stride:
        raise ValueError(f"data.window.stride_samples gives {stride} but the shards at {manifest.location} use {theirs}")


def shard_loader(cfg: DataConfig, part: str, *, train: bool, seed: int, epoch: int, rank: int, world: int,
                 batch_size: int, sel: Selection, limit: int | None, cache: FeatureCache | None = None) -> Loader:
    """See :func:`emgscale.loader.build_loader` (``cache``: serve windowed samples from it)."""
    base = str(cfg.shards)
    workers = max(1, cfg.num_workers or 0)
    filtered = sel.filtered
    max_rows: dict[str, int] | None = None
    counts: list[int] | None = None
    records: int | None = None  # training records holding the selected windows, when the manifest tells
    if ".tar" in base:  # an explicit list / brace pattern of shards, no manifest
        if sel.max_minutes is not None:
            raise ValueError("max_minutes_per_user needs a shard manifest (data.shards = a shard folder or prefix)")
        urls = expand_urls(base)
        keep: Any = _KeepSelection(sel) if filtered else None
        windows, kind, where = None, None, base
    else:
        manifest = load_manifest(cfg.shards_manifest or shard_url(base, MANIFEST))
        check_windowing(cfg, manifest, part)
        entries = manifest.shards_of(part)
        if not entries:
            raise ValueError(f"the shards at {manifest.location} have no {part!r} part (they have "
                             f"{sorted(manifest.parts)})")
        kind, where = entries[0]["kind"], manifest.location
        sessions = {k: v for k, v in manifest.sessions.get(part, {}).items() if sel.keep(v["user"], k)}
        rows = {k: v["num_rows"] for k, v in sessions.items()}
        if sel.max_minutes is not None:
            if kind == KIND_SESSION:
                raise ValueError(f"max_minutes_per_user needs windowed samples; the {part!r} shards hold whole sessions")
            max_rows = minutes_budget([(v["user"], k, v["start_time_s"], v["num_rows"], v["sample_rate_hz"])
                                       for k, v in sessions.items()], sel.max_minutes)
            rows = max_rows
        windows = sum(1 if kind == KIND_SESSION else cfg.window.num_windows(r) for r in rows.values())
        per_record = manifest.settings.get("train_windows_per_record")
        if kind == KIND_TRAIN and isinstance(per_record, int) and per_record > 0:
            records = sum(math.ceil(cfg.window.num_windows(r) / per_record) for r in rows.values())
        if filtered:
            entries = [e for e in entries if rows.keys() & set(e["sessions"])]
            keep = _KeepSessions(set(rows))
        else:
            keep = None
            counts = [e["num_windows"] for e in entries]
        urls = [shard_url(base, e["name"]) for e in entries]
    if not urls:
        raise ValueError(f"no {part!r} shards hold the selected users/sessions at {where}")
    if kind == KIND_SESSION:
        cache = None  # whole sessions stay on the raw path
    if train:
        total = cfg.train_samples_per_epoch or windows
        if not total:
            raise ValueError("set data.train_samples_per_epoch: the shards have no manifest to count windows from")
        per_worker = math.ceil(math.ceil(total / (world * batch_size)) / workers)
        # Buffers no larger than the selection: a few minutes of a user's data hold fewer windows than the
        # buffer, and filling it would decode the same records over and over (16 CPU-s for 7 windows).
        record_buffer = min(cfg.record_shuffle_buffer, max(1, records)) if records is not None else cfg.record_shuffle_buffer
        sample_buffer = min(cfg.shuffle_buffer, max(1, windows)) if windows else cfg.shuffle_buffer
        pipeline = shard_pipeline.train_pipeline(urls, seed=seed, epoch=epoch, rank=rank, batch_size=batch_size,
                                         batches_per_worker=per_worker, record_buffer=record_buffer,
                                         sample_buffer=sample_buffer, keep=keep, max_rows=max_rows,
                                         jitter=cfg.window.jitter, cache=cache)
        num_batches: int | None = per_worker * workers
        num_samples: int | None = num_batches * batch_size
    else:
        pipeline = shard_pipeline.eval_pipeline(urls, rank=rank, world=world, batch_size=batch_size, keep=keep,
                                        max_rows=max_rows, cache=cache)
        num_batches = num_samples = None
        if counts is not None and (kind != KIND_TRAIN or world * workers <= len(counts)):
            per = [shard_pipeline.eval_samples_per_reader(counts, rank * workers + w, world * workers) for w in range(workers)]
            num_samples, num_batches = sum(per), sum(math.ceil(n / batch_size) for n in per)
    iterable: Any = pipeline
    if (cfg.num_workers or 0) > 0:
        iterable = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=cfg.num_workers,
                                               pin_memory=bool(cfg.pin_memory))
    mode = "train stream" if train else "eval pass"
    where = f"{part} shards ({mode}) at {where}" + (f", spectra cached in {cache.folder}" if cache else "")
    return Loader(iterable, num_batches, num_samples, where, limit, batch_size)
