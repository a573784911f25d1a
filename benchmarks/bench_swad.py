"""SWAD memory and checkpoint size, before (in-memory float64 sums) and after (segment means on disk).

    python benchmarks/bench_swad.py [--models conformer_small conformer_large] [--steps-per-segment 2]
                                    [--old-rev 09f07ee] [--out runs/bench_swad]

For each model (``configs/models/<name>.yaml``) and each implementation -- ``before``: ``emgscale/swad.py``
as of ``--old-rev`` (read with ``git show`` into a temporary module), ``after``: today's
``emgscale.swad`` -- a fresh process builds the model and drives the averager exactly as the training
loop does (``after_step`` every step, ``after_validation`` every ``--steps-per-segment`` steps with a
hand-made validation-loss curve that has one valley, a checkpoint at every validation and one
mid-segment, ``finalize`` with one batch for the BatchNorm statistics). The weights change every step by
seeded noise instead of by optimiser steps: the averager's memory and checkpoints depend on the model's
size and the loss curve, not on what the weights are, so no data or training is needed.

Printed, side by side from one invocation, per model and implementation:

* peak RSS of the process while driving the averager, and after ``finalize``; the RSS with the model
  alone for reference (all on rank 0; ``after`` keeps no weights on other ranks);
* the largest averager state a checkpoint carried (``torch.save`` bytes of ``state_dict()``, plus
  ``averaged_model`` once finalised), and the largest ``swad/`` folder on disk (``after`` only);
* whether both implementations averaged the same steps, and the max |difference| of their averaged
  parameters (float32 segment files vs float64 sums: rounding only).

Results go to ``<out>/bench_swad.json``. Default SWAD settings (n_converge 3, n_tolerance 6, r 0.3).

``--memory`` measures SWAD's *peak* memory instead, per phase, for today's tree and a git revision
(``--memory-before``, default the revision before segments were streamed)::

    python benchmarks/bench_swad.py --memory [--models conformer_large] [--memory-before 6fb2a6b]

Each tree runs in its own process (``git archive`` of the revision on ``PYTHONPATH``), builds the model,
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and records the peak RSS (``VmHWM``) over
the RSS with the model alone: after the first step
(steady state: the float64 sum), after 6 validations that each write a segment, and after ``finalize``
(``bn_batches=0``: the averaging only, no forward pass). Figures are in float64 model copies
(``8 x params`` bytes). Results go to ``<out>/bench_swad_memory.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emgscale.common import atomic_write_json, hardware  # noqa: E402

# Falls, a valley around 2.0-2.3 (threshold 2.0 * 1.3 = 2.6) that keeps n_tolerance segments pending,
# then rises for good: the old averager holds the average, 6 pending segments and the open one at once.
LOSSES = [5.0, 4.0, 3.0, 2.0, 2.1, 2.05, 2.15, 2.1, 2.2, 2.1, 2.3, 2.2, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5]


@dataclass
class _Batch:
    emg: torch.Tensor  # (B, T, 2, 16)
    emg_lengths: torch.Tensor  # (B,)

    def to(self, device: torch.device) -> "_Batch":
        return _Batch(self.emg.to(device), self.emg_lengths.to(device))


class _ByteCounter:
    """A write-only file that counts what ``torch.save`` writes."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


def saved_bytes(obj: Any) -> int:
    """Bytes ``torch.save(obj)`` writes."""
    c = _ByteCounter()
    torch.save(obj, c)
    return c.n


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def old_module(rev: str, folder: Path) -> Any:
    """``emgscale/swad.py`` at git revision ``rev``, imported as a standalone module."""
    path = folder / f"swad_{rev}.py"
    if not path.exists():
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:emgscale/swad.py"], check=True,
                             capture_output=True, text=True).stdout
        path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"swad_{rev}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def drive(model_name: str, impl: str, steps_per_segment: int, rev: str, out: Path) -> dict[str, Any]:
    """Build the model and play the loop's averager calls; returns the figures (run in its own process)."""
    from emgscale.config import build_config
    from emgscale.models import build_model, count_parameters
    from emgscale.train import TrainConfig

    torch.manual_seed(0)
    cfg = build_config(TrainConfig, [str(ROOT / "emgscale" / "configs" / "models" / f"{model_name}.yaml")],
                       ["swad.mode=swad", "swad.bn_batches=1"])
    model = build_model(cfg.model)
    model.eval()  # no dropout in the BN pass's template; the averager sets train mode itself
    rss_model = _current_rss_mib()
    store = out / f"swad-{model_name}-{impl}"
    shutil.rmtree(store, ignore_errors=True)
    if impl == "before":
        old = old_module(rev, out)
        known = {f.name for f in dataclasses.fields(old.SWADConfig)}  # the settings the old revision had
        avg = old.WeightAverager(old.SWADConfig(**{k: v for k, v in vars(cfg.swad).items() if k in known}))
    else:
        from emgscale.swad import WeightAverager

        avg = WeightAverager(cfg.swad, store_dir=store, is_main=True)

    def store_bytes() -> int:
        return sum(p.stat().st_size for p in store.glob("*.pt")) if store.is_dir() else 0

    g = torch.Generator().manual_seed(1)
    ckpt_max = store_max = 0
    t_avg = 0.0
    params = list(model.parameters())
    with torch.no_grad():
        for step in range(len(LOSSES) * steps_per_segment):
            for p in params:
                p.add_(torch.randn(p.shape, generator=g), alpha=1e-3)
            t0 = time.perf_counter()
            avg.after_step(model, step)
            t_avg += time.perf_counter() - t0
            if step % steps_per_segment == 0:  # a mid-segment checkpoint (run.ckpt_every_steps)
                ckpt_max = max(ckpt_max, saved_bytes(avg.state_dict()))
                store_max = max(store_max, store_bytes())
            if (step + 1) % steps_per_segment == 0:
                t0 = time.perf_counter()
                avg.after_validation(model, LOSSES[(step + 1) // steps_per_segment - 1], step + 1)
                t_avg += time.perf_counter() - t0
                ckpt_max = max(ckpt_max, saved_bytes(avg.state_dict()))  # the loop saves last.pt here
                store_max = max(store_max, store_bytes())
    rss_drive = _rss_mib()
    x = torch.randn(1, 4000, 2, 16)  # 2 s of EMG for the BatchNorm statistics
    avg.finalize(model, lambda: [_Batch(x, torch.tensor([4000]))], torch.device("cpu"))
    final = avg.averaged_state_dict()
    ckpt_final = saved_bytes({"averager": avg.state_dict(), "averaged_model": final})
    names = {k for k, _ in model.named_parameters()}
    torch.save({k: v for k, v in final.items() if k in names}, out / f"avg-{model_name}-{impl}.pt")
    return {"model": model_name, "impl": impl, "params": count_parameters(model), "rss_model_mib": rss_model,
            "peak_rss_drive_mib": rss_drive, "peak_rss_final_mib": _rss_mib(),
            "ckpt_averager_max_bytes": ckpt_max, "ckpt_final_bytes": ckpt_final,
            "model_state_bytes": saved_bytes(model.state_dict()), "store_max_bytes": store_max,
            "store_final_bytes": store_bytes(), "included_steps": list(avg.included_steps),
            "averager_s": t_avg}


def compare(out: Path, model_name: str) -> dict[str, Any]:
    """Max |before - after| over the averaged parameters of ``model_name``."""
    a, b = (torch.load(out / f"avg-{model_name}-{i}.pt", weights_only=True) for i in ("before", "after"))
    return {"same_keys": a.keys() == b.keys(),
            "max_abs_diff": max(float((a[k] - b[k]).abs().max()) for k in a),
            "max_abs_weight": max(float(a[k].abs().max()) for k in a)}


def run(models: list[str], steps_per_segment: int, rev: str, out: Path) -> dict[str, Any]:
    """Every (model, implementation) in its own process (peak RSS is per process); returns the results."""
    out.mkdir(parents=True, exist_ok=True)
    rows, checks = [], {}
    for m in models:
        for impl in ("before", "after"):
            cmd = [sys.executable, __file__, "--worker", m, impl, "--steps-per-segment", str(steps_per_segment),
                   "--old-rev", rev, "--out", str(out)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if res.returncode:
                raise RuntimeError(f"bench_swad worker {m} {impl} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        before, after = rows[-2], rows[-1]
        checks[m] = {"same_steps": before["included_steps"] == after["included_steps"],
                     "averaged_steps": len(after["included_steps"]), **compare(out, m)}
        for impl in ("before", "after"):  # the averages and segment files are only needed for the checks
            (out / f"avg-{m}-{impl}.pt").unlink()
            shutil.rmtree(out / f"swad-{m}-{impl}", ignore_errors=True)
    result = {"hardware": hardware(), "losses": LOSSES, "steps_per_segment": steps_per_segment, "old_rev": rev,
              "rows": [{k: v for k, v in r.items() if k != "included_steps"} for r in rows], "checks": checks}
    atomic_write_json(out / "bench_swad.json", result)
    return result


#: The memory worker: run with ``PYTHONPATH`` = the tree under test; argv = model YAML, store folder.
MEMORY_WORKER = """
import json, resource, sys
import torch
from emgscale.config import build_config
from emgscale.models import build_model, count_parameters
from emgscale.swad import WeightAverager
from emgscale.train.config import TrainConfig

def peak():  # peak RSS in bytes since the reset below (VmHWM), else since the process began (ru_maxrss)
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

torch.manual_seed(0)
cfg = build_config(TrainConfig, [sys.argv[1]], ["swad.mode=swad", "swad.bn_batches=0"])
model = build_model(cfg.model).eval()
params = list(model.parameters())
try:  # reset the peak to the RSS now (Linux >= 4.0), so building the model does not hide what follows
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = peak()
avg = WeightAverager(cfg.swad, store_dir=sys.argv[2], is_main=True)
out = {"params": count_parameters(model), "base_bytes": base}
with torch.no_grad():
    for step, loss in enumerate([3.0, 2.0, 2.1, 2.05, 2.15, 2.1]):
        for p in params:
            p.add_(1e-4)  # in place: no temporary beside the model
        avg.after_step(model, step)
        if step == 0:
            out["steady_bytes"] = peak() - base
        avg.after_validation(model, loss, step + 1)
out["validation_bytes"] = peak() - base
avg.finalize(model, lambda: [], torch.device("cpu"))
out["final_bytes"] = peak() - base
out["averaged"] = avg.averaged_state_dict() is not None
print(json.dumps(out))
"""


def memory(models: list[str], before_rev: str, out: Path) -> dict[str, Any]:
    """Peak SWAD memory per phase, today's tree vs ``before_rev`` (each in its own process)."""
    out.mkdir(parents=True, exist_ok=True)
    old_tree = out / f"tree-{before_rev}"
    if not old_tree.is_dir():
        old_tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", before_rev, "emgscale"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
    rows = []
    for m in models:
        yaml_file = ROOT / "emgscale" / "configs" / "models" / f"{m}.yaml"
        for impl, tree in ((f"before ({before_rev})", old_tree), ("after", ROOT)):
            store = out / "swad-memory"
            shutil.rmtree(store, ignore_errors=True)
            env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
            res = subprocess.run([sys.executable, "-c", MEMORY_WORKER, str(yaml_file), str(store)], cwd=out,
                                 capture_output=True, text=True, env=env)
            shutil.rmtree(store, ignore_errors=True)
            if res.returncode:
                raise RuntimeError(f"bench_swad memory worker {m} {impl} failed:\n{res.stderr[-3000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            copy64 = 8 * r["params"]
            rows.append({"model": m, "impl": impl, **r,
                         **{f"{k}_f64_copies": r[f"{k}_bytes"] / copy64 for k in ("steady", "validation", "final")}})
    result = {"hardware": hardware(), "rows": rows}
    atomic_write_json(out / "bench_swad_memory.json", result)
    return result


def _memory_table(result: dict[str, Any]) -> str:
    lines = [f"{'model':<16} {'impl':<18} {'params':>8} {'steady':>18} {'validations':>18} {'finalize':>18}",
             f"{'':<16} {'':<18} {'':>8} {'(peak over the model alone; x = float64 model copies)':>56}"]
    for r in result["rows"]:
        cells = " ".join(f"{_size(r[f'{k}_bytes']):>10} {r[f'{k}_f64_copies']:>5.2f}x"
                         for k in ("steady", "validation", "final"))
        lines.append(f"{r['model']:<16} {r['impl']:<18} {r['params'] / 1e6:>7.2f}M {cells}")
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _table(result: dict[str, Any]) -> str:
    mib = 2**20
    lines = [f"{'model':<16} {'impl':<7} {'params':>8} {'RSS model':>10} {'peak drive':>11} {'peak final':>11} "
             f"{'ckpt avg max':>13} {'ckpt final':>11} {'swad/ max':>10} {'avg s':>6}"]
    for r in result["rows"]:
        lines.append(f"{r['model']:<16} {r['impl']:<7} {r['params'] / 1e6:>7.2f}M "
                     + " ".join(f"{_size(r[k] * mib):>{w}}" for k, w in
                                (("rss_model_mib", 10), ("peak_rss_drive_mib", 11), ("peak_rss_final_mib", 11)))
                     + f" {_size(r['ckpt_averager_max_bytes']):>13} {_size(r['ckpt_final_bytes']):>11}"
                     f" {_size(r['store_max_bytes']):>10} {r['averager_s']:>6.1f}")
    for m, c in result["checks"].items():
        lines.append(f"{m}: same averaged steps {c['same_steps']} ({c['averaged_steps']} steps), "
                     f"max |before - after| {c['max_abs_diff']:.2e} (max |w| {c['max_abs_weight']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; the parent runs every worker and prints the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", help="default: conformer_small conformer_large (--memory: conformer_large)")
    p.add_argument("--steps-per-segment", type=int, default=2)
    p.add_argument("--old-rev", default="09f07ee", help="git revision of the old emgscale/swad.py")
    p.add_argument("--out", default="runs/bench_swad")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "IMPL"), help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help="peak memory per phase, today vs --memory-before "
                                                         "(default model: conformer_large)")
    p.add_argument("--memory-before", default="6fb2a6b", help="git revision to compare with under --memory")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if args.memory:
        result = memory(args.models or ["conformer_large"], args.memory_before, out)
        print(_memory_table(result))
        print(f"[bench_swad] {out / 'bench_swad_memory.json'}")
        return 0
    if args.worker:
        print(json.dumps(drive(args.worker[0], args.worker[1], args.steps_per_segment, args.old_rev, out)))
        return 0
    result = run(args.models or ["conformer_small", "conformer_large"], args.steps_per_segment, args.old_rev, out)
    print(_table(result))
    print(f"[bench_swad] {out / 'bench_swad.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
