"""What every ``python -m emgscale.<verb>`` shares: a user's mistake is one line on stderr and exit code 2.

Each CLI's ``main`` is wrapped by :func:`cli`. The project's own errors — :class:`~emgscale.config.ConfigError`
(a bad key or value), :class:`~emgscale.data.errors.DataError` (a bad data file), other ``ValueError``
from validation (an unknown ``model.arch``, a truncated checkpoint), a missing file or folder, a
missing optional dependency, a run that stopped on non-finite losses, a held lock, a full disk — print as one line
``<prog>: error: <message>`` and exit with code 2. Anything else is a bug and keeps its traceback.
``--debug`` anywhere on the command line (or ``EMGSCALE_DEBUG=1``) shows the traceback of every error.
Ctrl-C exits with code 130 and one line.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

from emgscale.common import DiskFullError, LockedError

#: Exit code of a user's mistake (argparse uses the same for a bad command line).
USER_ERROR = 2
#: Exception types that are a user's mistake (or environment), not a bug; ConfigError and DataError
#: are ValueErrors. FloatingPointError: the loop stopped after too many non-finite steps.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError, FileExistsError, ImportError,
                                                FloatingPointError, LockedError, DiskFullError)


def error_line(exc: BaseException) -> str:
    """The one-line message of a user error (an ``OSError`` as ``path: reason``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    return lines[0] if len(lines) == 1 else lines[0] + " " + " ".join(s.strip() for s in lines[1:] if s.strip())


def debug_enabled(argv: list[str]) -> bool:
    """True when ``--debug`` is on the command line or ``EMGSCALE_DEBUG`` is set."""
    return "--debug" in argv or os.environ.get("EMGSCALE_DEBUG", "") not in ("", "0")


def cli(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Decorate a CLI ``main(argv) -> exit code``: user errors become one line and exit code 2.

    Args:
        prog: the command's name in messages, e.g. ``python -m emgscale.train``.

    The wrapped ``main`` takes ``argv`` (default ``sys.argv[1:]``) with ``--debug`` removed.
    """
    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            debug = debug_enabled(argv)
            argv = [a for a in argv if a != "--debug"]
            try:
                return main(argv)
            except KeyboardInterrupt:
                if debug:
                    raise
                print(f"{prog}: interrupted", file=sys.stderr, flush=True)
                return 130
            except USER_ERRORS as e:
                if debug:
                    raise
                print(f"{prog}: error: {error_line(e)}", file=sys.stderr, flush=True)
                return USER_ERROR
        return run
    return wrap
