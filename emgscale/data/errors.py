"""The one exception type for bad input data, always naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file (session, split, metadata, shard) is missing, malformed or inconsistent.

    Attributes:
        path: the offending file.
        problem: what is wrong with it, in words.
    """

    def __init__(self, path: "str | Path", problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickle by the two arguments (an error raised in a Ray worker reaches the driver as itself)."""
        return type(self), (self.path, self.problem)
