"""Where segment means live: files in the run's ``swad/`` folder, with a JSON index, or (no folder) memory.

Folder layout (written by rank 0 only, every file atomically)::

    swad/index.json            the segments: step range, count, validation loss, status, file
    swad/seg-00007.pt          segment 7's mean weights {"params": {name: tensor}, ...} (float32 or bf16)
    swad/open-00000420-00000437.pt   the open segment's float64 running sum at a mid-segment checkpoint

A segment's steps are ``[start_step, end_step)`` in the log's numbering: the segment validated at step V
ends at V. The averaged model is the count-weighted mean of segment means (:func:`weighted_mean`),
accumulated in float64 over memory-mapped files read one after the other, so averaging holds the
accumulator (one float64 copy) and one segment file at a time, however many segments there are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

import torch

from emgscale.common import atomic_torch_save, atomic_write_json

INDEX = "index.json"
INDEX_FORMAT = 1
_SEGMENT_RE = re.compile(r"seg-\d+\.pt$")
_OPEN_RE = re.compile(r"open-\d+-\d+\.pt$")


def segment_name(index: int) -> str:
    """File name of segment ``index``."""
    return f"seg-{index:05d}.pt"


def open_name(start_step: int, end_step: int) -> str:
    """File name of the open segment's running sum over steps ``[start_step, end_step)``."""
    return f"open-{start_step:08d}-{end_step:08d}.pt"


class SegmentStore:
    """Save, load and delete named objects under ``root``, or in memory when ``root`` is None.

    The memory store keeps (cloned) objects in a dict that :meth:`state` hands to the checkpoint: it is
    the fallback for a loop that passes no store folder, and carries the copies the folder avoids.
    """

    def __init__(self, root: "str | Path | None") -> None:
        self.root = Path(root) if root is not None else None
        self._memory: dict[str, Any] = {}

    @property
    def on_disk(self) -> bool:
        return self.root is not None

    def save(self, name: str, obj: dict[str, Any]) -> None:
        """Write ``obj`` as ``name`` (atomically; the memory store keeps a clone)."""
        if self.root is None:
            self._memory[name] = _clone(obj)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(obj, self.root / name)

    def load(self, name: str) -> dict[str, Any]:
        """Read ``name``; files are memory-mapped, so tensors are paged in only as they are used.

        Raises:
            FileNotFoundError: no such segment (deleted as outside the valley, or never written).
        """
        if self.root is None:
            if name not in self._memory:
                raise FileNotFoundError(f"swad segment {name!r}: not in this run's averaging state")
            return self._memory[name]
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such SWAD segment file (deleted as outside the valley? "
                                    "swad.keep_segments=true keeps them all)")
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)

    def delete(self, name: str) -> None:
        """Remove ``name`` if present."""
        if self.root is None:
            self._memory.pop(name, None)
        else:
            (self.root / name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        """Every segment and open-sum name held."""
        if self.root is None:
            return sorted(self._memory)
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _SEGMENT_RE.match(p.name) or _OPEN_RE.match(p.name))

    def nbytes(self) -> int:
        """Bytes the held objects take on disk (0 for the memory store)."""
        return sum((self.root / n).stat().st_size for n in self.names()) if self.root is not None else 0

    def write_index(self, index: dict[str, Any]) -> None:
        """Write ``index.json`` (disk store only)."""
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.root / INDEX, index)

    def state(self) -> dict[str, Any] | None:
        """The memory store's objects (for the checkpoint); None on disk."""
        return dict(self._memory) if self.root is None else None

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Restore what :meth:`state` returned."""
        if self.root is None:
            self._memory = dict(state or {})


def is_segment(name: str) -> bool:
    return bool(_SEGMENT_RE.match(name))


def is_open(name: str) -> bool:
    return bool(_OPEN_RE.match(name))


def read_index(folder: "str | Path") -> dict[str, Any]:
    """Read ``<folder>/index.json``.

    Raises:
        FileNotFoundError: no index there.
        ValueError: not a SWAD index, or from a newer format.
    """
    path = Path(folder) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no SWAD index (was the run trained with swad.mode=swad|swa?)")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(index, dict) or "segments" not in index:
        raise ValueError(f"{path}: not a SWAD index (no 'segments')")
    if index.get("format", 0) > INDEX_FORMAT:
        raise ValueError(f"{path}: index format {index['format']} is newer than this emgscale ({INDEX_FORMAT})")
    return index


@torch.no_grad()
def weighted_mean(sources: Iterable[tuple[dict[str, torch.Tensor], float]], total: float,
                  out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``sum(weight * tensors) / total`` per name, accumulated in float64 on the CPU, one source at a time.

    ``sources`` may be a generator that loads each segment file as it is consumed: only the float64
    accumulator and one source are held at once.

    Args:
        sources: ``(tensors, weight)`` pairs: a segment mean with its step count, or a running sum with 1.
        total: the divisor (the number of steps).
        out: tensors to write the result into (e.g. a model's parameters); new float32 ones when None.

    Returns:
        The mean per name (``out`` when given).
    """
    acc: dict[str, torch.Tensor] | None = None
    for tensors, weight in sources:
        if acc is None:
            acc = {k: t.to("cpu", torch.float64, copy=True).mul_(weight) for k, t in tensors.items()}
        else:
            for k, t in tensors.items():
                acc[k].add_(t.to("cpu", torch.float64), alpha=weight)
        del tensors
    if acc is None or total <= 0:
        raise ValueError("weighted_mean needs at least one source and a positive total")
    result: dict[str, torch.Tensor] = {} if out is None else out
    for k in list(acc):
        mean = acc.pop(k).div_(total)
        if out is None:
            result[k] = mean.to(torch.float32)
        else:
            out[k].copy_(mean)
    return result


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj
