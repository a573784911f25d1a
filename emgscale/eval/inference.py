"""From a checkpoint to whole-session emissions: the one "load model -> device -> emissions" path.

Evaluation (:mod:`emgscale.eval`) and the benchmarks both use it. Each session is run through the
model whole, in overlapping chunks when it is long (:func:`infer_session`): chunk ``k`` owns the output
frames of its ``chunk_seconds`` and sees ``context_seconds`` more input on each side (chunks start at
multiples of the model's ``alignment_samples``), so for a model whose receptive field fits in the
context (TDS, CNN, local or chunked attention) the stitched output equals the unchunked one; models
with unbounded context (bidirectional RNNs, global attention) see at least that much context. Labels
are every keystroke between the session's first and last sample, as the paper's test.

With test-time adaptation (:func:`adapted_emissions`, ``split_emissions(..., adapt_seconds=S)``), each
user's sessions are run through a copy of the model whose normalisation was re-estimated on the first S
seconds of that user's unlabelled EMG (:mod:`emgscale.models.adapt`).
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from emgscale.models.checkpoint import Checkpoint, load_checkpoint, load_weights
from emgscale.common import print0, progress, resolve_device
from emgscale.data.errors import DataError
from emgscale.data.scale import sampled_scale, scale_warning
from emgscale.data.session import EMGSession
from emgscale.data.source import open_session
from emgscale.data.splits import DataRoot
from emgscale.data.splits import load_split
from emgscale.models import build_model
from emgscale.models.adapt import adapt_norm
from emgscale.train.config import TrainConfig


def load_model(path: "str | Path", which: str = "model", device: "str | torch.device" = "cpu"
               ) -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild the model stored in a checkpoint, in eval mode on ``device``, with its training config.

    Args:
        path: checkpoint file (or a run's checkpoint folder).
        which: ``model`` (the trained weights), ``averaged`` (the SWAD/SWA average) or ``auto``
            (the average when the checkpoint has one).
        device: where to put it (``auto``: this process's GPU when there is one).

    Returns:
        ``(model, cfg)``: the model and the :class:`~emgscale.train.TrainConfig` it was trained with.
    """
    ck = load_checkpoint(path)
    cfg = TrainConfig.from_checkpoint(ck)
    model = build_model(cfg.model)
    load_weights(model, ck.weights(resolve_weights(ck, which)), path)
    model.to(resolve_device(device) if isinstance(device, str) else device).eval()
    return model, cfg


def resolve_weights(ck: Checkpoint, which: str) -> str:
    """``which`` with ``auto`` resolved: ``averaged`` when the checkpoint has an average, else ``model``."""
    if which == "auto":
        return "averaged" if ck.averaged_model is not None else "model"
    return which


@torch.no_grad()
def infer_session(model: torch.nn.Module, emg: "np.ndarray | EMGSession", *, sample_rate_hz: float = 2000.0,
                  chunk_seconds: float = 60.0, context_seconds: float = 4.0,
                  device: "torch.device | str" = "cpu", bf16: bool = False) -> np.ndarray:
    """Log-probs ``(T', C)`` of a whole session ``emg`` ``(T, 2, 16)``, in overlapping chunks.

    Args:
        emg: the EMG array, or an open :class:`EMGSession` (chunks are then read lazily from disk,
            so a 47-minute session is never in memory whole).
        chunk_seconds: input owned by each chunk; 0 or a value beyond the session runs it whole.
        context_seconds: extra input each chunk sees before and after what it owns; raised to the
            model's own ``left/right_context_frames`` when those are larger.
    """
    model.eval()
    n = len(emg)
    full = int(model.output_lengths(torch.tensor([n]))[0])
    s = int(model.samples_per_frame)  # input samples per output frame
    align = int(getattr(model, "alignment_samples", s))  # chunks start at multiples of this

    def read(a: int, b: int) -> np.ndarray:
        if not isinstance(emg, EMGSession):
            return emg[a:b]
        # EMG and time under the one value rule (emgscale.data.values), from one row before the chunk
        # so that time going backwards between two chunks is found too.
        rows, _ = emg.window(max(a - 1, 0), b)
        return rows[a - max(a - 1, 0):]

    def run(a: int, b: int) -> np.ndarray:
        chunk = read(a, b)
        x = torch.from_numpy(np.ascontiguousarray(chunk)).unsqueeze(0).to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            lp, ol = model(x, torch.tensor([b - a], device=device))
        return lp[0, : int(ol[0])].float().cpu().numpy()

    step = max(align, int(round(chunk_seconds * sample_rate_hz / align)) * align) if chunk_seconds > 0 else n
    if step >= n:
        return run(0, n)
    # At least the context the model declares it needs (None = unbounded: use what was asked for).
    need = max(getattr(model, "left_context_frames", None) or 0, getattr(model, "right_context_frames", None) or 0)
    ctx_samples = max(context_seconds * sample_rate_hz, need * s)
    ctx = int(np.ceil(ctx_samples / align)) * align
    pieces = []
    for own_start in range(0, n, step):
        first, last = own_start // s, min((own_start + step) // s, full)
        if first >= last:
            break
        a, b = max(0, own_start - ctx), min(n, own_start + step + ctx)
        out = run(a, b)
        i0 = first - a // s
        pieces.append(out[i0: i0 + (last - first)])
    lp = np.concatenate(pieces, axis=0)
    if len(lp) != full:
        raise RuntimeError(f"chunked inference produced {len(lp)} frames, expected {full}")
    return lp


def session_emissions(model: torch.nn.Module, data_root: "str | Path", refs: list[Any], *,
                      sample_rate_hz: float = 2000.0, chunk_seconds: float = 60.0, context_seconds: float = 4.0,
                      device: "torch.device | str" = "cpu", bf16: bool = False,
                      desc: str = "inference", bids_metadata: "str | Path | None" = None) -> Iterator[dict[str, Any]]:
    """Whole-session log-probs and targets of the sessions ``refs`` (:class:`SessionRef`) under ``data_root``.

    ``data_root`` may be a BIDS copy (``bids_metadata``: the ``metadata.csv`` it was made from, when it has none).
    Yields ``{"session", "user", "log_probs" (T', C) float32, "target" (labels)}``, one session at a time.
    """
    paths = DataRoot(data_root, bids_metadata).paths([r.session for r in refs])
    for i, (ref, path) in enumerate(progress(zip(refs, paths), total=len(refs), desc=desc, unit="session")):
        if not path.is_file():
            raise DataError(path, "session named by the split is missing")
        with open_session(path, bids_metadata) as sess:
            if len(sess) == 0:
                raise DataError(path, "holds no EMG rows (a 0-row session): nothing to evaluate")
            if i == 0:  # data in other units than the model's training data decodes to garbage: say so once
                warning = scale_warning(sampled_scale(sess.emg, len(sess), sess.sample_rate_hz, max_seconds=20.0),
                                        model.featurizer.input_gain, where=str(path))
                if warning:
                    print0(f"[eval] WARNING {warning}")
            try:
                lp = infer_session(model, sess, sample_rate_hz=sample_rate_hz, chunk_seconds=chunk_seconds,
                                   context_seconds=context_seconds, device=device, bf16=bf16)
            except DataError:
                raise
            except ValueError as e:  # e.g. shorter than the model's receptive field
                raise DataError(path, str(e)) from None
            target = sess.ground_truth(sess.start_time, sess.end_time).labels.tolist()
            yield {"session": ref.session, "user": sess.user, "log_probs": lp, "target": target}



def adapt_to_user(model: torch.nn.Module, data_root: "str | Path", refs: list[Any], seconds: float, *,
                  window_seconds: float = 4.0, batch_windows: int = 8,
                  bids_metadata: "str | Path | None" = None) -> dict[str, Any]:
    """Adapt ``model``'s normalisation (in place, :func:`~emgscale.models.adapt.adapt_norm`) on the first
    ``seconds`` of the EMG of the sessions ``refs`` (one user's, in split order); their labels are never read.

    Returns:
        ``adapt_norm``'s summary with the sessions used (``sessions``).

    Raises:
        DataError: a session file is missing.
    """
    paths = DataRoot(data_root, bids_metadata).paths([r.session for r in refs])
    with ExitStack() as stack:
        sessions = []
        for path in paths:
            if not path.is_file():
                raise DataError(path, "adaptation session named by the split is missing")
            sessions.append(stack.enter_context(open_session(path, bids_metadata)))
        info = adapt_norm(model, sessions, seconds, window_seconds=window_seconds, batch_windows=batch_windows)
    return {**info, "sessions": [r.session for r in refs]}


def adapted_emissions(model: torch.nn.Module, data_root: "str | Path", refs: list[Any], adapt_refs: list[Any],
                      adapt_seconds: float, *, window_seconds: float = 4.0, batch_windows: int = 8,
                      bids_metadata: "str | Path | None" = None, **kw: Any) -> Iterator[dict[str, Any]]:
    """:func:`session_emissions` of ``refs`` with, per user, a copy of ``model`` adapted on the first
    ``adapt_seconds`` of that user's sessions among ``adapt_refs`` (:func:`adapt_to_user`); ``model`` is
    not changed. 0 seconds: the model as it is. Sessions come grouped by user (in order of first appearance);
    each dict also holds ``adaptation`` (:func:`adapt_to_user`'s summary, None without adaptation).

    Raises:
        ValueError: adaptation asked for a user with no session in ``adapt_refs``.
    """
    if adapt_seconds <= 0:
        for e in session_emissions(model, data_root, refs, bids_metadata=bids_metadata, **kw):
            yield {**e, "adaptation": None}
        return
    for user in dict.fromkeys(r.user for r in refs):
        mine = [r for r in adapt_refs if r.user == user]
        if not mine:
            raise ValueError(f"user {user}: no session to adapt on (test-time adaptation reads that user's "
                             "unlabelled sessions of the adaptation part, and the split lists none)")
        adapted = copy.deepcopy(model)
        info = adapt_to_user(adapted, data_root, mine, adapt_seconds, window_seconds=window_seconds,
                             batch_windows=batch_windows, bids_metadata=bids_metadata)
        print0(f"[eval] user {user}: normalisation adapted on {info['seconds']:.1f} s of unlabelled EMG "
               f"({len(mine)} sessions available)")
        for e in session_emissions(adapted, data_root, [r for r in refs if r.user == user],
                                   bids_metadata=bids_metadata, **kw):
            yield {**e, "adaptation": info}


def adaptation_window(cfg: TrainConfig) -> tuple[float, int]:
    """Adaptation windows like the model's training windows: ``(seconds, windows per batch)`` (at most 32)."""
    seconds = cfg.data.window.window_samples / float(cfg.model.features.input_sample_rate_hz)
    return seconds, max(1, min(32, int(cfg.data.batch_size)))


def split_emissions(checkpoint: "str | Path", data_root: "str | Path", split_file: "str | Path", part: str, *,
                    which: str = "auto", device: str = "auto", users: list[str] | None = None,
                    chunk_seconds: float = 60.0, context_seconds: float = 4.0,
                    bf16: bool = False, bids_metadata: "str | Path | None" = None,
                    adapt_seconds: float = 0.0, adapt_part: str = "train") -> list[dict[str, Any]]:
    """Whole-session emissions of every session of ``part`` of a split (computed once, decoded many ways).

    Args:
        checkpoint: the checkpoint (file or folder).
        data_root, split_file: the sessions and the split naming them.
        part: ``train``, ``val`` or ``test``.
        which: weights (see :func:`load_model`).
        device: where to run the model.
        users: only these users' sessions (None: all).
        bids_metadata: the ``metadata.csv`` a BIDS ``data_root`` was made from, when it has none.
        adapt_seconds: unsupervised test-time adaptation: per user, a copy of the model has its
            normalisation re-estimated on the first ``adapt_seconds`` of that user's sessions of
            ``adapt_part`` (EMG only, no labels; :mod:`emgscale.models.adapt`); 0: none.
        adapt_part: the part of the split whose sessions adaptation reads (``train``: a held-out
            user's training sessions).

    Returns:
        One dict per session: ``{"session", "user", "log_probs" (T', C), "target", "adaptation"}``
        (grouped by user when adapting).

    Raises:
        ValueError: adaptation for a user with no session in ``adapt_part``.
    """
    model, cfg = load_model(checkpoint, which=which, device=device)
    dev = next(model.parameters()).device
    split = load_split(split_file)
    refs = [r for r in split[part] if users is None or r.user in set(users)]
    window_s, batch = adaptation_window(cfg)
    return list(adapted_emissions(model, data_root, refs, split[adapt_part] if adapt_seconds > 0 else [],
                                  adapt_seconds, window_seconds=window_s, batch_windows=batch,
                                  bids_metadata=bids_metadata,
                                  sample_rate_hz=cfg.model.features.input_sample_rate_hz,
                                  chunk_seconds=chunk_seconds, context_seconds=context_seconds, device=dev,
                                  bf16=bf16, desc=f"emissions {Path(split_file).stem}/{part}"))
