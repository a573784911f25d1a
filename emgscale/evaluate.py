"""Whole-session evaluation as in the paper: CER per session, per user and aggregate.

``python -m emgscale.eval CHECKPOINT --split test|val --decoder greedy|beam [--lm PATH]``

Each session of the split is run through the model whole, in overlapping chunks when it is long
(:func:`infer_session`): chunk ``k`` owns the output frames of its ``chunk_seconds`` and sees
``context_seconds`` more input on each side (chunks start at multiples of the model's
``alignment_samples``), so for a model whose receptive field fits in the context (TDS, CNN, local or
chunked attention) the stitched output equals the unchunked one; models with unbounded context
(bidirectional RNNs, global attention) see at least that much context. Labels are every keystroke
between the session's first and last sample, as the paper's test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from emgscale.checkpoint import load_model
from emgscale.common import atomic_write_json, git_commit, hardware, print0, progress
from emgscale.data.errors import DataError
from emgscale.data.session import EMGSession
from emgscale.data.splits import load_split
from emgscale.decode import DecoderConfig, build_decoder
from emgscale.metrics import CERMeter


@dataclass
class EvalConfig:
    """What to evaluate and how.

    Attributes:
        checkpoint: checkpoint file (or a run's ``checkpoints/`` folder).
        split: ``test`` or ``val`` part of the split file.
        split_file, data_root: default to the ones in the checkpoint's training config.
        weights: ``model``, ``averaged`` (SWAD/SWA) or ``auto`` (averaged when the checkpoint has it).
        decoder: greedy or beam (with a KenLM LM) settings.
        chunk_seconds, context_seconds: chunked inference geometry (see module docstring).
        users: evaluate only these users' sessions (None: all).
        out: write the JSON result here.
    """

    checkpoint: str = ""
    split: str = "test"
    split_file: str | None = None
    data_root: str | None = None
    weights: str = "auto"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    chunk_seconds: float = 60.0
    context_seconds: float = 4.0
    users: list[str] | None = None
    device: str = "auto"
    bf16: bool = False
    out: str | None = None


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

    def run(a: int, b: int) -> np.ndarray:
        chunk = emg.emg(a, b) if isinstance(emg, EMGSession) else emg[a:b]
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
                      desc: str = "inference") -> Iterator[dict[str, Any]]:
    """Whole-session log-probs and targets of the sessions ``refs`` (:class:`SessionRef`) under ``data_root``.

    Yields ``{"session", "user", "log_probs" (T', C) float32, "target" (labels)}``, one session at a time.
    """
    for ref in progress(refs, total=len(refs), desc=desc, unit="session"):
        path = Path(data_root) / f"{ref.session}.hdf5"
        if not path.is_file():
            raise DataError(path, "session named by the split is missing")
        with EMGSession(path) as sess:
            lp = infer_session(model, sess, sample_rate_hz=sample_rate_hz, chunk_seconds=chunk_seconds,
                               context_seconds=context_seconds, device=device, bf16=bf16)
            target = sess.ground_truth(sess.start_time, sess.end_time).labels.tolist()
            yield {"session": ref.session, "user": sess.user, "log_probs": lp, "target": target}


def score(emissions: Iterable[dict[str, Any]], decoder: Any) -> CERMeter:
    """Decode every session's emissions and accumulate the paper's CER."""
    meter = CERMeter()
    for e in emissions:
        meter.update(decoder.decode(e["log_probs"]), e["target"], session=e["session"], user=e["user"])
    return meter


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on whole sessions; returns (and optionally writes) the JSON result."""
    from emgscale.config import to_dict

    t0 = time.monotonic()
    which = cfg.weights
    if which == "auto":
        from emgscale.checkpoint import load_checkpoint

        which = "averaged" if load_checkpoint(cfg.checkpoint).get("averaged_model") is not None else "model"
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    model, train_cfg = load_model(cfg.checkpoint, which=which)
    model.to(device)
    split_file = cfg.split_file or train_cfg.data.split
    data_root = cfg.data_root or train_cfg.data.data_root
    if not split_file or not data_root:
        raise ValueError("no split file / data root: pass split_file and data_root (the checkpoint names none)")
    split = load_split(split_file)
    refs = [r for r in split[cfg.split] if cfg.users is None or r.user in set(cfg.users)]
    decoder = build_decoder(cfg.decoder)
    meter = score(session_emissions(model, data_root, refs, sample_rate_hz=train_cfg.model.features.input_sample_rate_hz,
                                    chunk_seconds=cfg.chunk_seconds, context_seconds=cfg.context_seconds,
                                    device=device, bf16=cfg.bf16, desc=f"eval {cfg.split}"), decoder)
    result = {
        "checkpoint": str(cfg.checkpoint), "weights": which, "split_file": str(split_file), "part": cfg.split,
        "decoder": to_dict(cfg.decoder), "config": to_dict(cfg), "train_config": to_dict(train_cfg),
        "cer": meter.cer, "summary": meter.summary(), "per_session": meter.per_session(),
        "per_user": meter.per_user(), "git_commit": git_commit(), "hardware": hardware(),
        "wall_s": time.monotonic() - t0,
    }
    if cfg.out:
        atomic_write_json(cfg.out, result)
    print0(f"[eval] {split.name}/{cfg.split}: CER {meter.cer:.2%} over {len(refs)} sessions ({cfg.decoder.kind})")
    return result
