"""The native backspace-aware CTC beam search (C++ extension over KenLM's C++ API).

The extension (``csrc/ctc_beam.cpp``, ``csrc/search.hh``) is compiled on first use with
``torch.utils.cpp_extension.load`` (pybind11 comes with torch; ninja with ``pip install 'emgscale[lm]'``)
and cached under ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``; a file lock makes
concurrent first uses on one machine safe). It links the KenLM library that ``scripts/build_kenlm.sh``
installs into ``<venv>/kenlm`` (``scripts/setup.sh`` runs it).
Set ``EMGSCALE_KENLM_DIR`` to use a KenLM installed elsewhere (same layout: ``include/``, ``lib/``,
``max_order``). Its search is specified by :mod:`emgscale.decode.reference`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from emgscale.data.charset import charset
from emgscale.decode.base import DecoderBase, as_batch, as_emissions, check_lm_file, label_actions, load_lm_file

CSRC = Path(__file__).resolve().parent / "csrc"
_lock = threading.Lock()
_ext: Any = None


def kenlm_dir() -> Path:
    """Where the KenLM library and headers are: ``$EMGSCALE_KENLM_DIR`` or ``<sys.prefix>/kenlm``."""
    return Path(os.environ.get("EMGSCALE_KENLM_DIR") or Path(sys.prefix) / "kenlm")


def load_extension(verbose: bool = False) -> Any:
    """Import the native decoder extension, compiling it first if needed (about 20 s, once).

    Raises:
        ImportError: the KenLM library is not built, or torch / ninja / a compiler is missing; the
            message says what to run.
    """
    global _ext
    with _lock:
        if _ext is not None:
            return _ext
        root = kenlm_dir()
        lib = root / "lib" / "libkenlm.a"
        if not lib.is_file() or not (root / "include" / "lm" / "model.hh").is_file():
            raise ImportError(
                f"the native beam decoder needs the KenLM C++ library in {root} (lib/libkenlm.a, include/): "
                f"run `bash scripts/build_kenlm.sh \"{Path(sys.prefix) / 'bin'}\"` (scripts/setup.sh does this), "
                "or set EMGSCALE_KENLM_DIR; decoder kind 'flashlight' works without it")
        try:
            max_order = int((root / "max_order").read_text().strip())
        except (OSError, ValueError):
            max_order = 6
        try:
            from torch.utils import cpp_extension
        except ImportError as e:  # pragma: no cover - torch is a core dependency
            raise ImportError("building the native beam decoder needs torch") from e
        # torch looks for `ninja` on PATH; the pip package puts it next to the interpreter.
        bindir = str(Path(sys.executable).parent)
        if shutil.which("ninja") is None and (Path(bindir) / "ninja").exists():
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        if shutil.which("ninja") is None:
            raise ImportError("building the native beam decoder needs ninja: pip install 'emgscale[lm]'")
        # torch rehashes the listed sources only: fold the headers and the KenLM build into a flag.
        digest = hashlib.sha1(str(lib.stat().st_mtime_ns).encode())
        for f in sorted(CSRC.iterdir()):
            digest.update(f.read_bytes())
        stamp = digest.hexdigest()[:16]
        try:
            _ext = cpp_extension.load(
                name=f"emgscale_ctc_beam_o{max_order}",
                sources=[str(CSRC / "ctc_beam.cpp")],
                extra_cflags=["-O3", "-std=c++17", f"-DKENLM_MAX_ORDER={max_order}",
                              f"-DEMGSCALE_BUILD_STAMP=0x{stamp}"],
                extra_include_paths=[str(root / "include"), str(CSRC)],
                extra_ldflags=[f"-L{root / 'lib'}", "-lkenlm", "-lkenlm_util", "-lpthread"],
                verbose=verbose,
            )
        except Exception as e:
            raise ImportError(f"compiling the native beam decoder failed ({type(e).__name__}: {e}); "
                              "rerun with load_extension(verbose=True) to see the compiler output") from e
        return _ext


class NativeBeamDecoder(DecoderBase):
    """Backspace-aware CTC prefix beam search with an optional KenLM character n-gram, in C++.

    Args:
        lm_path: KenLM model (binary or ARPA) built with :func:`emgscale.lm.build_lm`, or None for
            plain CTC prefix beam search (``lm_weight`` and ``insertion_bonus`` then have no effect,
            as in the reference decoder).
        beam_size: hypotheses kept per frame (default 50).
        lm_weight: weight of the LM's log10 score (default 2.0).
        insertion_bonus: added per LM token (default 2.0).
        beam_threshold: drop hypotheses scoring more than this below the best (nats; <= 0: off).
        label_threshold: per frame, skip labels whose log-prob is more than this below the frame's
            best (nats; <= 0: off).
        max_labels: per frame, expand at most this many labels (<= 0: all).
        num_threads: threads for ``decode_batch`` (one utterance per thread).
        gc_min_nodes: the search's tries are compacted when they outgrow max(this, 2 x live nodes),
            and its LM-step cache keeps at most this many entries (the newest half when it is full);
            only tests need to change it.
    """

    def __init__(self, lm_path: str | None = None, beam_size: int = 50, lm_weight: float = 2.0,
                 insertion_bonus: float = 2.0, beam_threshold: float = 25.0, label_threshold: float = 0.0,
                 max_labels: int = 0, num_threads: int = 1, gc_min_nodes: int = 1 << 12) -> None:
        cs = charset()
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        if lm_path is not None:
            check_lm_file(lm_path)  # before building the extension: a wrong file is said at once
        self.blank, self.num_classes, self.num_threads = cs.blank, cs.num_classes, num_threads
        tokens, actions = label_actions(cs)
        ext = load_extension()

        def make(path: str) -> Any:
            return ext.BeamDecoder(path, tokens, actions, cs.blank, beam_size, beam_threshold, label_threshold,
                                   max_labels, lm_weight, insertion_bonus, gc_min_nodes)
        self._impl = load_lm_file(lm_path, make) if lm_path else make("")

    @property
    def lm_order(self) -> int:
        """Order of the loaded LM (0 without one)."""
        return self._impl.lm_order

    def nbest(self, log_probs: Any, length: int | None = None, n: int = 1) -> list[tuple[list[int], float]]:
        """The ``n`` best hypotheses of one (T, C) utterance with their final scores, best first."""
        lp = as_emissions(log_probs, length, self.num_classes)
        return self._impl.nbest(lp, len(lp), n)

    def decode(self, log_probs: Any, length: int | None = None) -> list[int]:
        """Best label sequence of one (T, C) log-prob matrix (first ``length`` frames)."""
        return self.nbest(log_probs, length, 1)[0][0]

    def decode_batch(self, log_probs: Any, lengths: Any = None) -> list[list[int]]:
        """Best label sequences of a (B, T, C) batch with (B,) lengths, ``num_threads`` at a time."""
        lp, ln = as_batch(log_probs, lengths, self.num_classes)
        return self._impl.decode_batch(lp, ln.tolist(), self.num_threads)

    def decode_many(self, sessions: Sequence[Any], num_threads: int | None = None) -> list[list[int]]:
        """Best label sequences of several whole utterances of any lengths, decoded in one call.

        Unlike :meth:`decode_batch` nothing is padded, so sessions of very different lengths cost
        only their own frames; they are handed out longest first to ``num_threads`` threads.

        Args:
            sessions: (T_i, C) log-prob matrices (numpy or torch).
            num_threads: threads (default: the decoder's ``num_threads``).

        Returns:
            One label list per session, in the order given.

        Raises:
            ValueError: a session is not (T, C) with C == 99, or ``num_threads`` < 1.
        """
        threads = self.num_threads if num_threads is None else num_threads
        if threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {threads}")
        items = [as_emissions(x, None, self.num_classes) for x in sessions]
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))  # long ones first: no straggler
        decoded = self._impl.decode_list([items[i] for i in order], threads)
        out: list[list[int]] = [[] for _ in items]
        for i, labels in zip(order, decoded):
            out[i] = labels
        return out

    def stream(self, lookahead_frames: int | None = None) -> "BeamStream":
        """An incremental search over frames pushed as they come (see :class:`BeamStream`).

        Args:
            lookahead_frames: also commit the best hypothesis's labels that entered the beam at
                least this many frames ago (None: commit only what every hypothesis agrees on).
        """
        if lookahead_frames is not None and lookahead_frames < 0:
            raise ValueError(f"lookahead_frames must be >= 0, got {lookahead_frames}")
        return BeamStream(self, lookahead_frames)

    def score_labels(self, labels: list[int], eos: bool = True) -> float:
        """LM score + insertion bonus the search adds for ``labels`` (``"ab⌫c"`` scores as ``"ac"``).

        Args:
            labels: key labels (no blank).
            eos: include the final end-of-sentence score.

        Returns:
            ``lm_weight * log10 P(text after edits) + insertion_bonus * len(text after edits)``.
        """
        return self._impl.score_labels([int(c) for c in labels], eos)


class BeamStream:
    """Incremental backspace-aware beam search: push log-prob frames, get labels once they are final.

    A prefix is *committed* (returned by ``push``, never retracted) when every hypothesis of the beam
    starts with it, or, with ``lookahead_frames``, when it entered the beam at least that many frames
    ago on the best hypothesis; the beam then keeps only hypotheses extending it. Without a look-ahead
    the committed labels followed by ``finish()`` equal :meth:`NativeBeamDecoder.decode` of all frames.

    Args:
        decoder: the search settings and LM.
        lookahead_frames: see :meth:`NativeBeamDecoder.stream`.
    """

    def __init__(self, decoder: NativeBeamDecoder, lookahead_frames: int | None = None) -> None:
        self.num_classes = decoder.num_classes
        self._impl = decoder._impl.stream(-1 if lookahead_frames is None else int(lookahead_frames))

    def push(self, log_probs: Any) -> list[int]:
        """Step the search over (T, C) new frames; returns the labels committed by them."""
        return self._impl.push(as_emissions(log_probs, None, self.num_classes))

    def partial(self) -> list[int]:
        """The current best hypothesis after the committed labels (may still change)."""
        return self._impl.partial()

    def finish(self) -> list[int]:
        """End of the utterance: the final best hypothesis's labels after the committed ones."""
        return self._impl.finish()

    @property
    def frames(self) -> int:
        """Frames pushed so far."""
        return self._impl.frames

    @property
    def committed(self) -> int:
        """Labels committed so far."""
        return self._impl.committed
