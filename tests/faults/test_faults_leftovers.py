"""Issue 23, leftovers: a SIGKILLed shard writer leaves no pool worker running (they exit with their parent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
from _faults_helpers import SRC

SCRIPT = """
import sys, time
from emgscale.shard.build import _Runner
from emgscale.shard.plan import ShardConfig

with _Runner(ShardConfig(data_root=".", out=".", workers=2)) as runner:
    for _ in range(2):
        runner.pool.submit(time.sleep, 300)
    while len(runner.pool._processes) < 2:
        time.sleep(0.05)
    time.sleep(1.0)  # the workers have run their initializer
    print(" ".join(str(p) for p in runner.pool._processes), flush=True)
    time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigkilled_shard_writer_leaves_no_pool_worker(tmp_path):
    """SIGKILL the shard writer's process: its pool workers are gone within 10 s (they were left running)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=str(tmp_path))
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.1)
        left = [p for p in pids if not _gone(p)]
        for p in left:  # clean up what the fix should have ended
            os.kill(p, signal.SIGKILL)
        assert not left, f"pool workers {left} outlived their SIGKILLed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
