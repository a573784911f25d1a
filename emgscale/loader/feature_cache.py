"""Spectra computed once per block of rows and served to training windows (``data.feature_cache``).

A training step spends a fifth to a third of its time in the featurizer, most of it recomputing the
same decimation and log spectrogram of overlapping windows every epoch. With ``data.feature_cache=DIR``
the loaders compute :meth:`~emgscale.features.Featurizer.spectra` (every electrode, no augmentation)
once per *block* of contiguous session rows — a whole HDF5 session, or one shard record — store it,
and serve each window as a crop of its block; the model then runs only
:meth:`~emgscale.features.Featurizer.from_spectra` (rotation, amplitude, channel mask, SpecAugment,
norm: still drawn afresh every step). Inter-band temporal jitter needs raw EMG and is refused.

Layout: ``DIR/<settings hash>/<block id>.npy``, float32 ``(frames, bands, electrodes, K)``, where the
hash covers what decides the spectra (:meth:`~emgscale.features.Featurizer.spectra_settings`: kind,
n_fft, hop, decimation, rates, bands/electrodes, log bands; not ``channels``, the norm or the
augmentations) and ``settings.json`` beside the blocks says what they are. A block id names the
session and a digest of its source's identity (resolved path, size and mtime of an HDF5 file; shard
URL, record key, first row and rows of a record, plus the tar's size and mtime when it is a local
file; a file's identity is read once per process), so a changed source gets a new block in
the next run (old ones are not evicted). Blocks are written with ordinary writes through
:func:`emgscale.common.atomic_path`: two processes building the same block both write whole files and
the last rename wins; readers memory-map them. A full disk (or quota, or a read-only folder) stops
with one line naming the block and the reason (:class:`CacheWriteError`), and leaves no temporary file.
After the array a block file holds a 16-byte trailer: ``EMGSCRC1`` and the CRC-32 of the array's
bytes, checked the first time a process maps the block (a sequential read of the file, about as fast
as the disk). A file that does not parse, has the wrong shape, lacks its trailer (truncated, or of
another version) or fails its checksum (flipped bytes, a NaN written into it) is rebuilt, with one
logged line naming it. Spectra that come out non-finite are refused when a block is built (a
:class:`~emgscale.data.errors.DataError` naming the session file or shard record).

Frames are on the block's grid: frame ``j`` starts at row ``first_row + j * samples_per_frame``. A
window of rows ``[s, e)`` is served from ``s' = s`` rounded down to that grid (at most
``samples_per_frame - 1`` rows of extra left context; ``label_time_s`` is shifted by ``(s - s')`` rows
at the nominal rate) as the ``frames_for_rows(e - s')`` frames from ``(s' - first_row) /
samples_per_frame``. These equal ``spectra()`` of raw rows ``[s', e)``: at decimation 1 up to float
rounding (max abs difference 0 measured: ``tests/test_feature_cache.py``); with decimation > 1 the
raw path zero-pads each window's FIR input, so the first and last :func:`edge_frames` frames of a
window differ (the cache's are the better ones: real neighbouring rows), and interior frames equal
up to float rounding (max abs difference 0 measured; tested within 1e-5).

Blocks are computed in chunks of ``chunk_frames`` frames (memory stays flat on hour-long sessions),
each read with the FIR and STFT context it needs, so chunk seams are exact (:func:`compute_spectra`).

Disk: ``frame_rate x bands x electrodes x K x 4`` bytes per EMG second: 125 x 32 x 33 x 4 = 528,000
B/s for the default 33-bin log spectrogram (2.06x the raw float32 EMG), 96,000 B/s for 6 log bands.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from emgscale.common import atomic_path, atomic_write_json
from emgscale.data.errors import DataError
from emgscale.features import Featurizer
from emgscale.features.config import FeatureConfig

__all__ = ["CACHE_VERSION", "CacheWriteError", "FeatureCache", "compute_spectra", "edge_frames", "spectra_chunks"]

log = logging.getLogger("emgscale.loader.feature_cache")

#: Bumped when the stored layout or the spectra's computation changes (a new settings folder).
#: 2: a checksum trailer after the array.
CACHE_VERSION = 2
#: Frames per computed chunk: 4096 frames of 2 x 16 x 33 bins is ~17 MB of output per chunk.
CHUNK_FRAMES = 4096
#: Open memory maps kept per process.
OPEN_BLOCKS = 32
#: What follows a block's array in its file: this tag, then the array bytes' CRC-32 (8 bytes, little-endian).
TRAILER_TAG = b"EMGSCRC1"
TRAILER_BYTES = 16
#: Bytes read at a time when a block's checksum is verified.
READ_BYTES = 1 << 24
_UNSAFE = re.compile(r"[^A-Za-z0-9@_\-]")

RowReader = Callable[[int, int], np.ndarray]


def _digest(text: str, n: int = 16) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def edge_frames(featurizer: Featurizer) -> int:
    """Frames at each end of a served window that may differ from the raw path's ``spectra()`` of it:
    ``ceil(half_taps / samples_per_frame)`` (0 at decimation 1; 2 at 1 kHz, 3 at 500 Hz, 5 at 250 Hz)."""
    return math.ceil(featurizer.decimator.half_taps / featurizer.samples_per_frame)


def compute_spectra(featurizer: Featurizer, read_rows: RowReader, num_rows: int, out: np.ndarray,
                    chunk_frames: int = CHUNK_FRAMES) -> None:
    """Fill ``out`` with ``featurizer.spectra()`` of rows ``[0, num_rows)`` as one sequence, in chunks
    (:func:`spectra_chunks`).

    Args:
        featurizer: whose :meth:`~emgscale.features.Featurizer.spectra` to compute.
        read_rows: ``read_rows(a, b)`` -> rows ``[a, b)`` as ``(b - a, bands, electrodes)`` floats.
        num_rows: rows in the block.
        out: ``(featurizer.output_lengths(num_rows), bands, electrodes, K)`` float32, written in place.
        chunk_frames: frames per chunk.
    """
    for f0, chunk in spectra_chunks(featurizer, read_rows, num_rows, len(out), chunk_frames):
        out[f0:f0 + len(chunk)] = chunk


@torch.no_grad()
def spectra_chunks(featurizer: Featurizer, read_rows: RowReader, num_rows: int, total_frames: int,
                   chunk_frames: int = CHUNK_FRAMES) -> Iterator[tuple[int, np.ndarray]]:
    """``featurizer.spectra()`` of rows ``[0, num_rows)`` as one sequence, as ``(first frame, frames)`` chunks.

    Chunk ``[f0, f1)`` reads rows ``[f0 * spf - left, (f1 - 1) * spf + right]`` (``left`` =
    ``half_taps`` rounded up to whole frames, ``right`` = the last row a frame reads), so every frame
    it keeps sees exactly the rows (or the zero padding past the block's ends) it sees in one pass.

    Args:
        featurizer, read_rows, num_rows, chunk_frames: as :func:`compute_spectra`.
        total_frames: ``featurizer.output_lengths(num_rows)``.

    Yields:
        ``(f0, spectra)``: float32 ``(f1 - f0, bands, electrodes, K)`` of frames ``[f0, f1)``, in order.
    """
    spf = featurizer.samples_per_frame
    left = edge_frames(featurizer) * spf
    right = (featurizer.n_fft - 1) * featurizer.decimation + featurizer.decimator.half_taps
    for f0 in range(0, total_frames, chunk_frames):
        f1 = min(total_frames, f0 + chunk_frames)
        a, b = max(0, f0 * spf - left), min(num_rows, (f1 - 1) * spf + right + 1)
        x = torch.from_numpy(np.ascontiguousarray(read_rows(a, b), dtype=np.float32)).unsqueeze(0)
        y, _ = featurizer.spectra(x, torch.tensor([b - a]))
        k0 = (f0 * spf - a) // spf  # a is on the frame grid
        yield f0, y[0, k0:k0 + f1 - f0].numpy()


class CacheWriteError(DataError):
    """A block could not be written (disk full, quota, read-only folder): training stops on it, a bad
    source record does not (:mod:`emgscale.loader.shard_pipeline` skips those)."""


class FeatureCache:
    """Spectra of blocks of rows under ``root``, keyed by the spectra's settings (module docstring).

    Picklable (DataLoader workers): the open memory maps stay behind.

    Args:
        root: the cache folder (``data.feature_cache``); made when needed.
        features: the model's feature settings.
        chunk_frames: frames computed per chunk when a block is built.
    """

    def __init__(self, root: "str | Path", features: FeatureConfig, chunk_frames: int = CHUNK_FRAMES) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"data.feature_cache={str(root)!r} is a file, not a folder")
        self.featurizer = Featurizer(features).eval()  # no augmentation: spectra() only
        self.settings = {"version": CACHE_VERSION, **self.featurizer.spectra_settings()}
        self.folder = self.root / _digest(json.dumps(self.settings, sort_keys=True))
        self.samples_per_frame = int(self.featurizer.samples_per_frame)
        f = self.featurizer
        self.frame_shape = (f.num_bands, f.num_electrodes, f.num_bins)
        self.chunk_frames = int(chunk_frames)
        self._open: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._session_names: dict[str, str] = {}  # session path -> block name (its identity, read once)
        self._tar_ids: dict[str, str] = {}  # shard URL -> its local file's size and mtime (read once)
        self._verified: set[str] = set()  # blocks whose checksum this process has checked

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    def frames_for_rows(self, num_rows: int) -> int:
        """Frames of ``num_rows`` raw rows (:meth:`~emgscale.features.Featurizer.output_lengths`)."""
        return int(self.featurizer.output_lengths(torch.tensor([int(num_rows)]))[0])

    # ------------------------------------------------------------------ blocks
    def session_block(self, path: "str | Path") -> np.ndarray:
        """The spectra of a whole HDF5 session (built on first use), memory-mapped."""
        from emgscale.data.source import open_session

        name = self._session_names.get(str(path))
        if name is None:  # resolve and stat a file once per process, not once per window
            p = Path(path).resolve()
            st = p.stat()
            name = f"{_UNSAFE.sub('_', p.stem)}-{_digest(f'hdf5|{p}|{st.st_size}|{st.st_mtime_ns}')}"
            self._session_names[str(path)] = name
        if name in self._open:
            return self._hit(name)
        with open_session(Path(path).resolve()) as session:
            return self._block(name, len(session), session.emg, str(path))

    def record_block(self, record: dict[str, Any]) -> np.ndarray:
        """The spectra of a decoded shard record's rows (:func:`emgscale.shard.records.decode_record`)."""
        meta, url, emg = record["meta"], str(record.get("__url__", "?")), record["emg"]
        ident = f"shard|{url}|{meta['key']}|{meta['kind']}|{meta['start']}|{len(emg)}"
        ident += self._tar_identity(url)
        name = f"{_UNSAFE.sub('_', str(meta['session']))}-{int(meta['start']):09d}-{_digest(ident)}"
        if name in self._open:
            return self._hit(name)
        return self._block(name, len(emg), lambda a, b: emg[a:b], f"{url} record {meta['key']!r}")

    def _tar_identity(self, url: str) -> str:
        """``|size|mtime`` of a local shard file ('' for a remote URL), stat-ed once per process."""
        if url not in self._tar_ids:
            local = Path(url[7:] if url.startswith("file:") else url)
            st = local.stat() if local.is_file() else None
            self._tar_ids[url] = f"|{st.st_size}|{st.st_mtime_ns}" if st else ""
        return self._tar_ids[url]

    def _hit(self, name: str) -> np.ndarray:
        self._open.move_to_end(name)
        return self._open[name]

    def _block(self, name: str, num_rows: int, read_rows: RowReader, source: str) -> np.ndarray:
        shape = (self.frames_for_rows(num_rows), *self.frame_shape)
        if shape[0] == 0:
            return np.zeros(shape, np.float32)
        path = self.folder / f"{name}.npy"
        block, problem = _open_block(path, shape, verify=name not in self._verified)
        if block is None:
            if problem is not None:
                log.warning("[feature-cache] %s %s; rebuilding it", path, problem)
            self._build(path, shape, num_rows, read_rows, source)
            block, problem = _open_block(path, shape, verify=False)  # just written and checked chunk by chunk
            if block is None:
                raise DataError(path, f"feature cache block just written {problem or 'is missing'}")
        self._verified.add(name)
        self._open[name] = block
        while len(self._open) > OPEN_BLOCKS:
            self._open.popitem(last=False)
        return block

    def _build(self, path: Path, shape: tuple[int, ...], num_rows: int, read_rows: RowReader, source: str) -> None:
        """Write the block with ordinary writes (a full disk is an error, not a SIGBUS), its checksum last."""
        settings = self.folder / "settings.json"
        try:
            if not settings.is_file():
                atomic_write_json(settings, self.settings)
            with atomic_path(path, suffix=".npy.tmp") as tmp:  # removed on any error
                with open(tmp, "wb") as f:
                    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
                    crc = 0
                    for _, chunk in spectra_chunks(self.featurizer, read_rows, num_rows, shape[0], self.chunk_frames):
                        if not np.isfinite(chunk).all():
                            raise DataError(source, "its spectra are not finite (EMG too large for float32 power?)")
                        data = np.ascontiguousarray(chunk, dtype="<f4").tobytes()
                        f.write(data)
                        crc = zlib.crc32(data, crc)
                    f.write(TRAILER_TAG + crc.to_bytes(TRAILER_BYTES - len(TRAILER_TAG), "little"))
                os.chmod(tmp, 0o644)  # a shared cache: readable by the other users of the folder (mkstemp: 0600)
        except OSError as e:
            raise CacheWriteError(path, f"cannot write the feature cache block: {e.strerror or e}") from None

    # ------------------------------------------------------------------ windows
    def serve(self, sample: dict[str, Any], block: np.ndarray, first_row: int) -> dict[str, Any]:
        """A window sample (:mod:`emgscale.data.windows` format) with its spectra in place of its EMG.

        Args:
            sample: a window sample of session rows ``[start, start + len(emg))``, or with ``rows`` in
                place of ``emg`` (read without its EMG: :func:`emgscale.data.windows.read_window`).
            block: the spectra of the block holding those rows.
            first_row: session row of the block's first row (0 for a whole session).

        Returns:
            The sample without ``emg``, with ``features`` (T', bands, electrodes, K) float32 (a view of
            the memory-mapped block: :func:`~emgscale.data.windows.collate` copies it once), ``rows``
            (raw rows covered, ``e - s'``), ``start`` = ``s'`` and ``label_time_s`` from ``s'``.

        Raises:
            DataError: the block is shorter than the window needs (a stale or foreign block).
        """
        start = int(sample["start"])
        stop = start + (len(sample["emg"]) if "emg" in sample else int(sample["rows"]))
        spf = self.samples_per_frame
        j0 = (start - first_row) // spf
        s2 = first_row + j0 * spf
        n = self.frames_for_rows(stop - s2)
        if j0 < 0 or j0 + n > len(block):
            raise DataError(getattr(block, "filename", None) or "feature cache",
                            f"block of {len(block)} frames cannot serve frames {j0}..{j0 + n} of window "
                            f"{sample.get('key')!r}")
        out = {k: v for k, v in sample.items() if k != "emg"}
        shift_s = (start - s2) / float(sample["sample_rate_hz"])
        out.update(features=np.asarray(block[j0:j0 + n]), rows=stop - s2, start=s2,
                   label_time_s=np.asarray(sample["label_time_s"], dtype=np.float64) + shift_s)
        return out


def _open_block(path: Path, shape: tuple[int, ...], verify: bool) -> tuple[np.ndarray | None, str | None]:
    """``(memory map, None)``, ``(None, None)`` when there is no file, ``(None, problem)`` when it is bad:
    unreadable, of another dtype or shape, without its trailer, or (``verify``) failing its checksum."""
    if not path.is_file():
        return None, None
    try:
        block = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        return None, f"is unreadable or truncated ({type(e).__name__}: {e})"
    if block.dtype != np.float32 or block.shape != shape:
        return None, f"holds {block.dtype} {block.shape}, expected float32 {shape}"
    end = int(block.offset) + block.nbytes
    try:
        with open(path, "rb") as f:
            f.seek(end)
            trailer = f.read(TRAILER_BYTES + 1)
            if len(trailer) != TRAILER_BYTES or not trailer.startswith(TRAILER_TAG):
                return None, "has no checksum after its array (truncated, or written by another version)"
            if verify:
                f.seek(int(block.offset))
                crc, left = 0, block.nbytes
                while left > 0:
                    data = f.read(min(READ_BYTES, left))
                    if not data:
                        return None, "is truncated"
                    crc, left = zlib.crc32(data, crc), left - len(data)
                if crc != int.from_bytes(trailer[len(TRAILER_TAG):], "little"):
                    return None, "fails its checksum (its bytes changed after it was written)"
    except OSError as e:
        return None, f"is unreadable ({e.strerror or e})"
    return block, None
