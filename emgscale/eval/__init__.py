"""Whole-session evaluation as in the paper: CER per session, per user and aggregate.

``python -m emgscale.eval CHECKPOINT --split test|val --decoder greedy|beam [--lm PATH] [--adapt-seconds S]``

:func:`evaluate` loads a checkpoint (emgscale's, or an imported reference checkpoint), computes
whole-session emissions (:mod:`emgscale.eval.inference`, shared with the benchmarks), decodes them
and scores them with :class:`~emgscale.metrics.CERMeter`. The JSON result holds the CER (pooled over
the split, as the paper), the insertion / deletion / substitution rates, the CER of the rendered text
(``rendered_cer``: backspaces applied, shift folded in), per-user and per-session counts and, per session,
the decoded text next to the target; :func:`format_table` prints them per user. With ``adapt_seconds``
each user's sessions are decoded by a copy of the model whose normalisation was first re-estimated on
that user's unlabelled EMG (test-time adaptation, :mod:`emgscale.models.adapt`); ``adaptation`` in the
result says how much EMG each user's adaptation read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from emgscale.common import atomic_write_json, git_commit, hardware, print0
from emgscale.config import ConfigError, check_values, to_dict
from emgscale.data.charset import charset
from emgscale.data.splits import load_split
from emgscale.decode import DecoderConfig, build_decoder
from emgscale.models.checkpoint import load_checkpoint
from emgscale.eval.inference import (adaptation_window, adapted_emissions, infer_session, load_model, resolve_weights,
                                     session_emissions, split_emissions)
from emgscale.metrics import CERMeter


@dataclass
class EvalConfig:
    """What to evaluate and how.

    Attributes:
        checkpoint: checkpoint file (or a run's ``checkpoints/`` folder).
        split: ``test`` or ``val`` part of the split file.
        split_file, data_root: default to the ones in the checkpoint's training config (``data_root`` may
            be a BIDS copy).
        bids_metadata: the ``metadata.csv`` a BIDS ``data_root`` was made from, when it has none (default:
            the training config's ``data.bids_metadata``).
        weights: ``model``, ``averaged`` (SWAD/SWA) or ``auto`` (averaged when the checkpoint has it).
        decoder: greedy or beam (with a KenLM LM) settings.
        chunk_seconds, context_seconds: chunked inference geometry (see module docstring).
        users: evaluate only these users' sessions (None: all).
        adapt_seconds: unsupervised test-time adaptation: per user, the model's normalisation is
            re-estimated on the first ``adapt_seconds`` of that user's unlabelled EMG (sessions of
            ``adapt_part``; :mod:`emgscale.models.adapt`) before decoding; 0: none.
        adapt_part: the split part whose sessions adaptation reads (``train``: the user's training
            sessions, whose labels are never read).
        out: where the JSON result goes (default: ``eval-<split>-<part>-<decoder>.json`` beside the
            checkpoint), with per-session decoded text next to the target.
    """

    checkpoint: str = ""
    split: str = "test"
    split_file: str | None = None
    data_root: str | None = None
    bids_metadata: str | None = None
    weights: str = "auto"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    chunk_seconds: float = 60.0
    context_seconds: float = 4.0
    users: list[str] | None = None
    adapt_seconds: float = 0.0
    adapt_part: str = "train"
    device: str = "auto"
    bf16: bool = False
    out: str | None = None


def score(emissions: Iterable[dict[str, Any]], decoder: Any, texts: dict[str, dict[str, str]] | None = None) -> CERMeter:
    """Decode every session's emissions and accumulate the paper's CER.

    Args:
        emissions: dicts with ``session``, ``user``, ``log_probs`` (T', C) and ``target`` labels.
        decoder: a :class:`~emgscale.decode.Decoder`.
        texts: when given, ``texts[session] = {"decoded": ..., "target": ...}`` is filled in (keys as typed),
            with ``decoded_rendered`` / ``target_rendered`` (the text a user would see).
    """
    meter = CERMeter()
    cs = charset()
    for e in emissions:
        pred = decoder.decode(e["log_probs"])
        meter.update(pred, e["target"], session=e["session"], user=e["user"])
        if texts is not None:
            texts[e["session"]] = {"decoded": cs.labels_to_str(pred), "target": cs.labels_to_str(e["target"]),
                                   "decoded_rendered": cs.render(pred), "target_rendered": cs.render(e["target"])}
    return meter


def format_table(summary: dict[str, Any], per_user: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of CER, its insertion / deletion / substitution rates and the rendered CER (in %),
    one row per user and a pooled row.

    Args:
        summary: :meth:`CERMeter.summary`.
        per_user: :meth:`CERMeter.per_user`.
    """
    head = f"{'user':<16} {'keys':>7} {'CER':>8} {'ins':>7} {'del':>7} {'sub':>7} {'rendered CER':>13}"

    def row(name: str, d: dict[str, Any]) -> str:
        return (f"{name:<16} {d['target_length']:>7} {100 * d['cer']:>7.2f}% {100 * d['insertion_rate']:>6.2f}% "
                f"{100 * d['deletion_rate']:>6.2f}% {100 * d['substitution_rate']:>6.2f}% "
                f"{100 * d['rendered_cer']:>12.2f}%")

    lines = [head, "-" * len(head), *(row(str(u), d) for u, d in sorted(per_user.items(), key=lambda x: str(x[0])))]
    return "\n".join([*lines, "-" * len(head), row("pooled", summary)])


def default_out(cfg: EvalConfig, split_file: "str | Path") -> Path:
    """Where a result goes without ``out``: beside the checkpoint."""
    ckpt = Path(cfg.checkpoint)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    adapted = f"-adapt{cfg.adapt_seconds:g}s" if cfg.adapt_seconds > 0 else ""
    return folder / f"eval-{Path(split_file).stem}-{cfg.split}-{cfg.decoder.kind}{adapted}.json"


#: Ranges, choices and paths of :class:`EvalConfig` (other numbers: finite and >= 0).
EVAL_RULES = {"checkpoint": "path", "split": ("test", "val"), "split_file": "file", "data_root": "dir", "bids_metadata": "file",
              "weights": ("auto", "model", "averaged"), "chunk_seconds": ">0",
              "adapt_part": ("train", "val", "test"), "decoder.lm_path": "file",
              "decoder.beam_size": ">=1", "decoder.num_threads": ">=1", "decoder.lm_weight": "any",
              "decoder.insertion_bonus": "any", "decoder.beam_threshold": "any", "decoder.label_threshold": "any",
              "decoder.max_labels_per_frame": "any"}


def check_eval_config(cfg: EvalConfig) -> EvalConfig:
    """Check ``cfg`` before any work (ranges, choices, paths that must exist); returns it.

    Raises:
        ConfigError: ``<key>=<value>: <problem>`` naming the first bad field.
    """
    if not cfg.checkpoint:
        raise ConfigError("checkpoint is not set")
    check_values(cfg, EVAL_RULES)
    return cfg


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on whole sessions; writes the JSON result (see :class:`EvalConfig`) and returns it.

    Raises:
        ConfigError: a bad setting or a path that does not exist (:func:`check_eval_config`).
        ValueError: no split file / data root (neither given nor in the checkpoint's config).
    """
    check_eval_config(cfg)
    t0 = time.monotonic()
    which = resolve_weights(load_checkpoint(cfg.checkpoint), cfg.weights)
    model, train_cfg = load_model(cfg.checkpoint, which=which, device=cfg.device)
    split_file = cfg.split_file or train_cfg.data.split
    data_root = cfg.data_root or train_cfg.data.data_root
    bids_metadata = cfg.bids_metadata or train_cfg.data.bids_metadata
    if not split_file or not data_root:
        raise ValueError("no split file / data root: pass --split-file and --data-root (the checkpoint names none)")
    split = load_split(split_file)
    refs = [r for r in split[cfg.split] if cfg.users is None or r.user in set(cfg.users)]
    decoder = build_decoder(cfg.decoder)
    device = next(model.parameters()).device
    texts: dict[str, dict[str, str]] = {}
    window_s, batch = adaptation_window(train_cfg)
    adaptation: dict[str, Any] = {}

    def emissions() -> Iterable[dict[str, Any]]:
        for e in adapted_emissions(model, data_root, refs, split[cfg.adapt_part] if cfg.adapt_seconds > 0 else [],
                                   cfg.adapt_seconds, window_seconds=window_s, batch_windows=batch,
                                   bids_metadata=bids_metadata,
                                   sample_rate_hz=train_cfg.model.features.input_sample_rate_hz,
                                   chunk_seconds=cfg.chunk_seconds, context_seconds=cfg.context_seconds,
                                   device=device, bf16=cfg.bf16, desc=f"eval {cfg.split}"):
            if e["adaptation"] is not None:
                adaptation[e["user"]] = e["adaptation"]
            yield e

    meter = score(emissions(), decoder, texts)
    per_session = {s: {**v, **texts.get(s, {})} for s, v in meter.per_session().items()}
    out = Path(cfg.out) if cfg.out else default_out(cfg, split_file)
    result = {
        "checkpoint": str(cfg.checkpoint), "weights": which, "split_file": str(split_file), "part": cfg.split,
        "decoder": to_dict(cfg.decoder), "config": to_dict(cfg), "train_config": to_dict(train_cfg),
        "cer": meter.cer, "rendered_cer": meter.rendered_cer, "summary": meter.summary(), "per_session": per_session,
        "per_user": meter.per_user(),
        "adaptation": ({"seconds": cfg.adapt_seconds, "part": cfg.adapt_part, "per_user": adaptation}
                       if cfg.adapt_seconds > 0 else None),
        "git_commit": git_commit(), "hardware": hardware(),
        "wall_s": time.monotonic() - t0, "out": str(out),
    }
    atomic_write_json(out, result)
    print0(format_table(result["summary"], result["per_user"]))
    print0(f"[eval] {split.name}/{cfg.split}: CER {meter.cer:.2%} (rendered text {meter.rendered_cer:.2%}) over "
           f"{len(refs)} sessions ({cfg.decoder.kind}); result in {out}")
    return result


__all__ = ["EVAL_RULES", "EvalConfig", "adapted_emissions", "check_eval_config", "default_out", "evaluate", "format_table", "infer_session",
           "load_model", "score", "session_emissions", "split_emissions"]
