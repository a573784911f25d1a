"""emgscale.malloc: after keep_freed_memory() large blocks come from the heap, not from fresh mmaps."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys, torch
sys.path.insert(0, {root!r})
from emgscale.malloc import keep_freed_memory
ok = keep_freed_memory() if {keep} else True
x = torch.ones(16 * 2**20)  # 64 MB: above glibc's largest mmap threshold
heap = 0
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        lo, hi = (int(a, 16) for a in line.split()[0].split("-"))
        heap += hi - lo
print(ok, heap)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap() -> None:
    """With keep_freed_memory() a 64 MB tensor lives in the [heap] (kept when freed); with glibc's defaults it does not."""
    heap = {}
    for keep in (True, False):
        out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), keep=keep)], capture_output=True,
                             text=True, check=True).stdout.split()
        assert out[0] == "True"
        heap[keep] = int(out[1])
    assert heap[True] - heap[False] >= 60 * 2**20, heap  # the 64 MB block, less what imports left in the heap


def test_keep_freed_memory_is_a_no_op_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C library is not glibc, keep_freed_memory() changes nothing and says so (False)."""
    from emgscale import malloc

    monkeypatch.setattr(malloc.platform, "libc_ver", lambda: ("", ""))
    assert malloc.keep_freed_memory() is False


def test_a_training_process_keeps_freed_memory_unless_the_run_says_not(monkeypatch):
    """launch's process settings call keep_freed_memory() exactly when run.keep_freed_memory is on."""
    import emgscale.malloc
    from emgscale.train import load_train_config
    from emgscale.train.launch import _process_settings

    calls = []
    monkeypatch.setattr(emgscale.malloc, "keep_freed_memory", lambda: calls.append(1) or True)
    _process_settings(load_train_config([], []))
    _process_settings(load_train_config([], ["run.keep_freed_memory=false"]))
    assert calls == [1]
