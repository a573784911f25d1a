"""Tests of whole-session evaluation: chunked inference, the eval CLI, and the result JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emgscale.eval import infer_session
from emgscale.models import ModelConfig, build_model
from emgscale.config import from_dict


def _model(arch: str, **extra) -> torch.nn.Module:
    cfg = {"arch": arch, "frontend": {"mlp_features": [16]}}
    if arch == "tds":
        cfg["tds"] = {"block_channels": [4, 4], "kernel_width": 8}
    cfg.update(extra)
    torch.manual_seed(0)
    return build_model(from_dict(ModelConfig, cfg)).eval()


def test_chunked_equals_unchunked_for_finite_receptive_field():
    """For TDS (finite receptive field), stitched chunks equal whole-session inference."""
    model = _model("tds")
    emg = np.random.default_rng(0).normal(0, 20, size=(2000 * 13 + 37, 2, 16)).astype(np.float32)
    whole = infer_session(model, emg, chunk_seconds=0)
    chunked = infer_session(model, emg, chunk_seconds=2.0, context_seconds=1.0)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=1e-4)


def test_chunked_attention_model_matches():
    """A local-attention Transformer chunked with enough context matches its whole-session output."""
    model = _model("transformer")
    if getattr(model, "left_context_frames", None) is None:
        pytest.skip("this transformer config has unbounded context")
    emg = np.random.default_rng(1).normal(0, 20, size=(2000 * 9 + 5, 2, 16)).astype(np.float32)
    whole = infer_session(model, emg, chunk_seconds=0)
    span = max(model.left_context_frames, model.right_context_frames) * model.samples_per_frame / 2000.0
    chunked = infer_session(model, emg, chunk_seconds=2.0, context_seconds=span + 0.5)
    np.testing.assert_allclose(chunked, whole, atol=1e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for a few steps on a tiny synthetic corpus."""
    from emgscale.synth import SynthConfig, generate_corpus
    from emgscale.train import load_train_config, train

    root = tmp_path_factory.mktemp("evalcorpus")
    generate_corpus(SynthConfig(out=str(root / "data"), users=3, sessions_per_user=6, minutes=0.4, seed=5,
                                heldout_users=1, contact_artifact_prob=0.0))
    cfg = load_train_config([], [f"data.data_root={root / 'data'}", f"data.split={root / 'data/splits/single_user.yaml'}",
                                 f"run.out_dir={root / 'run'}", "data.batch_size=4", "run.max_epochs=1",
                                 "run.steps_per_epoch=3", "run.tensorboard=false", "model.frontend.mlp_features=[16]",
                                 "model.tds.block_channels=[4,4]", "model.tds.kernel_width=8"])
    res = train(cfg)
    return root, Path(res.last_checkpoint)


def test_eval_cli_writes_result(trained, tmp_path, capsys):
    """`python -m emgscale.eval CKPT --split test` scores whole sessions and writes the JSON with provenance."""
    from emgscale.eval.__main__ import main

    root, ckpt = trained
    out = tmp_path / "r.json"
    assert main([str(ckpt), "--split", "test", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["part"] == "test" and len(res["per_session"]) == 1
    s = next(iter(res["per_session"].values()))
    assert s["target_length"] > 0 and s["errors"] == s["insertions"] + s["deletions"] + s["substitutions"]
    assert res["cer"] == pytest.approx(s["errors"] / s["target_length"])
    assert 0.0 <= res["cer"] and res["wall_s"] > 0 and "git_commit" in res and res["train_config"]["run"]
    assert res["decoder"]["kind"] == "greedy"
    # beside the key CER: its three rates (adding up to it) and the CER of the rendered text, pooled
    sm = res["summary"]
    assert sm["insertion_rate"] + sm["deletion_rate"] + sm["substitution_rate"] == pytest.approx(res["cer"])
    assert res["rendered_cer"] == sm["rendered_cer"] == pytest.approx(sm["rendered_errors"] / sm["rendered_length"])
    assert {"insertion_rate", "rendered_cer"} <= set(s) and "target_rendered" in s
    printed = capsys.readouterr().out
    assert "rendered CER" in printed and "pooled" in printed and f"{100 * res['cer']:.2f}%" in printed


@pytest.mark.skipif(shutil.which("lmplz") is None and not (Path(__import__("sys").executable).parent / "lmplz").exists(),
                    reason="KenLM lmplz not built (scripts/build_kenlm.sh)")
def test_eval_with_beam_and_lm(trained, tmp_path):
    """Beam search with a character LM runs through the same evaluation path."""
    from emgscale.eval import EvalConfig, evaluate
    from emgscale.decode import DecoderConfig
    from emgscale.lm import build_lm

    root, ckpt = trained
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    lm = build_lm([text], tmp_path / "lm.bin", order=4)
    res = evaluate(EvalConfig(checkpoint=str(ckpt), split="val",
                              decoder=DecoderConfig(kind="beam", lm_path=str(lm), beam_size=8)))
    assert res["decoder"]["kind"] == "beam" and 0.0 <= res["cer"]
