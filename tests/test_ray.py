"""Tests of distributed training (emgscale.train.launch) and search (emgscale.tune) on a local Ray instance.

They start one in-process Ray instance for the module (2 CPUs, loopback) and run few, tiny runs:
each Ray Train run costs about 25 s here, mostly worker start-up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("ray.train", reason="Ray is not installed (pip install 'emgscale[ray]')")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own, on import

from _ray_fixtures import SESSION_SECONDS, local_ray, tiny_config, tiny_overrides  # noqa: E402
from conftest import make_tiny_corpus  # noqa: E402

from emgscale.models.checkpoint import load_checkpoint  # noqa: E402
from emgscale.config import build_config, shipped_configs  # noqa: E402
from emgscale.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# 4 users x 4 sessions -> 8 training windows: global batch 4 = 2 steps per epoch; 4 validation windows.
USERS = ("43037958", "89335547", "9456349", "51230212")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_corpus(tmp_path_factory.mktemp("ray") / "data", users=USERS, seconds=SESSION_SECONDS)


@pytest.fixture(scope="module")
def ray_instance():
    with local_ray(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory: pytest.TempPathFactory):
    """The single-process run every distributed run is compared with (4 steps, global batch 4)."""
    cfg = tiny_config(corpus.root, corpus.split_path, tmp_path_factory.mktemp("ref") / "run", "run.max_steps=4")
    result = train(cfg)
    return result, load_checkpoint(result.last_checkpoint)


def _max_param_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _assert_same_run(result, ref_result, ref_ckpt) -> None:
    """Weights, schedule and validation losses of ``result`` equal the single-process reference.

    Tolerance: the two runs see the same samples in the same steps (no jitter, augmentation, dropout
    or batch statistics), and DDP's mean of two equal half-batch gradients is the full batch's
    gradient of the mean CTC loss; only float32 summation order differs (~1e-7 relative). Adam
    normalises each update to ~lr (3e-3), so a weight whose gradient is near zero can carry a slightly
    larger difference: 2.6e-6 was the largest seen after 4 steps. Any real mismatch (other samples,
    another schedule) moves weights by ~lr per step, so the bound 1e-4 sits 40x above rounding and 30x
    below one step of divergence.
    """
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt.step == ref_ckpt.step == 4
    moved = _max_param_diff(ref_ckpt.model, _initial_weights(ref_ckpt))
    assert moved > 1e-3, "training must move the weights for the comparison to mean anything"
    assert _max_param_diff(ckpt.model, ref_ckpt.model) < 1e-4
    assert [h["step"] for h in result.history] == [h["step"] for h in ref_result.history] == [2, 4]
    for h, r in zip(result.history, ref_result.history):
        assert h["lr"] == pytest.approx(r["lr"], rel=1e-12)  # same LR schedule whatever the world size
        assert h["val_loss"] == pytest.approx(r["val_loss"], rel=1e-4)
        assert h["val_samples"] == r["val_samples"] == 4  # validation covers every window once over the ranks


def _initial_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    from emgscale.config import from_dict
    from emgscale.models import build_model

    cfg = from_dict(TrainConfig, ckpt.config)
    torch.manual_seed(cfg.run.seed)  # train() seeds with seed + rank before building the model
    return build_model(cfg.model).state_dict()


@pytest.mark.ray
def test_two_workers_equal_one_process(corpus, ray_instance, reference, tmp_path: Path):
    """2 Ray Train workers (gloo DDP, batch 2 each) train exactly as one process with batch 4."""
    from emgscale.train.launch import fit_on_ray as fit

    cfg = tiny_config(corpus.root, corpus.split_path, tmp_path / "run", "run.max_steps=4", "run.workers=2")
    result = fit(cfg)
    _assert_same_run(result, *reference)
    info = json.loads((tmp_path / "run" / "ray_result.json").read_text())
    assert Path(info["checkpoint"], "last.pt").is_file()  # Ray storage holds the final checkpoint
    assert info["resumed_from"] is None


@pytest.mark.ray
def test_killed_worker_resumes_from_checkpoint(corpus, ray_instance, reference, tmp_path: Path, monkeypatch):
    """Rank 1 dies after the step-2 checkpoint; Ray restarts the group, which resumes and ends as uninterrupted."""
    from emgscale.train.launch import FAULT_ENV, fit_on_ray as fit

    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"rank=1,step=2,marker={marker}")
    cfg = tiny_config(corpus.root, corpus.split_path, tmp_path / "run", "run.max_steps=4", "run.workers=2",
                      "run.max_failures=1")
    result = fit(cfg)
    assert marker.read_text().startswith("rank 1 exited at step 2")
    info = json.loads((tmp_path / "run" / "ray_result.json").read_text())
    assert info["resumed_from"], "the restarted workers must resume from the reported checkpoint"
    _assert_same_run(result, *reference)


@pytest.mark.ray
def test_tune_two_trials_end_to_end(corpus, ray_instance, tmp_path: Path, capsys):
    """A 2-trial grid search runs both trials, ranks them and writes the tables and the best config."""
    from emgscale.tune.__main__ import main

    search = {
        "name": "tiny", "out_dir": str(tmp_path / "search"),
        "base": {"overrides": [*tiny_overrides(corpus.root, corpus.split_path, tmp_path / "unused"),
                               "run.max_steps=2", "run.eval_every_steps=1"]},
        "space": {"optim.lr": {"grid": ["1e-3", "3e-2"]}},
        "metric": "val_loss", "mode": "min",
        "scheduler": {"type": "asha", "max_t": 2, "grace_period": 1},
        "resources": {"cpu": 1}, "checkpoints": True,
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search))
    assert main([str(path)]) == 0
    out = json.loads((tmp_path / "search" / "results.json").read_text())
    assert sorted(r["optim.lr"] for r in out["rows"]) == [1e-3, 3e-2]  # values in the field's type
    # ASHA (grace 1, max_t 2) may stop the worse trial after its first validation.
    assert all(r["error"] == "" and r["validations"] in (1, 2) and r["step"] == r["validations"] for r in out["rows"])
    best = out["rows"][0]
    assert best["best_val_loss"] == min(r["best_val_loss"] for r in out["rows"])
    assert out["best"]["params"] == {"optim.lr": best["optim.lr"]}
    best_cfg = build_config(TrainConfig, [tmp_path / "search" / "best_config.yaml"])
    assert best_cfg.optim.lr == best["optim.lr"] and best_cfg.run.max_steps == 2
    for name in ("results.md", "results.csv"):
        assert best["trial"] in (tmp_path / "search" / name).read_text()
    assert f"best trial {best['trial']}" in capsys.readouterr().out
    assert all((tmp_path / "search" / "trials" / r["trial"] / "checkpoints" / "last.pt").is_file() for r in out["rows"])
    assert list((tmp_path / "search" / "ray").glob("*/*/checkpoint_*/last.pt"))  # checkpoints: true hands them to Tune


def test_tune_example_searches_are_valid(monkeypatch):
    """Every configs/tune/*.yaml parses, names real config fields and gives values their fields accept."""
    from emgscale.config import to_dict
    from emgscale.tune import SearchConfig, parse_space

    files = sorted((shipped_configs() / "tune").glob("*.yaml"))
    assert files
    monkeypatch.chdir(ROOT)  # base files are relative to the working directory (the repo root)
    for f in files:
        search = build_config(SearchConfig, [f])
        base = build_config(TrainConfig, search.base.files, search.base.overrides)
        parsed = parse_space(search.space, to_dict(base))
        assert parsed and search.resources.cpu > 0, f


def test_cluster_recipes_are_valid_ray_cluster_configs():
    """cluster/*.yaml pass Ray's own cluster-config preparation and schema validation (as `ray up` does)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    files = sorted((ROOT / "cluster").glob("*.yaml"))
    assert files
    for f in files:
        validate_config(prepare_config(yaml.safe_load(f.read_text())))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_job_submit_trains_on_a_started_cluster(corpus, tmp_path: Path):
    """cluster/README.md's loopback recipe: `ray start --head`, `ray job submit ... emgscale.train run.workers=2`."""
    import shutil
    import signal
    import subprocess
    import tempfile

    from _ray_fixtures import RAY_TEST_ENV

    from emgscale.config import save_config

    ray_bin = Path(shutil.which("ray") or Path(sys.executable).parent / "ray")
    # Ray 2.60 turns token auth on for `ray start --head`; the CLI sends ~/.ray/auth_token only in token mode.
    env = {**os.environ, **RAY_TEST_ENV, "EMGSCALE_PROGRESS": "0", "RAY_AUTH_MODE": "token"}
    gcs, dash, client, agent = _free_port(), _free_port(), _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}",  # not the fixed default 52365 another head may hold
         "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cfg = tiny_config(corpus.root, corpus.split_path, tmp_path / "run", "run.max_steps=4")
        save_config(cfg, tmp_path / "cfg.yaml")
        for _ in range(60):  # the job API answers once the dashboard is up
            if subprocess.run([str(ray_bin), "job", "list", "--address", f"http://127.0.0.1:{dash}"], env=env,
                              capture_output=True).returncode == 0:
                break
            time.sleep(1)
        for _ in range(30):  # the head's job agent may still be starting after the API answers
            job = subprocess.run(
                [str(ray_bin), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                 "--", "python", "-m", "emgscale.train", str(tmp_path / "cfg.yaml"), "run.workers=2"],
                env=env, capture_output=True, text=True, timeout=600)
            if "No available agent to submit job" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "[train] done: 4 steps" in job.stdout
        info = json.loads((tmp_path / "run" / "ray_result.json").read_text())
        assert Path(info["checkpoint"], "last.pt").is_file()
    finally:
        head.send_signal(signal.SIGTERM)  # --block: the start command stops the processes it started
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.ray
def test_bench_ray_script_runs(tiny_corpus, tmp_path: Path, capsys):
    """benchmarks/bench_ray.py runs every mode on tiny data and prints its table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ray", ROOT / "benchmarks" / "bench_ray.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--steps", "5", "--batch-size", "2", "--repeat", "1", "--out", str(tmp_path / "b"),
                       "--data", str(tiny_corpus.root), "--split", str(tiny_corpus.split_path)]) == 0
    rows = json.loads((tmp_path / "b" / "bench_ray.json").read_text())["rows"]
    assert [(r["mode"], r["workers"]) for r in rows] == [("in-process", 1), ("in-process", 1), ("ray", 1), ("ray", 2)]
    assert all(r["steps"] == 5 and r["loop_steps_per_s"] > 0 for r in rows)
    assert "| ray | 2 | 1 | 5 |" in capsys.readouterr().out


def test_tune_ranks_trials_by_their_swad_average(corpus, ray_instance, tmp_path: Path):
    """rank_by: swad_val_cer ranks trials by the averaged model's validation CER, reported after training."""
    from emgscale.tune.__main__ import main

    search = {
        "name": "swad", "out_dir": str(tmp_path / "search"),
        "base": {"overrides": [*tiny_overrides(corpus.root, corpus.split_path, tmp_path / "unused"),
                               "run.max_steps=4", "run.eval_every_steps=2", "swad.mode=swad", "swad.n_converge=1",
                               "swad.n_tolerance=1", "swad.tolerance_ratio=100", "swad.bn_batches=1"]},
        "space": {"optim.lr": {"grid": ["1e-3", "3e-2"]}},
        "metric": "val_cer", "mode": "min", "rank_by": "swad_val_cer",
        "scheduler": {"type": "fifo"}, "resources": {"cpu": 1},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search))
    assert main([str(path)]) == 0
    rows = json.loads((tmp_path / "search" / "results.json").read_text())["rows"]
    cers = [r["best_swad_val_cer"] for r in rows]
    assert len(rows) == 2 and all(c == c for c in cers) and cers == sorted(cers)
