r"""Build a KenLM character n-gram from text with KenLM's own ``lmplz`` and ``build_binary``.

The paper's LM is a 6-gram over WikiText-103. To build the equivalent, download WikiText-103 raw
yourself (``wikitext-103-raw-v1``: ``wiki.train.raw``, ``wiki.valid.raw``, ``wiki.test.raw``, about
0.5 GB of text), undo its tokenisation of hyphens and number separators (`` @-@ `` -> ``-``), then::

    sed -E 's/ @(.)@ /\1/g' wikitext-103-raw/wiki.train.raw > wiki.train.txt
    python -m emgscale.lm build --text wiki.train.txt --order 6 --out models/lm/wikitext103-char6.bin \
        --memory 40% --binary-type trie

Expect a long run, several GB of temporary disk next to ``--out`` (or ``--tmp-dir``) and a model of
some GB (``--binary-type trie`` is the smallest; ``--prune 0 0 0 1 1 1`` shrinks it further).

Unlike the reference script (lowercase letters only, one word per line), this keeps the whole
charset — case, digits, punctuation and spaces (``<sp>``) — because the decoders score every typed
character; see :mod:`emgscale.lm.text` for the tokenisation. An LM built the reference way also works
with the decoders: keys outside its vocabulary then act as word boundaries, as in the reference.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from emgscale.common import DISK_FULL_ERRNOS, DiskFullError, atomic_path, print0, progress
from emgscale.lm.text import lines_to_lm_sentences

BUILD_HINT = "build them with `bash scripts/build_kenlm.sh \"$(dirname \"$(command -v python)\")\"` " \
             "(scripts/setup.sh does this)"


def find_kenlm_tool(name: str) -> Path:
    """Path of a KenLM program (``lmplz``, ``build_binary``): on PATH or next to the Python executable.

    Raises:
        FileNotFoundError: the program is in neither place; the message says how to build it.
    """
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if found:
        return Path(found)
    raise FileNotFoundError(f"KenLM's {name} was not found on PATH or next to {sys.executable}; {BUILD_HINT}")


def kenlm_max_order(default: int = 6) -> int:
    """KENLM_MAX_ORDER the local KenLM build was compiled with (``<venv>/kenlm/max_order``), else ``default``."""
    f = Path(sys.prefix) / "kenlm" / "max_order"
    try:
        return int(f.read_text().strip())
    except (OSError, ValueError):
        return default


def _open_text(path: Path) -> IO[str]:
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8", errors="replace")  # type: ignore[operator]


#: A text file whose sample has more than this share of characters that are not text (undecodable
#: bytes, control characters) is refused: it is binary, not something one types.
MAX_UNTYPEABLE_SHARE = 0.3
_SAMPLE_CHARS = 1 << 16


def check_text_file(path: Path) -> None:
    """Refuse a file that is not (compressed) text, before any work: a fake ``.gz``, binary garbage.

    Reads the first 64 K characters (decompressed) and counts the untypeable ones: U+FFFD (bytes that
    are not UTF-8) and control characters other than tab and line ends.

    Raises:
        ValueError: naming the file: not a valid compressed file, or mostly untypeable.
    """
    try:
        with _open_text(path) as f:
            sample = f.read(_SAMPLE_CHARS)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a valid {path.suffix} file ({e})") from None
    if not sample:
        return
    bad = sum(1 for c in sample if c == "\ufffd" or (not c.isprintable() and c not in "\t\n\r"))
    if bad > MAX_UNTYPEABLE_SHARE * len(sample):
        raise ValueError(f"{path}: mostly untypeable ({bad / len(sample):.0%} of its first {len(sample)} characters "
                         "are not text): a binary file? An LM is built from UTF-8 text")


def _paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Join runs of non-blank lines (hard-wrapped text) into one line per paragraph."""
    par: list[str] = []
    for line in lines:
        if line.strip():
            par.append(line.strip())
        elif par:
            yield " ".join(par)
            par = []
    if par:
        yield " ".join(par)


def _sentences(paths: Sequence[Path], paragraphs: bool) -> Iterator[str]:
    for path in progress(paths, total=len(paths), desc="lm text", unit="file"):
        with _open_text(path) as f:
            yield from lines_to_lm_sentences(_paragraphs(f) if paragraphs else f)


def build_lm(texts: Sequence["str | os.PathLike[str]"], out: "str | os.PathLike[str]", order: int = 6, *,
             arpa: "str | os.PathLike[str] | None" = None, memory: str = "20%", prune: Sequence[int] = (),
             binary_type: str = "probing", paragraphs: bool = False,
             tmp_dir: "str | os.PathLike[str] | None" = None, verbose: bool = False) -> Path:
    """Estimate a character n-gram on ``texts`` and write it to ``out`` atomically.

    The text is tokenised with :func:`emgscale.lm.text.text_to_lm_sentences` and streamed into
    ``lmplz -o ORDER --discount_fallback``; the ARPA result is binarised with ``build_binary``
    unless ``out`` ends in ``.arpa``.

    Args:
        texts: UTF-8 text files (``.gz``, ``.bz2`` and ``.xz`` are decompressed).
        out: the LM file to write (KenLM binary, or ARPA when it ends in ``.arpa``).
        order: n-gram order, 1 to the local KenLM's max order (8 by default; the ``kenlm`` Python
            module and flashlight-text load at most 6).
        arpa: also keep the ARPA file here.
        memory: ``lmplz -S`` sorting memory (``"20%"``, ``"4G"``).
        prune: ``lmplz --prune`` count thresholds per order (e.g. ``(0, 0, 1)``); empty for none.
        binary_type: ``build_binary`` data structure, ``"probing"`` (fastest) or ``"trie"`` (smallest).
        paragraphs: the text is hard-wrapped (as Project Gutenberg books are): a sentence is a
            paragraph (lines up to a blank line) rather than a line.
        tmp_dir: folder for lmplz's temporary files (default: next to ``out``).
        verbose: show lmplz/build_binary output.

    Returns:
        The path of the written LM.

    Raises:
        FileNotFoundError: a text file, ``lmplz`` or ``build_binary`` is missing.
        ValueError: a bad order, binary type or empty text.
        RuntimeError: lmplz or build_binary failed (its output is in the message).
    """
    paths = [Path(t) for t in texts]
    if not paths:
        raise ValueError("no text files given")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: text file not found")
        check_text_file(p)
    max_order = kenlm_max_order()
    if not 1 <= order <= max_order:
        raise ValueError(f"order {order} is outside 1..{max_order} (KENLM_MAX_ORDER of the local KenLM build)")
    if binary_type not in ("probing", "trie"):
        raise ValueError(f"binary_type {binary_type!r} is not 'probing' or 'trie'")
    if prune and len(prune) > order:
        raise ValueError(f"prune has {len(prune)} thresholds for an order-{order} model")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lmplz = find_kenlm_tool("lmplz")
    build_binary = None if out.suffix == ".arpa" else find_kenlm_tool("build_binary")
    if order > 6:
        print0(f"[lm] note: order {order} > 6 loads in the native decoder only (not flashlight-text or kenlm.Model)")

    with tempfile.TemporaryDirectory(dir=tmp_dir or out.parent, prefix=".lm-build-") as work:
        arpa_tmp = Path(work) / "model.arpa"
        cmd = [str(lmplz), "-o", str(order), "--discount_fallback", "-S", memory, "-T", work,
               "--arpa", str(arpa_tmp)]
        if prune:
            cmd += ["--prune", *map(str, prune)]
        n = 0
        with open(Path(work) / "lmplz.log", "w+b") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=None if verbose else log,
                                    stderr=None if verbose else subprocess.STDOUT)
            assert proc.stdin is not None
            try:
                for sentence in _sentences(paths, paragraphs):
                    proc.stdin.write(sentence.encode("utf-8") + b"\n")
                    n += 1
            except BrokenPipeError:
                pass  # lmplz died; its exit status and log say why
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                rc = proc.wait()
            if n == 0:
                raise ValueError(f"no typeable text in {[str(p) for p in paths]}")
            if rc != 0:
                log.seek(0)
                detail = log.read().decode("utf-8", "replace")[-3000:]
                _raise_if_disk_full(detail, work)
                raise RuntimeError(f"lmplz failed (exit {rc}): {' '.join(cmd)}\n{detail}")
        if arpa is not None:
            arpa = Path(arpa)
            with atomic_path(arpa) as arpa_part:
                shutil.copyfile(arpa_tmp, arpa_part)
        if build_binary is None:
            result = arpa_tmp
        else:
            result = Path(work) / "model.bin"
            run = subprocess.run([str(build_binary), "-S", memory, "-T", work, binary_type, str(arpa_tmp), str(result)],
                                 capture_output=not verbose)
            if run.returncode != 0:
                _raise_if_disk_full((run.stdout or b"").decode("utf-8", "replace")
                                    + (run.stderr or b"").decode("utf-8", "replace"), work)
                raise RuntimeError(f"build_binary failed (exit {run.returncode}):\n"
                                   f"{(run.stdout or b'').decode()[-1500:]}{(run.stderr or b'').decode()[-1500:]}")
        with atomic_path(out) as tmp_out:
            shutil.move(str(result), tmp_out)
    print0(f"[lm] wrote {out} ({order}-gram, {n} sentences, {out.stat().st_size / 1e6:.1f} MB)")
    return out


def _raise_if_disk_full(output: str, folder: "str | os.PathLike[str]") -> None:
    """A :class:`~emgscale.common.DiskFullError` naming ``folder`` when KenLM's output says the disk is full."""
    for code in DISK_FULL_ERRNOS:
        if os.strerror(code) in output:
            raise DiskFullError(code, f"{os.strerror(code)} (KenLM's temporary files are removed; "
                                      f"--tmp-dir puts them elsewhere)", str(folder))
