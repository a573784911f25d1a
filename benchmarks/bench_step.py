"""Where a `small` training step's time goes: data, features, model forward, CTC, backward, optimiser.

    python benchmarks/bench_step.py --data-root CORPUS [--split single_user] [--model cnn_bigru_small]
        [--shards SHARD_DIR] [--feature-cache CACHE_DIR] [--steps 30] [--warmup 5] [--threads 1] [--keep-freed]
        [key=value ...]

Times each part of the training step of the ``small`` recipe (batch 16 x 4 s windows, training mode
with the default augmentations) ``--steps`` times after ``--warmup`` untimed steps, in one process:

* data: the next batch from :func:`emgscale.loader.build_loader` (HDF5 sessions, or ``--shards``);
* features: the model's :class:`~emgscale.features.Featurizer` (augmentations, decimation, log
  spectrogram, normalisation; :meth:`~emgscale.models.ctc.CTCModel.featurize`, which leaves a batch norm's
  affine map to the front end where the model folds it) — its input needs no gradient, so its whole
  cost is this forward;
* model forward: front end, encoder, head and log-softmax;
* ctc: the CTC loss (forward);
* backward: of the loss through the model (and CTC);
* optimiser: gradient clipping and the Adam step.

Prints median milliseconds per part and its share of the step (the table in benchmarks/README.md).

``--feature-cache DIR`` measures the raw path and the feature cache (``data.feature_cache``,
:mod:`emgscale.loader.feature_cache`) side by side in one run, both without inter-band temporal jitter
(the cache cannot jitter): the same seed and initial weights, one step from raw EMG and one from
cached spectra in turn, where *features* is only the feature-space half (rotation, SpecAugment, norm) and
*data* includes reading the memory-mapped spectra. With HDF5 the cache is built for every training
session first (its time is printed, not counted in the steps); with ``--shards`` it fills in during
the first steps (give ``--warmup`` enough steps to see each record once).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("data", "features", "model forward", "ctc", "backward", "optimiser")


def profile(cfgs: dict[str, Any], steps: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of each part of ``steps`` training steps of each config (after ``warmup`` untimed ones).

    The configs take turns step by step (each with its own model, from the same seed, and its own
    loader), so a machine whose load drifts slows them alike.
    """
    import torch

    from emgscale.loader import build_loader
    from emgscale.models import build_model

    torch.set_flush_denormal(True)

    def batches(cfg: Any) -> Any:
        for epoch in range(10_000):
            yield from build_loader(cfg.data, "train", train=True, seed=cfg.run.seed, epoch=epoch,
                                    features=cfg.model.features)

    runs = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(cfg.run.seed)
        model = build_model(cfg.model).train()
        runs[name] = (cfg, model, torch.optim.Adam(model.parameters(), lr=cfg.optim.lr), batches(cfg))
    times: dict[str, dict[str, list[float]]] = {name: {p: [] for p in PARTS} for name in cfgs}
    for i in range(warmup + steps):
        for name, (cfg, model, opt, it) in runs.items():
            t = _step(cfg, model, opt, it)
            if i >= warmup:
                for part, a, b in zip(PARTS, t, t[1:]):
                    times[name][part].append(b - a)
    return times


def _step(cfg: Any, model: Any, opt: Any, it: Any) -> list[float]:
    """One training step, timed: the clock at the start and after each of :data:`PARTS`."""
    import torch

    from emgscale.train.validation import ctc_loss

    t = [time.perf_counter()]
    batch = next(it)
    t.append(time.perf_counter())
    if batch.features is not None:  # data.feature_cache: only the feature-space half runs
        feats = model.featurize(batch.features, batch.feature_lengths, spectra=True)
    else:
        feats = model.featurize(batch.emg, batch.emg_lengths)
    t.append(time.perf_counter())
    log_probs, out_lengths = model.from_features(*feats)
    t.append(time.perf_counter())
    loss = ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths)
    t.append(time.perf_counter())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t.append(time.perf_counter())
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
    opt.step()
    t.append(time.perf_counter())
    return t


def build_cache(cfg: Any) -> tuple[float, float]:
    """Build the feature cache of every training session of ``cfg`` (HDF5); ``(seconds, EMG seconds)``."""
    from emgscale.data.source import open_session
    from emgscale.data.splits import DataRoot, load_split
    from emgscale.loader.feature_cache import FeatureCache

    cache = FeatureCache(cfg.data.feature_cache, cfg.model.features)
    t0, emg_s = time.perf_counter(), 0.0
    refs = load_split(cfg.data.split)["train"]
    for path in DataRoot(cfg.data.data_root, cfg.data.bids_metadata).paths([r.session for r in refs]):
        with open_session(path, cfg.data.bids_metadata) as s:
            emg_s += len(s) / cfg.model.features.input_sample_rate_hz
        cache.session_block(path)
    return time.perf_counter() - t0, emg_s


def table(times: dict[str, list[float]]) -> str:
    """Markdown: median ms and share of the summed medians, per part."""
    med = {p: statistics.median(v) for p, v in times.items()}
    total = sum(med.values())
    lines = ["| part | ms / step (median) | share |", "|---|--:|--:|"]
    lines += [f"| {p} | {1e3 * m:.0f} | {100 * m / total:.0f} % |" for p, m in med.items()]
    lines.append(f"| step | {1e3 * total:.0f} | 100 % |")
    return "\n".join(lines)


def side_by_side(raw: dict[str, list[float]], cached: dict[str, list[float]]) -> str:
    """Markdown: median ms per part from raw EMG and from the feature cache, and the step's speed-up."""
    a = {p: statistics.median(v) for p, v in raw.items()}
    b = {p: statistics.median(v) for p, v in cached.items()}
    lines = ["| part | raw ms / step | cached ms / step |", "|---|--:|--:|"]
    lines += [f"| {p} | {1e3 * a[p]:.0f} | {1e3 * b[p]:.0f} |" for p in PARTS]
    ta, tb = sum(a.values()), sum(b.values())
    lines.append(f"| step | {1e3 * ta:.0f} | {1e3 * tb:.0f} ({100 * (1 - tb / ta):.0f} % less, {ta / tb:.2f}x) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default="single_user")
    p.add_argument("--model", default="cnn_bigru_small")
    p.add_argument("--shards", default=None, help="read the training windows from these shards")
    p.add_argument("--feature-cache", default=None, metavar="DIR",
                   help="also measure training from spectra cached in DIR, side by side (no temporal jitter)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-freed", action="store_true",
                   help="first call emgscale.malloc.keep_freed_memory(): freed activations stay mapped (no page "
                        "faults per step; the process keeps its peak memory)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    import torch

    from emgscale.train import load_train_config

    torch.set_num_threads(a.threads)
    if a.keep_freed:
        from emgscale.malloc import keep_freed_memory

        keep_freed_memory()
    base = ["data.batch_size=16", "optim.lr=5e-3", "optim.grad_clip=5", f"data.data_root={a.data_root}",
            f"data.split={Path(a.data_root) / 'splits' / (a.split + '.yaml')}",
            *([f"data.shards={a.shards}"] if a.shards else [])]
    if a.feature_cache:
        base.append("model.augment.temporal_jitter_samples=0")
    model_yaml = [ROOT / "emgscale" / "configs" / "models" / f"{a.model}.yaml"]
    cfg = load_train_config(model_yaml, [*base, *a.overrides])
    source = "shards" if a.shards else "HDF5"
    print(f"{a.model}, batch {cfg.data.batch_size}, {a.threads} thread(s), {source}, {a.steps} steps"
          + (" (after " + str(a.warmup) + " warm-up steps), no temporal jitter" if a.feature_cache else ""))
    if not a.feature_cache:
        times = profile({"raw": cfg}, a.steps, a.warmup)["raw"]
        print(table(times))
        return times
    cached_cfg = load_train_config(model_yaml, [*base, f"data.feature_cache={a.feature_cache}", *a.overrides])
    if not a.shards:
        seconds, emg_s = build_cache(cached_cfg)
        print(f"feature cache: {emg_s / 60:.1f} EMG-min of training sessions in {seconds:.1f} s "
              f"({seconds / max(emg_s, 1e-9) * 1e3:.1f} ms per EMG-s; 0 s when already built)")
    both = profile({"raw": cfg, "cached": cached_cfg}, a.steps, a.warmup)
    print(side_by_side(both["raw"], both["cached"]))
    return both


if __name__ == "__main__":
    main()
