"""Which Ray cluster a run joins, said in one line, and whether it has what the run needs.

Every ``ray.init`` of emgscale goes through :func:`connect` (training, Tune, benchmarks, the shard
writer). The address decides, in this order (:func:`choose_cluster`):

* ``local``: a private Ray instance for this process, its files inside a fresh ``0700`` folder (Ray
  makes its temp dir — by default the shared ``/tmp/ray`` — world-writable without the sticky bit)
  and no dashboard.
* an address (``host:6379``, ``ray://host:10001``), given in the config or in ``RAY_ADDRESS`` (as
  ``ray job submit`` sets it): that cluster, whoever started it — the user named it.
* nothing (or ``auto``): a cluster running on this machine that *this user* started (its raylet
  process is this user's). A cluster of another user is never joined unless its address is given
  (Ray itself would attach to the newest cluster on the machine, whoever's). With no cluster of this
  user, nothing starts a private local instance and ``auto`` is an error; several of this user's
  clusters are an error naming them.

One start per process: a private instance this process started stays up for its later runs (a benchmark
trains many one after another; each would otherwise pay Ray's start-up, 40-60 s seen on 2 cores) and is
stopped when the process exits (or by :func:`shutdown`); :func:`connect` on a connected process only says
where it is. :data:`START_SECONDS` keeps what starting or joining cost.

Before training, :func:`require_resources` checks that the cluster has the CPUs / GPUs the workers ask
for: at once on a local instance (``run.use_gpu=true`` on a machine without a GPU is refused before
Ray starts), within ``timeout_s`` on a cluster (an autoscaler may be adding nodes) — instead of Ray
Train waiting for them forever.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from emgscale.common import print0
from emgscale.config import ConfigError

#: ``run.ray_address`` / ``--ray-address`` value for a private local instance.
LOCAL = "local"


@dataclass(frozen=True)
class ClusterChoice:
    """What :func:`choose_cluster` decided.

    Attributes:
        address: what to pass to ``ray.init`` (``local`` for a private instance).
        how: ``given`` (config or command line), ``RAY_ADDRESS``, ``found`` (this user's, on this
            machine) or ``local``.
        note: why, when it was not plainly given (e.g. another user's cluster that was passed over).
    """

    address: str
    how: str
    note: str = ""


def choose_cluster(address: str | None, env_address: str | None, running: Mapping[str, int],
                   uid: int) -> ClusterChoice:
    """Decide which cluster to join (see the module docstring); no side effects.

    Args:
        address: the configured address (``None``, ``auto``, ``local`` or an address).
        env_address: ``RAY_ADDRESS`` (``None`` or empty when unset).
        running: clusters running on this machine: GCS address -> uid of the user who started it.
        uid: this process's user id.

    Raises:
        ConfigError: ``auto`` with no cluster of this user here, or several of this user's clusters.
    """
    if address == LOCAL:
        return ClusterChoice(LOCAL, "local")
    if address not in (None, "", "auto"):
        return ClusterChoice(address, "given")
    if env_address:
        return ClusterChoice(env_address, "RAY_ADDRESS")
    mine = sorted(a for a, owner in running.items() if owner == uid)
    theirs = sorted(a for a, owner in running.items() if owner != uid)
    passed = (f"the Ray cluster at {', '.join(theirs)} on this machine was started by another user; give its "
              f"address (run.ray_address={theirs[0]}) to join it") if theirs else ""
    if len(mine) == 1:
        return ClusterChoice(mine[0], "found", passed)
    if len(mine) > 1:
        raise ConfigError(f"several Ray clusters of yours run on this machine ({', '.join(mine)}): choose one with "
                          f"run.ray_address=ADDRESS (or --ray-address), or run.ray_address=local for a private one")
    if address == "auto":
        raise ConfigError("run.ray_address=auto: no Ray cluster of yours runs on this machine"
                          + (f" ({passed})" if passed else "")
                          + "; start one (ray start --head), give an address, or use run.ray_address=local")
    return ClusterChoice(LOCAL, "local", passed)


def running_clusters() -> dict[str, int]:
    """Ray clusters with a node on this machine: GCS address -> uid of the user running its raylet.

    Found as Ray finds them (the ``--gcs-address`` of raylet processes); processes one may not inspect
    are skipped.
    """
    import psutil

    found: dict[str, int] = {}
    for proc in psutil.process_iter(["cmdline", "uids"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if not cmdline or "raylet" not in os.path.basename(cmdline[0].split(" ")[0]):
                continue
            for arg in " ".join(cmdline).split(" "):
                if arg.startswith("--gcs-address=") and arg.split("=", 1)[1] not in ("", "None"):
                    found.setdefault(arg.split("=", 1)[1], proc.info["uids"].real)
        except (psutil.AccessDenied, psutil.NoSuchProcess, AttributeError, TypeError):
            continue
    return found


def gpu_problem(use_gpu: bool, workers: int, gpus_here: int) -> str | None:
    """Why GPU workers cannot run on a local instance of this machine (one line), or None."""
    if not use_gpu or gpus_here >= workers:
        return None
    if gpus_here == 0:
        return "run.use_gpu=true but there is no GPU on this machine (a local Ray instance would wait for one forever)"
    return f"run.use_gpu=true with run.workers={workers} needs {workers} GPUs; this machine has {gpus_here}"


def missing_resources(need: Mapping[str, float], have: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """The resources ``have`` lacks: name -> (needed, there)."""
    return {k: (v, float(have.get(k, 0.0))) for k, v in need.items() if float(have.get(k, 0.0)) < v}


def require_resources(need: Mapping[str, float], timeout_s: float, where: str,
                      resources: Callable[[], Mapping[str, float]] | None = None, poll_s: float = 2.0) -> None:
    """Wait at most ``timeout_s`` for the cluster's total resources to cover ``need``.

    Args:
        need: e.g. ``{"GPU": 4}`` for 4 GPU workers, ``{"CPU": 2}`` for 2 CPU workers.
        timeout_s: 0 checks once (a local instance: nothing will join it).
        where: the cluster, for the message.
        resources: what the cluster has (default ``ray.cluster_resources``).
        poll_s: seconds between looks.

    Raises:
        ConfigError: one line naming each missing resource, what is needed and what is there.
    """
    if resources is None:
        import ray

        resources = ray.cluster_resources
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        missing = missing_resources(need, resources())
        if not missing:
            return
        if time.monotonic() >= deadline:
            what = ", ".join(f"{k} {need:g} needed, {there:g} there" for k, (need, there) in missing.items())
            raise ConfigError(f"the Ray cluster at {where} lacks what the workers need ({what})"
                              + (f" after waiting run.resource_timeout_s={timeout_s:g} s" if timeout_s else ""))
        if not said:
            print0(f"[ray] waiting up to {timeout_s:g} s for {', '.join(missing)} on {where} (run.resource_timeout_s)")
            said = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def connect(address: str | None = None, *, num_cpus: int | None = None, use_gpu: bool = False,
            workers: int = 0, log_to_driver: bool = True) -> str:
    """Join the cluster :func:`choose_cluster` picks, unless this process is connected already (then nothing
    starts: the cluster it joined or started serves every later run); one line says which (address, and
    whether it was given, found or started); returns its GCS address.

    Args:
        address: ``None``, ``auto``, ``local`` or a cluster address.
        num_cpus: CPUs of a private local instance (default: all).
        log_to_driver: show the workers' output here (``ray.init``'s switch).
        use_gpu, workers: with ``use_gpu``, a local instance is refused before it starts when this
            machine has fewer than ``workers`` GPUs (:func:`gpu_problem`).

    Raises:
        ImportError: Ray is not installed.
        ConfigError: see :func:`choose_cluster` and :func:`gpu_problem`.
    """
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("Ray is not installed: pip install 'emgscale[ray]'") from None
    if ray.is_initialized():
        gcs = ray.get_runtime_context().gcs_address
        print0(f"[ray] using the Ray cluster this process is connected to, at {gcs}"
               + (" (a private local instance)" if is_local_instance() else ""))
        return gcs
    t0 = time.monotonic()
    choice = choose_cluster(address, os.environ.get("RAY_ADDRESS"), running_clusters(), os.getuid())
    if choice.how != "local":
        ray.init(address=choice.address, log_to_driver=log_to_driver)
        START_SECONDS.append(time.monotonic() - t0)
        gcs = ray.get_runtime_context().gcs_address
        told = {"given": "given", "RAY_ADDRESS": "given by RAY_ADDRESS", "found": "found on this machine, yours"}
        print0(f"[ray] joined the Ray cluster at {gcs} ({told[choice.how]})"
               + (f"; {choice.note}" if choice.note else ""))
        return gcs
    if use_gpu:
        import torch

        problem = gpu_problem(use_gpu, workers, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        if problem:
            raise ConfigError(problem)
    # Ray makes its temp dir 0777 (no sticky bit), so it goes inside a 0700 folder of this user's;
    # short, as Ray's socket paths must fit 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="emgscale-ray-", dir="/tmp")
    try:
        ray.init(address=LOCAL, num_cpus=num_cpus, include_dashboard=False, _temp_dir=os.path.join(temp_dir, "r"),
                 log_to_driver=log_to_driver)
        os.chmod(temp_dir, 0o700)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    _LOCAL_DIRS.append(temp_dir)
    START_SECONDS.append(time.monotonic() - t0)
    if not _EXIT_HOOK:
        atexit.register(shutdown)  # once per process, however often an instance is started
        _EXIT_HOOK.append(True)
    gcs = ray.get_runtime_context().gcs_address
    print0(f"[ray] started a private local Ray instance at {gcs} in {START_SECONDS[-1]:.1f} s "
           f"(kept for this process's later runs; files in {temp_dir}, mode 0700)"
           + (f"; {choice.note}" if choice.note else ""))
    return gcs


#: Temp dirs of the private instances this process started.
_LOCAL_DIRS: list[str] = []
#: Seconds each start of (or join to) a cluster took in this process, in order.
START_SECONDS: list[float] = []
_EXIT_HOOK: list[bool] = []  # non-empty once shutdown is registered to run at exit


def is_local_instance() -> bool:
    """True when this process started the Ray instance it is connected to (nothing else will join it)."""
    import ray

    return bool(_LOCAL_DIRS) and ray.is_initialized()


def shutdown() -> None:
    """Disconnect from Ray; a private instance this process started is stopped and its files removed."""
    import ray

    ray.shutdown()
    while _LOCAL_DIRS:
        shutil.rmtree(_LOCAL_DIRS.pop(), ignore_errors=True)


def worker_needs(workers: int, use_gpu: bool) -> dict[str, Any]:
    """The cluster resources ``workers`` Ray Train workers ask for (one GPU each, else one CPU each)."""
    return {"GPU": float(workers)} if use_gpu else {"CPU": float(workers)}
