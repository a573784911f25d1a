"""Where segment means live: files in the run's ``swad/`` folder, with a JSON index, or (no folder) memory.

Folder layout (written by rank 0 only, every file atomically)::

    swad/index.json            the segments: step range, count, validation loss, status, file
    swad/seg-00007.pt          segment 7's mean weights (float32 or bf16) and its step range, count, loss
    swad/open-00000420-00000437.pt   the open segment's float64 running sum at a mid-segment checkpoint

A segment file is written and read one tensor at a time (:meth:`SegmentStore.save_segment`): the
safetensors layout (an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, with the segment's step range, count and loss under ``__metadata__``, then the raw
tensors), so writing a segment's mean holds one converted tensor beside the running sum, never a whole
float32 copy of the model. Segment files of older runs (``torch.save`` archives) still load.

A segment's steps are ``[start_step, end_step)`` in the log's numbering: the segment validated at step V
ends at V. The averaged model is the count-weighted mean of segment means (:func:`weighted_mean`),
accumulated in float64 one tensor at a time over every chosen segment, so averaging holds one float64
tensor and one segment tensor at a time, however many segments there are and however large the model.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from emgscale.common import atomic_path, atomic_torch_save, atomic_write_json

INDEX = "index.json"
INDEX_FORMAT = 1
_SEGMENT_RE = re.compile(r"seg-\d+\.pt$")
_OPEN_RE = re.compile(r"open-\d+-\d+\.pt$")
#: safetensors dtype names of the tensors a segment file may hold.
_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}
_NAME_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}
_META_KEY = "emgscale"  # the segment's step range, count and loss (JSON) in the header's __metadata__


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

    @torch.no_grad()
    def save_segment(self, name: str, meta: dict[str, Any], params: Mapping[str, torch.Tensor],
                     dtype: torch.dtype) -> None:
        """Write a segment: ``meta`` and ``params`` converted to ``dtype`` on the CPU, one tensor at a time.

        Args:
            name: the segment's file name (:func:`segment_name`).
            meta: JSON-able facts of the segment (step range, count, validation loss).
            params: the segment's mean, per parameter name (any dtype and device).
            dtype: the dtype stored (float32 or bfloat16).
        """
        if self.root is None:
            self._memory[name] = {**meta, "params": {k: v.detach().to("cpu", dtype, copy=True)
                                                     for k, v in params.items()}}
            return
        header: dict[str, Any] = {"__metadata__": {_META_KEY: json.dumps(meta)}}
        offset, itemsize = 0, torch.empty((), dtype=dtype).element_size()
        for k, v in params.items():
            size = v.numel() * itemsize
            header[k] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(v.shape), "data_offsets": [offset, offset + size]}
            offset += size
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.root / name) as tmp, open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for v in params.values():
                one = v.detach().to("cpu", dtype).contiguous()  # the one converted tensor held at a time
                f.write(memoryview(one.reshape(-1).view(torch.uint8).numpy()))
                del one

    def load(self, name: str) -> dict[str, Any]:
        """Read ``name``: a segment's ``params`` are read from the file one tensor per access
        (:class:`SegmentTensors`); other files are memory-mapped, so tensors are paged in only as used.

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
        with open(path, "rb") as f:
            if f.read(2) != b"PK":  # not a torch.save archive: a segment file (the header comes first)
                tensors = SegmentTensors(path)
                return {**tensors.meta, "params": tensors}
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


class SegmentTensors(Mapping[str, torch.Tensor]):
    """A segment file's tensors by name, each read from the file when asked for (a new CPU tensor).

    Args:
        path: a segment file written by :meth:`SegmentStore.save_segment`.

    Raises:
        ValueError: the file's header is not a segment header (truncated, or another kind of file).
    """

    def __init__(self, path: "str | Path") -> None:
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 0 < n <= size - 8:
                raise ValueError(f"{self.path}: not a SWAD segment file (bad header length)")
            try:
                header = json.loads(f.read(n))
                self.meta = json.loads(header.pop("__metadata__", {}).get(_META_KEY, "{}"))
            except (ValueError, AttributeError) as e:
                raise ValueError(f"{self.path}: not a SWAD segment file ({e})") from None
        self._start = 8 + n
        self._entries: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
        for k, e in header.items():
            try:
                begin, end = (int(x) for x in e["data_offsets"])
                dtype, shape = _NAME_DTYPES.get(e["dtype"]), [int(d) for d in e["shape"]]
            except (TypeError, KeyError, ValueError):
                raise ValueError(f"{self.path}: tensor {k!r} has a bad header entry") from None
            if dtype is None or not 0 <= begin <= end <= size - self._start:
                raise ValueError(f"{self.path}: tensor {k!r} has a bad dtype or byte range")
            numel = 1
            for d in shape:
                numel *= d
            if numel * torch.empty((), dtype=dtype).element_size() != end - begin:
                raise ValueError(f"{self.path}: tensor {k!r}: shape {shape} does not fit {end - begin} bytes")
            self._entries[k] = (dtype, shape, begin, end)

    def __getitem__(self, key: str) -> torch.Tensor:
        dtype, shape, begin, end = self._entries[key]
        out = torch.empty(shape, dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self._start + begin)
            if f.readinto(memoryview(out.reshape(-1).view(torch.uint8).numpy())) != end - begin:
                raise ValueError(f"{self.path}: tensor {key!r} is truncated")
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


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
def weighted_mean(sources: Iterable[tuple[Mapping[str, torch.Tensor], float]], total: float,
                  out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``sum(weight * tensors) / total`` per name, accumulated in float64 on the CPU, one tensor at a time.

    Each name is averaged over every source before the next name: with segment files
    (:class:`SegmentTensors`, read per access) only one float64 tensor and one source tensor are held at
    once, whatever the model's size and the number of sources.

    Args:
        sources: ``(tensors, weight)`` pairs: a segment mean with its step count, or a running sum with 1.
        total: the divisor (the number of steps).
        out: tensors to write the result into (e.g. a model's parameters); new float32 ones when None.

    Returns:
        The mean per name (``out`` when given).

    Raises:
        ValueError: no source, or a total that is not positive.
    """
    sources = list(sources)
    if not sources or total <= 0:
        raise ValueError("weighted_mean needs at least one source and a positive total")
    result: dict[str, torch.Tensor] = {} if out is None else out
    for k in list(sources[0][0]):
        acc: torch.Tensor | None = None
        for tensors, weight in sources:
            t = tensors[k]
            if acc is None:
                acc = t.to("cpu", torch.float64, copy=True).mul_(weight)
            else:
                acc.add_(t.to("cpu"), alpha=weight)  # in float64, without a float64 copy of t
            del t
        acc.div_(total)
        if out is None:
            result[k] = acc.to(torch.float32)
        else:
            out[k].copy_(acc)
        del acc
    return result


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj
