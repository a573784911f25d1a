"""One way to launch: in-process vs Ray Train, benchmarks on Ray, device slots, the checkpoint schema."""

from __future__ import annotations

import json

import pytest
import torch

from emgscale.bench.training import job_overrides, run_folder
from emgscale.models.checkpoint import FORMAT_VERSION, Checkpoint, load_checkpoint, save_checkpoint
from emgscale.config import build_config
from emgscale.train import TrainConfig, wants_ray


def test_wants_ray_only_for_workers_gpu_or_an_address(monkeypatch):
    """A default run stays in-process; several workers, GPU workers or a Ray address go to Ray Train."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not wants_ray(TrainConfig())
    for over in ("run.workers=2", "run.use_gpu=true", "run.ray_address=auto"):
        assert wants_ray(build_config(TrainConfig, [], [over])), over
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert wants_ray(TrainConfig())


def test_a_ray_runs_timings_come_from_rank_0s_report_plus_the_drivers_ray_start():
    """ray_timings: rank 0's reported parts, the driver's Ray start, a total covering both; missing parts are 0."""
    from emgscale.train.launch import TIMING_PREFIX, ray_timings
    from emgscale.train.timings import TIMING_KEYS

    t = ray_timings({TIMING_PREFIX + "step_s": 3.0, TIMING_PREFIX + "total_s": 5.0, "step": 7}, 2.0, 9.0)
    assert set(t) == set(TIMING_KEYS) and t["step_s"] == 3.0 and t["ray_start_s"] == 2.0 and t["total_s"] == 9.0
    assert t["validation_s"] == 0.0
    assert ray_timings({TIMING_PREFIX + "step_s": 3.0}, 2.0, 1.0)["total_s"] == 5.0  # never less than its parts


def test_job_slots_round_robin_over_gpus_or_share_the_cores():
    """--jobs N gives run i GPU i mod G (G > 0), else cores // N threads; every slot joins the Ray cluster."""
    assert job_overrides(3, 2, 16, None) == [["run.device=cuda:0"], ["run.device=cuda:1"], ["run.device=cuda:0"]]
    assert job_overrides(2, 0, 2, None) == [["run.threads=1"], ["run.threads=1"]]
    assert job_overrides(1, 0, 8, "10.0.0.1:6379") == [["run.threads=8", "run.ray_address=10.0.0.1:6379"]]


def test_where_a_run_executes_does_not_change_its_cache_folder(tmp_path):
    """Device, threads and Ray address are placement, not identity: the cached run folder is the same."""
    base = run_folder(tmp_path, [], ["optim.lr=1e-3"])
    assert base == run_folder(tmp_path, [], ["optim.lr=1e-3", "run.device=cuda:1", "run.threads=3",
                                             "run.ray_address=auto", "run.resource_timeout_s=60"])
    assert base != run_folder(tmp_path, [], ["optim.lr=2e-3"])


def _tiny_checkpoint() -> Checkpoint:
    from emgscale.models.checkpoint import rng_state
    from emgscale.config import to_dict

    return Checkpoint(model={"w": torch.ones(3)}, config=to_dict(TrainConfig()), step=5, rng=[rng_state()],
                      optimizer={}, scheduler={})


def test_checkpoints_load_without_running_pickled_code(tmp_path):
    """An emgscale checkpoint holds only tensors and plain data: torch.load(weights_only=True) reads it."""
    path = save_checkpoint(tmp_path / "c.pt", _tiny_checkpoint())
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and raw["step"] == 5
    ck = load_checkpoint(path)
    assert ck.step == 5 and torch.equal(ck.model["w"], torch.ones(3)) and ck.resumable


def test_non_finite_weights_are_never_written(tmp_path):
    """save_checkpoint refuses NaN/inf weights and leaves no file behind."""
    ck = _tiny_checkpoint()
    ck.model["w"][1] = float("nan")
    with pytest.raises(ValueError, match="non-finite model weights"):
        save_checkpoint(tmp_path / "bad.pt", ck)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_no_checkpoint_is_refused_with_its_name(tmp_path):
    """Random bytes or a pickle of something else: one ValueError naming the file."""
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an emgscale checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.ray
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
def test_bench_personalized_trains_through_ray_on_two_workers(tmp_path, monkeypatch, bench_cache):
    """`python -m emgscale.bench personalized --budget tiny run.workers=2` trains every run on 2 Ray Train workers."""
    pytest.importorskip("ray.train", reason="Ray is not installed (pip install 'emgscale[ray]')")
    from _ray_fixtures import local_ray

    from emgscale.bench.__main__ import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with local_ray():
        assert main(["personalized", "--budget", "tiny", "--out", str(tmp_path), "run.workers=2"]) == 0
    runs = sorted((bench_cache / "runs").iterdir())
    assert len(runs) == 3  # the generic model, and per held-out user: random init and fine-tuned
    for run in runs:
        assert json.loads((run / "DONE.json").read_text())["world_size"] == 2
        assert json.loads((run / "ray_result.json").read_text())["world_size"] == 2
    res = json.loads((tmp_path / "personalized" / "results.json").read_text())
    assert res["overrides"] == ["run.workers=2"]
