"""Where a `small` training step's time goes: data, features, model forward, CTC, backward, optimiser.

    python benchmarks/bench_step.py --data-root CORPUS [--split single_user] [--model cnn_bigru_small]
        [--shards SHARD_DIR] [--steps 30] [--warmup 5] [--threads 1] [key=value ...]

Times each part of the training step of the ``small`` recipe (batch 16 x 4 s windows, training mode
with the default augmentations) ``--steps`` times after ``--warmup`` untimed steps, in one process:

* data: the next batch from :func:`emgscale.loader.build_loader` (HDF5 sessions, or ``--shards``);
* features: the model's :class:`~emgscale.features.Featurizer` (augmentations, decimation, log
  spectrogram, normalisation) — it has no parameters and its input needs no gradient, so its whole
  cost is this forward;
* model forward: front end, encoder, head and log-softmax;
* ctc: the CTC loss (forward);
* backward: of the loss through the model (and CTC);
* optimiser: gradient clipping and the Adam step.

Prints median milliseconds per part and its share of the step (the table in benchmarks/README.md).
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


def profile(cfg: Any, steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each part of ``steps`` training steps of ``cfg`` (after ``warmup`` untimed ones)."""
    import torch

    from emgscale.loader import build_loader
    from emgscale.models import build_model
    from emgscale.train.validation import ctc_loss

    torch.manual_seed(cfg.run.seed)
    torch.set_flush_denormal(True)
    model = build_model(cfg.model).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    times: dict[str, list[float]] = {p: [] for p in PARTS}

    def batches() -> Any:
        for epoch in range(10_000):
            yield from build_loader(cfg.data, "train", train=True, seed=cfg.run.seed, epoch=epoch)

    it = batches()
    for i in range(warmup + steps):
        t = [time.perf_counter()]
        batch = next(it)
        t.append(time.perf_counter())
        feats, frames = model.featurizer(batch.emg, batch.emg_lengths)
        t.append(time.perf_counter())
        y, out_lengths = model.encoder(model.frontend(feats), frames)
        log_probs = model.head(y).float().log_softmax(-1)
        t.append(time.perf_counter())
        loss = ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
        opt.step()
        t.append(time.perf_counter())
        if i >= warmup:
            for name, a, b in zip(PARTS, t, t[1:]):
                times[name].append(b - a)
    return times


def table(times: dict[str, list[float]]) -> str:
    """Markdown: median ms and share of the summed medians, per part."""
    med = {p: statistics.median(v) for p, v in times.items()}
    total = sum(med.values())
    lines = ["| part | ms / step (median) | share |", "|---|--:|--:|"]
    lines += [f"| {p} | {1e3 * m:.0f} | {100 * m / total:.0f} % |" for p, m in med.items()]
    lines.append(f"| step | {1e3 * total:.0f} | 100 % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default="single_user")
    p.add_argument("--model", default="cnn_bigru_small")
    p.add_argument("--shards", default=None, help="read the training windows from these shards")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    import torch

    from emgscale.train import load_train_config

    torch.set_num_threads(a.threads)
    cfg = load_train_config([ROOT / "configs" / "models" / f"{a.model}.yaml"], [
        "data.batch_size=16", "optim.lr=5e-3", "optim.grad_clip=5", f"data.data_root={a.data_root}",
        f"data.split={Path(a.data_root) / 'splits' / (a.split + '.yaml')}",
        *([f"data.shards={a.shards}"] if a.shards else []), *a.overrides])
    times = profile(cfg, a.steps, a.warmup)
    print(f"{a.model}, batch {cfg.data.batch_size}, {a.threads} thread(s), "
          f"{'shards' if a.shards else 'HDF5'}, {a.steps} steps")
    print(table(times))
    return times


if __name__ == "__main__":
    main()
