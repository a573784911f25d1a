"""Encoder benchmark: parameters, FLOPs, and CPU/GPU training-step throughput in fp32 and bf16.

For each model config (``configs/models/<name>.yaml``) it reports:

* parameters;
* forward GFLOP per EMG-second: ``torch.utils.flop_counter.FlopCounterMode`` on one eval-mode forward of
  an input of ``window + context`` samples, divided by that input's duration (matmuls, convolutions and
  attention; elementwise work is not counted, nor are oneDNN's fused LSTM kernels, so LSTM rows
  count only the layers around the recurrence; S4D rows add the FLOPs of the S4D recurrence, their
  streaming form, because their offline convolution mode runs FFTs the counter does not see);
* a training step (forward, CTC loss, backward, AdamW step) on random EMG with random labels, batch
  ``--batch`` of ``--window-samples + --context-samples`` samples (default 32 x 10,000 = the reference's
  4 s windows with 0.9 s + 0.1 s context), in fp32 and under ``torch.autocast(dtype=bfloat16)``:
  seconds per step, throughput in EMG-seconds per wall-second (labelled window seconds, 4 s per
  sample, as the reference's 9.4 EMG-s/s = 32 x 4 s / 13.6 s), achieved GFLOP/s (forward + backward
  FLOPs counted the same way), EMG-seconds per CPU-second of the process (less sensitive to other
  processes on a shared machine; times the thread count it bounds the throughput of an idle
  machine), and the peak resident memory of the process.

Each (config, dtype) runs in a fresh subprocess, so peak memory is its own. The load average is printed:
on a shared machine the timings move with it. ``--rounds N`` runs the whole list N times in turn (A, B,
A, B, ...), so a load that drifts slows every row alike; a row's step time is the median over all its
timed steps. When ``reference_tds`` fp32 is in the run, every row also gets its speed relative to it,
by wall time and by CPU time (``vs ref``, ``vs ref CPU``): the side-by-side ratio of issue 26.
emgscale's runs first call :func:`emgscale.malloc.keep_freed_memory` (freed activations stay mapped, so
a step stops page-faulting them in again); the reference keeps glibc's defaults, as it runs, unless
``--keep-freed all`` (equal process settings; ``none``: neither).

    python benchmarks/bench_models.py                         # TDS, batch 32, fp32 vs bf16
    python benchmarks/bench_models.py --configs tds,conformer,cnn_bigru --batch 8 --steps 2
    python benchmarks/bench_models.py --quick                 # every config, batch 2, short windows
    python benchmarks/bench_models.py --configs tds,reference_tds --dtypes fp32   # vs the reference layout
    python benchmarks/bench_models.py --configs tds,reference_tds --dtypes fp32 --rounds 2 --steps 2 --warmup 0
    python benchmarks/bench_models.py --configs tds,reference_tds --dtypes fp32 --keep-freed all   # equal malloc
    python benchmarks/bench_models.py --preload /usr/lib/x86_64-linux-gnu/libjemalloc.so.2   # caching malloc
    python benchmarks/bench_models.py --json results/bench_models.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "emgscale" / "configs" / "models"


def reference_tds() -> Any:
    """The reference TDS-Conv pipeline in the reference's own layout, for side-by-side timing only.

    Written from the emg2qwerty paper's architecture (not emgscale's implementation): time-first
    tensors, ``torch.stft`` log spectrogram computed per step, ``BatchNorm2d`` over (N, 32, freq, T)
    copies, an MLP over explicitly stacked rolled inputs, channel-major ``Conv2d(kernel=(1, 32))`` TDS
    blocks on (N, channels, width, T) copies. Augmentations are left out (they are cheap). emgscale's
    ``tds`` computes the same function (``tests/test_reference.py``) in a copy-free width-major layout.
    As emg2qwerty's ``modules.py``, the fully connected blocks add their residual in place and the MLP's
    and fully connected blocks' ReLUs are ``inplace=True``. The conv block's residual add stays out of
    place: in place it modifies the ReLU output that ReLU's backward needs (an autograd error here).
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int, w: int, k: int) -> None:
            super().__init__()
            self.c, self.w = c, w
            self.conv2d = nn.Conv2d(c, c, kernel_size=(1, k))
            self.layer_norm = nn.LayerNorm(c * w)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, N, F)
            t, n, f = x.shape
            h = torch.relu(self.conv2d(x.movedim(0, -1).reshape(n, self.c, self.w, t)))
            h = h.reshape(n, f, -1).movedim(-1, 0)
            return self.layer_norm(h + x[-h.shape[0]:])

    class FC(nn.Module):
        def __init__(self, f: int) -> None:
            super().__init__()
            self.fc_block = nn.Sequential(nn.Linear(f, f), nn.ReLU(inplace=True), nn.Linear(f, f))
            self.layer_norm = nn.LayerNorm(f)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc_block(x)
            h += x  # in place, as the reference
            return self.layer_norm(h)

    class Reference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(32)
            self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(528, 384), nn.ReLU(inplace=True)) for _ in range(2))
            self.tds = nn.Sequential(*[m for _ in range(4) for m in (Block(24, 32, 32), FC(768))])
            self.head = nn.Linear(768, 99)
            self.register_buffer("window", torch.hann_window(64))
            self.input_sample_rate_hz, self.blank = 2000.0, 98

        def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
            return (lengths - 64) // 16 + 1 - 124

        def forward(self, emg: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b, n = emg.shape[:2]
            spec = torch.stft(emg.permute(0, 2, 3, 1).reshape(-1, n).float(), 64, 16, window=self.window,
                              center=False, return_complex=True)
            x = torch.log10(spec.abs().pow(2) / self.window.pow(2).sum() + 1e-6)  # (B*32, 33, T)
            x = self.norm(x.view(b, 32, 33, -1))  # (N, 32, freq, T)
            x = x.view(b, 2, 16, 33, -1).permute(4, 0, 1, 2, 3)  # (T, N, 2, 16, 33)
            bands = []
            for i, mlp in enumerate(self.mlps):
                rolled = torch.stack([x[:, :, i].roll(o, dims=2) for o in (-1, 0, 1)], 2).flatten(3)
                bands.append(mlp(rolled).mean(2))
            h = self.tds(torch.stack(bands, 2).flatten(2))
            log_probs = self.head(h).float().log_softmax(-1).transpose(0, 1)
            return log_probs, self.output_lengths(lengths)

    return Reference()


def measure(config: str, dtype: str, batch: int, window_samples: int, context_samples: int, steps: int,
            warmup: int, threads: int | None, device: str, keep_freed: bool = False) -> dict[str, Any]:
    """Benchmark one model config in one dtype in this process; returns one result row.

    ``keep_freed``: first :func:`emgscale.malloc.keep_freed_memory` (a process setting, as the thread count).
    """
    import torch
    import torch.nn.functional as F
    import yaml
    from torch.utils.flop_counter import FlopCounterMode

    from emgscale.common import peak_rss_mb
    from emgscale.config import config_path, from_dict
    from emgscale.models import ModelConfig, build_model, count_parameters

    if threads:
        torch.set_num_threads(threads)
    if keep_freed:
        from emgscale.malloc import keep_freed_memory

        keep_freed = keep_freed_memory()
    torch.manual_seed(0)
    if config == "reference_tds":
        cfg, model = ModelConfig(arch="tds (ref)"), reference_tds().to(device)
    else:
        path = config_path(config) if config.endswith(".yaml") else CONFIG_DIR / f"{config}.yaml"  # or a recipe file
        cfg = from_dict(ModelConfig, yaml.safe_load(path.read_text())["model"])
        model = build_model(cfg).to(device)
    rate = model.input_sample_rate_hz
    n = window_samples + context_samples
    emg = torch.randn(batch, n, 2, 16, device=device) * 20.0
    lengths = torch.full((batch,), n, device=device)
    out_len = int(model.output_lengths(torch.tensor([n]))[0])
    label_len = max(1, min(40, out_len // 3))
    labels = torch.randint(0, model.blank, (batch, label_len), device=device)
    label_lengths = torch.full((batch,), label_len, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def loss_fn() -> "torch.Tensor":
        with autocast:
            log_probs, out_lengths = model(emg, lengths)
            return F.ctc_loss(log_probs.transpose(0, 1), labels, out_lengths, label_lengths, blank=model.blank,
                              zero_infinity=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc, autocast:
        model(emg[:1], lengths[:1])
    fwd_flops = fc.get_total_flops()
    recurrent_flops = getattr(getattr(model, "encoder", None), "recurrent_flops", None)  # S4D: uncounted elementwise
    if recurrent_flops is not None:
        fwd_flops += recurrent_flops(out_len)
    model.train()
    with FlopCounterMode(display=False) as fc:
        loss_fn().backward()
    step_flops = fc.get_total_flops()
    for _ in range(warmup):
        step()
    sync()
    import resource

    times, cpu_times = [], []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / max(steps, 1)
    step_s = sorted(times)[(len(times) - 1) // 2]  # median (lower middle)
    cpu_s = sorted(cpu_times)[(len(cpu_times) - 1) // 2]
    peak = peak_rss_mb() if device == "cpu" else torch.cuda.max_memory_allocated() / 2**20
    return {
        "config": config, "arch": cfg.arch, "dtype": dtype, "params": count_parameters(model),
        "fwd_gflop_per_emg_s": fwd_flops / 1e9 / (n / rate), "step_s": step_s, "step_times_s": times,
        "emg_s_per_s": batch * window_samples / rate / step_s, "cpu_times_s": cpu_times,
        "window_samples": window_samples, "sample_rate_hz": rate, "gflop_per_s": step_flops / 1e9 / step_s,
        "cpu_s": cpu_s, "page_faults_per_step": faults, "emg_s_per_cpu_s": batch * window_samples / rate / cpu_s, "step_gflop": step_flops / 1e9,
        "peak_mem_mb": peak, "batch": batch, "input_samples": n, "threads": torch.get_num_threads(),
        "device": device, "keep_freed_memory": keep_freed,
    }


def _run_isolated(args: argparse.Namespace, config: str, dtype: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--configs", config, "--dtypes", dtype, "--batch", str(args.batch),
           "--window-samples", str(args.window_samples), "--context-samples", str(args.context_samples),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.keep_freed == "all" or (args.keep_freed == "ours" and config != "reference_tds"):
        cmd += ["--keep-freed", "all"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if args.preload:
        # A caching malloc (jemalloc, never returning memory) removes the page faults that fresh
        # 50-100 MB activations cost with glibc on every step (~25% of a TDS step's CPU time here).
        env["LD_PRELOAD"] = args.preload
        env.setdefault("MALLOC_CONF", "dirty_decay_ms:-1,muzzy_decay_ms:-1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"config": config, "dtype": dtype, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rows of the same (config, dtype) in several rounds: the medians over all their
    timed steps (wall and CPU), the largest peak memory; an error in any round is the row's error."""
    errors = [r for r in runs if "error" in r]
    if errors or len(runs) == 1:
        return errors[0] if errors else runs[0]
    times = [t for r in runs for t in r["step_times_s"]]
    cpu_times = [t for r in runs for t in r["cpu_times_s"]]
    out = {**runs[0], "step_times_s": times, "cpu_times_s": cpu_times, "rounds": len(runs),
           "peak_mem_mb": max(r["peak_mem_mb"] for r in runs)}
    step_s, cpu_s = sorted(times)[(len(times) - 1) // 2], sorted(cpu_times)[(len(cpu_times) - 1) // 2]
    emg_s = out["batch"] * out["window_samples"] / out["sample_rate_hz"]
    out.update(step_s=step_s, cpu_s=cpu_s, emg_s_per_s=emg_s / step_s, emg_s_per_cpu_s=emg_s / cpu_s,
               gflop_per_s=out["step_gflop"] / step_s)
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width table, with the bf16/fp32 speed ratio per config and, when the run
    has ``reference_tds`` in fp32, each row's speed relative to it by wall and by CPU time."""
    head = (f"{'config':<18}{'arch':<12}{'params':>9}{'fwd GF/EMG-s':>13}{'dtype':>6}{'step s':>8}"
            f"{'EMG-s/s':>9}{'GFLOP/s':>9}{'EMG-s/CPU-s':>12}{'peak MB':>9}{'bf16/fp32':>10}"
            f"{'vs ref':>8}{'vs ref CPU':>11}")
    lines = [head, "-" * len(head)]
    speed = {(r["config"], r.get("dtype")): r.get("emg_s_per_s") for r in rows}
    ref = next((r for r in rows if r["config"] == "reference_tds" and r.get("dtype") == "fp32" and "error" not in r),
               None)
    for r in rows:
        if "error" in r:
            lines.append(f"{r['config']:<18}{'':<12}{'error: ' + ' '.join(r['error'])}")
            continue
        ratio = ""
        if r["dtype"] == "bf16" and speed.get((r["config"], "fp32")):
            ratio = f"{r['emg_s_per_s'] / speed[(r['config'], 'fp32')]:.2f}x"
        vs_ref = vs_ref_cpu = ""
        if ref is not None:
            vs_ref = f"{r['emg_s_per_s'] / ref['emg_s_per_s']:.2f}x"
            vs_ref_cpu = f"{r['emg_s_per_cpu_s'] / ref['emg_s_per_cpu_s']:.2f}x"
        lines.append(f"{r['config']:<18}{r['arch']:<12}{r['params'] / 1e6:>8.2f}M{r['fwd_gflop_per_emg_s']:>13.2f}"
                     f"{r['dtype']:>6}{r['step_s']:>8.2f}{r['emg_s_per_s']:>9.1f}{r['gflop_per_s']:>9.1f}"
                     f"{r['emg_s_per_cpu_s']:>12.2f}{r['peak_mem_mb']:>9.0f}{ratio:>10}{vs_ref:>8}{vs_ref_cpu:>11}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="tds", help="comma-separated names under configs/models/ or .yaml paths "
                   "(configs/recipes/splashnet.yaml), or 'all'; "
                   "'reference_tds' is the reference's own layout, for a side-by-side ratio")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--window-samples", type=int, default=8000, help="labelled samples per window (4 s)")
    p.add_argument("--context-samples", type=int, default=2000, help="extra context samples per window")
    p.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps after the FLOP-counting forward and backward (which also warm up)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole list this many times in turn (A, B, A, B, ...): a drifting load slows all alike")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preload", default=None,
                   help="malloc library to LD_PRELOAD in the runs, e.g. /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 "
                        "(apt install libjemalloc2); MALLOC_CONF defaults to never returning memory")
    p.add_argument("--keep-freed", choices=("ours", "all", "none"), default="ours",
                   help="which runs call emgscale.malloc.keep_freed_memory() first: emgscale's (default; the "
                        "reference keeps glibc's defaults, as it runs), all (equal process settings), or none")
    p.add_argument("--quick", action="store_true",
                   help="every config (unless --configs), batch 2, 4000 + 1000-sample windows, 2 steps")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup = min(args.batch, 2), 2, 1
        args.window_samples, args.context_samples = 4000, 1000
        if args.configs == "tds":
            args.configs = "all"
    names = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml")) if args.configs == "all" else args.configs.split(",")
    dtypes = args.dtypes.split(",")
    if args.worker:
        print(json.dumps(measure(names[0], dtypes[0], args.batch, args.window_samples, args.context_samples,
                                 args.steps, args.warmup, args.threads, args.device, args.keep_freed == "all")))
        return
    sys.path.insert(0, str(ROOT))
    from emgscale.common import atomic_write_json, hardware, progress

    print(f"# {hardware()}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    print(f"# batch {args.batch} x {args.window_samples + args.context_samples} samples, {args.steps} timed steps "
          f"x {args.rounds} round(s) in turn, {args.threads or 'default'} threads per run, "
          f"malloc: {args.preload or 'default'}, keep freed memory: {args.keep_freed}", flush=True)
    runs = [(c, d) for c in names for d in dtypes]
    done = [_run_isolated(args, c, d) for c, d in progress(runs * args.rounds, total=len(runs) * args.rounds,
                                                           desc="bench", unit="run")]
    rows = [merge_rounds(done[i::len(runs)]) for i in range(len(runs))]
    print(format_table(rows))
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        atomic_write_json(args.json, {"hardware": hardware(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
