"""Which Ray cluster a run joins (emgscale.cluster): the decision as plain functions, the GPU and resource checks."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace
from pathlib import Path

import pytest

from emgscale.cluster import (LOCAL, ClusterChoice, choose_cluster, gpu_problem, missing_resources, require_resources,
                              worker_needs)
from emgscale.config import ConfigError

ME, OTHER = 1000, 1001


def test_local_is_a_private_instance_and_an_address_is_taken_as_given() -> None:
    """run.ray_address=local starts a private instance; an address (config or RAY_ADDRESS) is joined as given."""
    theirs = {"10.0.0.1:6379": OTHER}
    assert choose_cluster(LOCAL, "10.0.0.9:6379", theirs, ME) == ClusterChoice(LOCAL, "local")
    assert choose_cluster("10.0.0.1:6379", None, theirs, ME) == ClusterChoice("10.0.0.1:6379", "given")
    assert choose_cluster(None, "10.0.0.1:6379", theirs, ME) == ClusterChoice("10.0.0.1:6379", "RAY_ADDRESS")
    assert choose_cluster("auto", "10.0.0.1:6379", {}, ME).how == "RAY_ADDRESS"


def test_without_an_address_only_this_users_cluster_is_joined() -> None:
    """No address: this user's cluster on the machine is found; another user's is passed over (named), never joined."""
    mine, theirs = "127.0.0.1:6379", "127.0.0.1:6380"
    assert choose_cluster(None, None, {mine: ME, theirs: OTHER}, ME).address == mine
    choice = choose_cluster(None, None, {theirs: OTHER}, ME)
    assert choice.address == LOCAL and choice.how == "local" and f"run.ray_address={theirs}" in choice.note
    assert choose_cluster(None, None, {}, ME) == ClusterChoice(LOCAL, "local")
    with pytest.raises(ConfigError, match=rf"no Ray cluster of yours .*another user.*run.ray_address={theirs}"):
        choose_cluster("auto", None, {theirs: OTHER}, ME)


def test_several_clusters_of_one_user_are_named_not_guessed() -> None:
    """Two clusters of this user and no address: one line naming both (Ray printed a traceback)."""
    with pytest.raises(ConfigError, match=r"several Ray clusters of yours .*127.0.0.1:1, 127.0.0.1:2"):
        choose_cluster(None, None, {"127.0.0.1:1": ME, "127.0.0.1:2": ME}, ME)


def test_gpu_workers_on_a_machine_without_enough_gpus_are_refused() -> None:
    """run.use_gpu=true: no GPU here, or fewer than the workers, is one line; CPU runs and enough GPUs pass."""
    assert "no GPU on this machine" in gpu_problem(True, 2, 0)
    assert "needs 4 GPUs; this machine has 2" in gpu_problem(True, 4, 2)
    assert gpu_problem(False, 4, 0) is None and gpu_problem(True, 2, 2) is None


def test_a_bounded_wait_names_the_missing_resource() -> None:
    """A cluster without the GPUs the workers need: after run.resource_timeout_s, one line naming GPU."""
    assert worker_needs(2, True) == {"GPU": 2.0} and worker_needs(3, False) == {"CPU": 3.0}
    assert missing_resources({"GPU": 2.0}, {"CPU": 8.0}) == {"GPU": (2.0, 0.0)}
    with pytest.raises(ConfigError, match=r"at 1.2.3.4:6379 lacks .*GPU 2 needed, 0 there.*resource_timeout_s=0.05"):
        require_resources({"GPU": 2.0}, 0.05, "1.2.3.4:6379", resources=lambda: {"CPU": 8.0}, poll_s=0.01)
    seen = iter([{"CPU": 8.0}, {"CPU": 8.0, "GPU": 2.0}])  # a node joins while we wait
    require_resources({"GPU": 2.0}, 30, "x", resources=lambda: next(seen), poll_s=0.01)


def test_running_clusters_reads_raylet_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A raylet's --gcs-address and its owner's uid are what running_clusters reports; other processes are ignored."""
    import psutil

    from emgscale import cluster

    class Proc:
        def __init__(self, cmdline: list[str], uid: int) -> None:
            self.info = {"cmdline": cmdline, "uids": SimpleNamespace(real=uid, effective=uid, saved=uid)}

    procs = [Proc(["/x/ray/core/src/ray/raylet/raylet", "--gcs-address=127.0.0.1:6379", "--node_ip_address=1"], 7),
             Proc(["python", "--gcs-address=127.0.0.1:9999"], 8), Proc([], 9)]
    monkeypatch.setattr(psutil, "process_iter", lambda attrs=None: iter(procs))
    assert cluster.running_clusters() == {"127.0.0.1:6379": 7}


def test_use_gpu_on_a_local_instance_without_a_gpu_stops_before_ray_starts(tmp_path: Path, tiny_corpus) -> None:
    """run.workers=2 run.use_gpu=true run.ray_address=local on a CPU machine: one ConfigError, no Ray started."""
    pytest.importorskip("ray.train", reason="Ray is not installed (pip install 'emgscale[ray]')")
    import ray
    import torch

    from emgscale.config import build_config
    from emgscale.train import TrainConfig, launch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = build_config(TrainConfig, [], [f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}",
                                         f"run.out_dir={tmp_path / 'run'}", "run.workers=2", "run.use_gpu=true",
                                         "run.ray_address=local", "data.batch_size=4"])
    with pytest.raises(ConfigError, match="run.use_gpu=true but there is no GPU on this machine"):
        launch(cfg)
    assert not ray.is_initialized()


@pytest.mark.ray
def test_a_private_local_instance_keeps_its_files_to_this_user() -> None:
    """connect('local') starts Ray inside a fresh 0700 folder of this user's (not /tmp/ray), removed on shutdown."""
    pytest.importorskip("ray")
    from emgscale import cluster

    cluster.connect(LOCAL, num_cpus=1)
    try:
        assert cluster.is_local_instance()
        folder = Path(cluster._LOCAL_DIRS[-1])
        assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
    finally:
        cluster.shutdown()
    assert not folder.exists() and not cluster.is_local_instance()


def test_a_process_starts_its_local_ray_once_and_stops_it_at_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """connect() twice in one process starts one private instance (the second call reuses it), registers one exit
    hook, and records the start's cost; shutdown stops it and removes its files. (A stand-in for ray: no head starts.)"""
    import sys

    from emgscale import cluster

    calls: list[dict] = []

    class FakeRay(SimpleNamespace):
        up = False

        def init(self, **kw):
            calls.append(kw)
            FakeRay.up = True

        def is_initialized(self):
            return FakeRay.up

        def shutdown(self):
            FakeRay.up = False

        def get_runtime_context(self):
            return SimpleNamespace(gcs_address="127.0.0.1:1")

    hooks: list = []
    monkeypatch.setitem(sys.modules, "ray", FakeRay())
    monkeypatch.setattr(cluster, "running_clusters", lambda: {})
    monkeypatch.setattr(cluster, "atexit", SimpleNamespace(register=hooks.append))
    monkeypatch.setattr(cluster, "_EXIT_HOOK", [])
    monkeypatch.setattr(cluster, "START_SECONDS", [])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.connect(None, num_cpus=1) == cluster.connect(None, num_cpus=1) == "127.0.0.1:1"
    assert len(calls) == 1 and calls[0]["address"] == LOCAL and hooks == [cluster.shutdown]
    assert len(cluster.START_SECONDS) == 1 and cluster.START_SECONDS[0] >= 0
    folder = Path(cluster._LOCAL_DIRS[-1])
    assert cluster.is_local_instance() and folder.is_dir()
    cluster.shutdown()
    assert not folder.exists() and not cluster.is_local_instance()
