"""Tests of the training loop: config handling, learning on a tiny corpus, exact kill-and-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from emgscale.models.checkpoint import load_checkpoint
from emgscale.run_folder import LAST
from emgscale.eval import load_model
from emgscale.config import ConfigError, from_dict, shipped_configs
from emgscale.train import TrainConfig, load_train_config, lr_lambda, train
from emgscale.train.__main__ import main

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.arch=tds", "model.frontend.mlp_features=[32]", "model.tds.block_channels=[4,4]",
              "model.tds.kernel_width=8"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus (4 users x 6 sessions of ~30 s)."""
    from emgscale.synth import SynthConfig, generate_corpus

    out = tmp_path_factory.mktemp("synth")
    generate_corpus(SynthConfig(out=str(out), users=4, sessions_per_user=6, minutes=0.5, seed=3))
    return out


def _overrides(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.data_root={corpus}", f"data.split={corpus / 'splits' / 'single_user.yaml'}",
            f"run.out_dir={out}", "data.batch_size=4", "run.tensorboard=false", "run.threads=1", *TINY_MODEL, *extra]


def test_unknown_config_key_is_an_error(tmp_path):
    """An unknown key in a YAML file or an override raises ConfigError naming the key and the file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1e-3\n  learning_rate: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'optim\.learning_rate'"):
        load_train_config([str(bad)], [])
    with pytest.raises(ConfigError, match="'run.max_step'"):
        load_train_config([], ["run.max_step=3"])
    with pytest.raises(ConfigError, match="expected an int"):
        load_train_config([], ["run.max_steps=three"])
    assert main(["run.nope=1"]) == 2


def test_config_round_trips_through_dict():
    """to_dict/from_dict is lossless (what checkpoints store and Ray hands to workers)."""
    from emgscale.config import to_dict

    cfg = load_train_config([], ["optim.lr=0.01", "model.arch=conformer", "swad.mode=swad"])
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_every_top_level_config_parses():
    """Every YAML directly under configs/ and configs/real/ is a valid TrainConfig override."""
    files = sorted(shipped_configs().glob("*.yaml")) + sorted((shipped_configs() / "real").glob("*.yaml"))
    assert files
    for f in files:
        load_train_config([str(f)], [])


def test_lr_schedule_warmup_then_cosine():
    """The schedule rises linearly over warm-up, peaks at 1 and decays to the floor at the end."""
    vals = [lr_lambda(s, 10, 100, 0.01) for s in range(101)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(vals[10:], vals[11:]))
    assert vals[100] == pytest.approx(0.01)


def test_tiny_run_learns(corpus, tmp_path):
    """A short run drives the training loss down and greedy val CER below 100% (blank-only output scores 100%)."""
    cfg = load_train_config([], _overrides(corpus, tmp_path / "run", "run.max_epochs=8", "run.steps_per_epoch=8",
                                           "optim.lr=3e-3", "optim.warmup_epochs=1", "model.augment.time_masks=0"))
    res = train(cfg)
    rows = [yaml.safe_load(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert losses[-1] < 0.7 * losses[0]
    assert res.best_val_score < 1.0
    model, cfg2 = load_model(res.best_checkpoint)
    assert cfg2 == cfg and not model.training


def test_timings_are_a_breakdown_of_the_run(corpus, tmp_path):
    """A tiny run's timings hold every key, each finite and >= 0, the parts summing to at most total_s; timings.json holds them."""
    import json
    import math

    from emgscale.train.timings import TIMING_KEYS

    res = train(load_train_config([], _overrides(corpus, tmp_path / "run", "run.max_epochs=2", "run.steps_per_epoch=3",
                                                 "run.ckpt_every_steps=2")))
    t = res.timings
    assert set(t) == set(TIMING_KEYS) and all(math.isfinite(v) and v >= 0 for v in t.values())
    assert t["ray_start_s"] == 0 and t["step_s"] > 0 and t["pipeline_build_s"] > 0 and t["validation_s"] > 0
    assert t["checkpoint_s"] > 0 and sum(v for k, v in t.items() if k != "total_s") <= t["total_s"] == res.wall_s
    assert json.loads((tmp_path / "run" / "timings.json").read_text()) == t


def test_a_training_pipeline_is_built_once_per_epoch_however_small_the_data(corpus, tmp_path, monkeypatch):
    """Half a minute of data and a fixed epoch length: one training loader per epoch, not one per pass."""
    from emgscale.train import loop

    built = []
    real = loop.build_loader

    def counting(cfg, part, **kw):
        built.append((part, kw["train"], kw["epoch"]))
        return real(cfg, part, **kw)

    monkeypatch.setattr(loop, "build_loader", counting)
    tiny = ["data.max_minutes_per_user=0.2", "run.max_epochs=2", "run.steps_per_epoch=6"]  # ~3 windows: a pass a batch
    res = train(load_train_config([], _overrides(corpus, tmp_path / "run", *tiny)))
    assert res.steps == 12
    assert [b for b in built if b[:2] == ("train", True)] == [("train", True, 0), ("train", True, 1000)]


def test_a_resumed_run_on_tiny_data_continues_exactly(corpus, tmp_path):
    """Stopped mid-epoch on data smaller than a batch per pass and resumed, a run ends with the uninterrupted run's weights."""
    tiny = ["data.max_minutes_per_user=0.2", "run.max_epochs=2", "run.steps_per_epoch=5", "run.ckpt_every_steps=1"]
    ref = train(load_train_config([], _overrides(corpus, tmp_path / "ref", *tiny)))
    part = train(load_train_config([], _overrides(corpus, tmp_path / "cut", *tiny, "run.max_steps=7")))
    assert part.steps == 7
    done = train(load_train_config([], _overrides(corpus, tmp_path / "cut", *tiny)), resume=True)
    a, b = load_checkpoint(ref.last_checkpoint), load_checkpoint(done.last_checkpoint)
    assert a.step == b.step == 10
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k


def test_validation_steps_are_evenly_spaced_and_end_the_run():
    """run.val_times=N: N evenly spaced steps, the last the run's last; fewer on a shorter run; none for 0."""
    from emgscale.train.cadence import validation_steps

    assert validation_steps(3, 60) == {20, 40, 60}
    assert validation_steps(4, 2) == {1, 2}
    assert validation_steps(0, 60) == frozenset()


def test_val_times_validates_that_often_whatever_the_epoch_length(corpus, tmp_path):
    """run.val_times=2 over 4 epochs of 3 steps validates at steps 6 and 12 only; with eval_every_steps it is refused."""
    from emgscale.train import launch

    res = train(load_train_config([], _overrides(corpus, tmp_path / "run", "run.max_epochs=4", "run.steps_per_epoch=3",
                                                 "run.val_times=2")))
    assert [r["step"] for r in res.history] == [6, 12] and res.best_checkpoint
    with pytest.raises(ConfigError, match="run.val_times=2 and run.eval_every_steps=3"):
        launch(load_train_config([], _overrides(corpus, tmp_path / "bad", "run.val_times=2", "run.eval_every_steps=3")))


def test_finetune_loads_weights(corpus, tmp_path):
    """run.init_from starts from the given checkpoint's weights (a near-zero LR keeps them)."""
    a = train(load_train_config([], _overrides(corpus, tmp_path / "a", "run.max_epochs=1", "run.steps_per_epoch=2")))
    cfg = load_train_config([], _overrides(corpus, tmp_path / "b", "run.max_epochs=1", "run.steps_per_epoch=1",
                                           f"run.init_from={a.last_checkpoint}", "optim.lr=1e-12"))
    b = train(cfg)
    wa, wb = load_checkpoint(a.last_checkpoint).model, load_checkpoint(b.last_checkpoint).model
    params = [k for k in wa if not any(t in k for t in ("running_", "num_batches"))]  # BN stats move in train mode
    assert params and all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in params)


def test_sigkill_and_resume_equals_uninterrupted(corpus, tmp_path):
    """A run killed with SIGKILL and resumed ends with exactly the weights of a run never killed."""
    common = ["run.max_epochs=3", "run.steps_per_epoch=4", "run.ckpt_every_steps=2", "optim.warmup_epochs=1"]
    ref = train(load_train_config([], _overrides(corpus, tmp_path / "ref", *common)))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "emgscale.train", *_overrides(corpus, out, *common)]
    env = {**os.environ, "EMGSCALE_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoints" / LAST
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists() and load_checkpoint(ckpt).step >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt).step
    assert killed_at < 12
    assert main([*_overrides(corpus, out, *common), "--resume"]) == 0
    a, b = load_checkpoint(ref.last_checkpoint), load_checkpoint(ckpt)
    assert a.step == b.step == 12
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    assert a.best_val_score == b.best_val_score


@pytest.mark.slow
def test_small_recipe_leaves_the_ctc_plateau(tmp_path):
    """The `small` recipe (CNN+BiGRU-small, Adam 5e-3, keystroke-time aux loss, label-prior bias, 400 steps)
    takes a synthetic subject's val loss off the CTC plateau.

    On the plateau (blank everywhere) val loss sits at 3.45-3.55 nats per character. Two runs of the
    earlier 600-step recipe without the aux loss ended at 1.41 and 2.21: *when* the plateau ends varies
    from run to run, so the bound is on the loss, set below the plateau; with the aux loss and the prior
    the val loss was below 3.0 by step 75 (benchmarks/README.md), so 400 steps leave room (~7 min on 2 cores).
    """
    from emgscale.bench.budget import get_budget
    from emgscale.synth import SynthConfig, generate_corpus

    small = get_budget("small")
    root = tmp_path / "synth"
    generate_corpus(SynthConfig(out=str(root), **small.corpus))
    cfg = load_train_config([str(shipped_configs() / "models" / "cnn_bigru_small.yaml")], [
        *small.train, f"data.data_root={root}", f"data.split={root / 'splits' / 'single_user.yaml'}",
        f"run.out_dir={tmp_path / 'run'}", "run.tensorboard=false", "run.ckpt_every_steps=0"])
    res = train(cfg)
    assert res.steps == 400
    assert min(h["val_loss"] for h in res.history) < 3.0


def test_bf16_on_a_cpu_without_bf16_instructions_trains_in_fp32(monkeypatch):
    """run.bf16 on a CPU lacking avx512_bf16/amx_bf16 disables autocast (one line) instead of running 10-60x slower."""
    import torch

    from emgscale.train import loop

    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    assert loop._precision(True, torch.device("cpu")) == ({"device_type": "cpu", "enabled": False}, False)
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)
    assert loop._precision(True, torch.device("cpu"))[0]["dtype"] is torch.bfloat16
