"""Small shared helpers: rank-0 discipline, atomic writes, folder locks, the device choice, run provenance,
progress."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


# ----------------------------------------------------------------------------- ranks
def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Number of processes in the job (1 when not distributed)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """True on rank 0: the one process that prints, logs and writes shared files."""
    return rank() == 0


_print_lock = threading.Lock()


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only, flushed; one call's text stays whole when threads print at once (the suites of
    ``bench all`` run side by side in threads)."""
    if is_main():
        with _print_lock:
            print(*args, **kwargs, flush=True)


class RateLimitedLog:
    """Warnings that may repeat without end (a bad shard met again and again) as a bounded number of lines.

    Each key is logged the first time, then at most once per ``interval_s``; over all keys at most
    ``lines_per_interval`` lines are written per ``interval_s``. What is held back is counted, and the
    next line written says how many were. The one rate limit for repeated warnings (the loader uses it).

    Args:
        logger: where the lines go (``logger.warning``).
        lines_per_interval: most lines per interval, all keys together.
        interval_s: the interval, in seconds.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, logger: Any, lines_per_interval: int = 10, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.lines_per_interval, self.interval_s, self.clock = logger, lines_per_interval, interval_s, clock
        self._last: dict[Any, float] = {}
        self._window_start, self._lines, self.suppressed = -float("inf"), 0, 0

    def warning(self, key: Any, message: str, *args: Any) -> bool:
        """Log ``message % args`` unless the limits hold it back; True when it was written."""
        now = self.clock()
        if now - self._window_start >= self.interval_s:
            self._window_start, self._lines = now, 0
        last = self._last.get(key)
        if (last is not None and now - last < self.interval_s) or self._lines >= self.lines_per_interval:
            self.suppressed += 1
            return False
        if len(self._last) > 10_000:  # keys of an endless stream: forget the old ones
            self._last.clear()
        self._last[key], self._lines = now, self._lines + 1
        if self.suppressed:
            message += f" ({self.suppressed} similar warnings held back before this one)"
            self.suppressed = 0
        self.logger.warning(message, *args)
        return True


# ----------------------------------------------------------------------------- atomic writes
#: ``errno`` values of a full disk or an exhausted quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write ran out of space (``ENOSPC``) or quota (``EDQUOT``); ``filename`` is the file being written.

    Its message is one line: ``<path>: No space left on device (...)``; the temporary file is removed and
    the previous file at that path, if any, is intact.
    """


def disk_full(exc: BaseException, path: "str | os.PathLike[str]") -> "DiskFullError | None":
    """A :class:`DiskFullError` naming ``path`` when ``exc`` is a full disk or quota, else None."""
    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return DiskFullError(exc.errno, f"{os.strerror(exc.errno)} (nothing written: the temporary file is "
                                        "removed and the previous file, if any, is intact)", str(path))
    return None


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike[str]", suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is fsynced and renamed onto ``path``.

    The one implementation of temp-file + rename: a reader never sees a partial file, and a writer
    that fails or is killed leaves the old file (or none) in place and no temporary file behind. The
    file gets the mode a plain ``open`` would give it (``0o666`` less the umask), not ``mkstemp``'s
    ``0o600``, so shards and caches on a shared folder are readable by whom the umask says.
    A full disk (or quota) while writing raises :class:`DiskFullError` naming ``path``.

    >>> with atomic_path("out/result.json") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):  # a file system without modes (some network mounts)
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as e:
        full = disk_full(e, path)
        if full is None:
            raise
        raise full from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def current_umask() -> int:
    """This process's umask (read from ``/proc`` where it can be, so no other thread sees it change)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: "str | os.PathLike[str]", data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: "str | os.PathLike[str]", text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: "str | os.PathLike[str]", obj: Any) -> None:
    """:func:`atomic_write_bytes` for indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: "str | os.PathLike[str]") -> None:
    """``torch.save`` atomically (:func:`atomic_path`)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)  # through Python's file: a full disk is an OSError with its errno


# ----------------------------------------------------------------------------- folder locks
class LockedError(RuntimeError):
    """Another process holds the lock on a folder."""


class DirLock:
    """An exclusive lock on a folder for one writer: ``<folder>/.lock`` holding the holder's pid and host.

    The lock is an ``fcntl.flock`` on that file, so it is released when its holder exits, however it
    exits: a lock file left by a dead process is stale and the next writer takes it over (and says so).
    Where the file system has no ``flock``, the file itself is the lock (created exclusively), and it is
    stale when its holder ran on this host and no longer runs.

    Args:
        folder: the folder to lock (created if missing).
        what: what the holder is doing, for the error message (``shard writer``).

    Raises:
        LockedError: on :meth:`acquire`, naming the holder's pid, host, start time and what it does.
    """

    NAME = ".lock"

    def __init__(self, folder: "str | os.PathLike[str]", what: str = "writer") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / self.NAME
        self._fd: int | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict[str, Any]) -> LockedError:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        since = f" since {holder['since']}" if holder.get("since") else ""
        return LockedError(f"{self.folder} is in use by another {holder.get('what', self.what)} ({who}{since}); "
                           f"wait for it to finish, or stop it. If it is gone, remove {self.path}")

    def acquire(self) -> "DirLock":
        """Take the lock or raise :class:`LockedError`."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        old = self._holder()
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(self._holder()) from None
            except OSError:  # no flock here (some network file systems): the file's existence is the lock
                os.close(fd)
                return self._acquire_exclusive(old)
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break  # locked the file that is there (not one its holder removed meanwhile)
            except FileNotFoundError:
                pass
            os.close(fd)
        else:  # pragma: no cover - a storm of writers
            raise self._refuse(self._holder())
        if old.get("pid") and old.get("pid") != os.getpid():
            print(f"[lock] taking over the stale lock of {self.folder} (pid {old.get('pid')} on "
                  f"{old.get('host')} is gone)", file=sys.stderr, flush=True)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(self._me()).encode())
        self._fd = fd
        return self

    def _me(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _acquire_exclusive(self, old: dict[str, Any]) -> "DirLock":
        alive = old.get("host") != socket.gethostname() or _pid_alive(int(old.get("pid", 0) or 0))
        if old and alive and old.get("pid") != os.getpid():
            raise self._refuse(old)
        self.path.unlink(missing_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise self._refuse(self._holder()) from None
        os.write(fd, json.dumps(self._me()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up and remove the lock file."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiting writer never sees our info
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Make this (pool worker) process end when its parent does, however the parent ends (SIGKILL too).

    Use as a process pool's ``initializer`` with ``initargs=(os.getpid(),)``. On Linux the kernel sends
    SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon thread checks
    ``os.getppid()`` every ``poll_s`` seconds and exits when the worker has been re-parented.
    """
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl: the thread does it
            pass
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- devices
def resolve_device(spec: str = "auto", local_rank: int | None = None) -> "torch.device":
    """The one device choice: ``auto`` is this process's GPU (``LOCAL_RANK`` modulo the visible GPUs)
    when CUDA is available, else the CPU; anything else (``cpu``, ``cuda``, ``cuda:1``) as given.

    Raises:
        ValueError: a CUDA device is asked for where CUDA is not available, or the spec is not a device.
    """
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"{spec!r} is not a device (auto | cpu | cuda | cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


# ----------------------------------------------------------------------------- provenance
def git_commit() -> str | None:
    """The commit of the emgscale checkout, with ``-dirty`` when it has local changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict[str, Any]:
    """What the run ran on: CPU count, memory, accelerator, library versions."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpus"] = torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        pass
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- progress
def progress(
    items: Iterable[T],
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = None,
    postfix: Callable[[], dict[str, Any]] | None = None,
) -> Iterator[T]:
    """Wrap an iterable with a progress display (rate and ETA), on rank 0 only.

    In a terminal this is a tqdm bar; otherwise (logs, CI) it prints a line at most every 10 s.
    """
    if enabled is None:
        enabled = is_main() and os.environ.get("EMGSCALE_PROGRESS", "1") != "0"
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True)
        for i, x in enumerate(bar):
            if postfix is not None and i % 10 == 0:
                bar.set_postfix(postfix(), refresh=False)
            yield x
        return
    t0 = last = time.monotonic()
    n = 0
    for x in items:
        yield x
        n += 1
        now = time.monotonic()
        if now - last >= 10.0 or (total is not None and n == total):
            last = now
            rate = n / max(now - t0, 1e-9)
            eta = f", ETA {format_seconds((total - n) / rate)}" if total else ""
            extra = "".join(f", {k} {v}" for k, v in (postfix() if postfix else {}).items())
            print(f"[{desc}] {n}{'/' + str(total) if total else ''} {unit}, {rate:.2f} {unit}/s{eta}{extra}",
                  file=sys.stderr, flush=True)


def format_seconds(s: float) -> str:
    """``1h02m03s`` style duration."""
    s = int(max(s, 0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")
