"""Cheap fine-tunes: frontend-only and LoRA modes, merged checkpoints, layer-wise rates, the schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emgscale.config import ConfigError, to_dict
from emgscale.models import build_model
from emgscale.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from emgscale.models.lora import add_lora, has_lora, merge_lora, merged_state_dict
from emgscale.train import load_train_config, train
from emgscale.train.config import check_train_config
from emgscale.train.finetune import (frontend_parameters, load_plain_weights, param_groups, plain_state_dict,
                                     prepare_finetune, trainable_count)
from emgscale.train.finetune_config import FinetuneConfig, finetune_schedule, finetune_steps

TINY = {"tds": ["model.arch=tds", "model.frontend.mlp_features=[32]", "model.tds.block_channels=[4,4]",
                "model.tds.kernel_width=8"],
        "cnn_gru": ["model.arch=cnn_rnn", "model.frontend.mlp_features=[16]", "model.cnn_rnn.conv_channels=[8]",
                    "model.cnn_rnn.kernel_size=3", "model.cnn_rnn.strides=[2]", "model.cnn_rnn.hidden_size=8",
                    "model.cnn_rnn.dropout=0"]}


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_train_config([], TINY[arch]).model).eval()


def _emg(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4000, 2, 16, generator=g) * 20.0, torch.tensor([4000, 3000])


def _randomise_adapters(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)


@pytest.mark.parametrize("arch", ["tds", "cnn_gru"])
def test_lora_starts_as_the_base_model(arch):
    """Adding adapters leaves the model's output unchanged (B starts at zero) and freezes the base weights."""
    model = _model(arch)
    x, n = _emg()
    before = model(x, n)[0]
    adapted = add_lora(model, "encoder", rank=2, alpha=4.0)
    assert adapted and has_lora(model)
    assert torch.equal(model(x, n)[0], before)
    assert not any(p.requires_grad for n_, p in model.named_parameters() if n_.endswith(".original"))


@pytest.mark.parametrize("arch", ["tds", "cnn_gru"])
def test_merged_weights_load_into_the_plain_model_and_give_its_output(arch):
    """The merged state dict (what checkpoints store) loads into a plain model that outputs what the adapted one did."""
    model = _model(arch)
    add_lora(model, "encoder", rank=2, alpha=4.0)
    _randomise_adapters(model)
    x, n = _emg(1)
    adapted_out = model(x, n)[0]
    plain = _model(arch)
    assert not torch.allclose(plain(x, n)[0], adapted_out, atol=1e-4)  # the adapters changed something
    sd = merged_state_dict(model)
    assert set(sd) == set(plain.state_dict())
    plain.load_state_dict(sd)
    assert torch.allclose(plain(x, n)[0], adapted_out, atol=1e-5)
    assert torch.allclose(merge_lora(model)(x, n)[0], adapted_out, atol=1e-5) and not has_lora(model)


def test_plain_weights_load_back_into_an_adapted_model():
    """A resumed LoRA run loads merged weights as its base: the adapted model then equals the plain one."""
    src = _model("cnn_gru")
    add_lora(src, "encoder", rank=2, alpha=4.0)
    _randomise_adapters(src)
    weights = plain_state_dict(src)
    dst = _model("cnn_gru")
    add_lora(dst, "encoder", rank=2, alpha=4.0)
    load_plain_weights(dst, weights, "x.pt")
    x, n = _emg(2)
    assert torch.allclose(dst(x, n)[0], src(x, n)[0], atol=1e-5)
    with pytest.raises(ValueError, match="x.pt"):
        load_plain_weights(dst, {k: v for k, v in weights.items() if not k.startswith("head.")}, "x.pt")


@pytest.mark.parametrize("arch", ["tds", "cnn_gru"])
def test_trainable_parameters_per_mode(arch):
    """full trains all; frontend the norms, front end and head; lora the head and rank x (in + out) per weight."""
    full = _model(arch)
    total = sum(p.numel() for p in full.parameters())
    prepare_finetune(full, FinetuneConfig(mode="full"), 1e-3, True)
    assert trainable_count(full) == total

    front = _model(arch)
    prepare_finetune(front, FinetuneConfig(mode="frontend"), 1e-3, True)
    named = dict(front.named_parameters())
    expect = sum(p.numel() for n, p in named.items() if n.startswith(("frontend.", "head.", "featurizer.norm."))
                 or "norm" in n or ".post." in n)  # LayerNorms: tds layer_norm, cnn_rnn post.*
    assert trainable_count(front) == expect < total
    assert not any(named[n].requires_grad for n in named if n.startswith("encoder.") and n.endswith(("conv.weight",
                                                                                                  "conv2d.weight")))

    lora = _model(arch)
    weights = {n: p.shape for n, p in lora.named_parameters()}
    head = sum(p.numel() for n, p in lora.named_parameters() if n.startswith("head."))
    adapted = add_lora(_model(arch), "encoder", rank=3, alpha=3.0)
    adapters = sum(3 * (weights[n][0] + torch.Size(weights[n][1:]).numel()) for n in adapted)
    prepare_finetune(lora, FinetuneConfig(mode="lora", lora_rank=3, lora_alpha=3.0), 1e-3, True)
    assert trainable_count(lora) == head + adapters


def test_frontend_parameters_include_an_encoders_declared_input_layer():
    """An encoder's ``finetune_frontend`` names sub-modules that mode=frontend trains as front end."""
    model = _model("tds")
    before = frontend_parameters(model)
    model.encoder.finetune_frontend = ("tds_conv_blocks.0",)
    after = frontend_parameters(model)
    assert after - before == {"encoder.tds_conv_blocks.0.conv2d.weight", "encoder.tds_conv_blocks.0.conv2d.bias"}


def test_layer_decay_gives_lower_rates_to_earlier_blocks():
    """With layer_decay < 1 each block trains at decay x the rate of the block above it; the head at optim.lr."""
    model = _model("tds")
    groups = param_groups(model, 1e-2, 0.5)[::-1]  # bottom first
    blocks = [g["block"] for g in groups]
    assert blocks[0] == "featurizer" and blocks[1] == "frontend" and blocks[-1] == "head"
    assert "encoder.tds_conv_blocks.0" in blocks and "encoder.tds_conv_blocks.3" in blocks
    rates = [g["lr"] for g in groups]
    assert rates[-1] == pytest.approx(1e-2)
    assert all(a == pytest.approx(0.5 * b) for a, b in zip(rates, rates[1:]))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(param_groups(model, 1e-2, 1.0)) == 1


def test_finetune_modes_need_init_from(tmp_path):
    """finetune.mode other than full (or layer_decay < 1) without run.init_from is one ConfigError line."""
    from emgscale.train.__main__ import main

    base = [f"data.data_root={tmp_path}", f"data.split={tmp_path / 's.yaml'}", f"run.out_dir={tmp_path / 'r'}"]
    (tmp_path / "s.yaml").write_text("user: x\n")
    for bad in ("finetune.mode=lora", "finetune.layer_decay=0.5"):
        with pytest.raises(ConfigError, match="run.init_from"):
            check_train_config(load_train_config([], [*base, bad]))
        assert main([*base, bad]) == 2
    with pytest.raises(ConfigError, match="finetune.mode"):
        check_train_config(load_train_config([], [*base, "finetune.mode=adapters"]))
    with pytest.raises(ConfigError, match="swad.mode"):
        check_train_config(load_train_config([], [*base, "finetune.mode=lora", "swad.mode=swad",
                                                  f"run.init_from={tmp_path / 's.yaml'}"]))


def test_schedule_grows_with_minutes_and_gives_the_cheap_modes_a_higher_rate():
    """Steps grow as the square root of the user's minutes above 2 minutes and never fall below the budget's
    steps under it; frontend and lora peak above full."""
    steps = [finetune_steps(m, 60) for m in (0.5, 1, 2, 5)]
    assert steps == sorted(steps) and steps[:3] == [60, 60, 60] and steps[3] == 95
    assert steps[-1] < 60 * 5 / 2  # sub-linear: fewer passes over more data
    full, cheap = finetune_schedule(1, "full", 60), finetune_schedule(1, "frontend", 60)

    def value(overrides, key):
        return float(next(o.split("=")[1] for o in overrides if o.startswith(key + "=")))

    assert value(cheap, "optim.lr") > value(full, "optim.lr")
    assert value(full, "run.max_epochs") * value(full, "run.steps_per_epoch") >= finetune_steps(1, 60)
    assert "finetune.mode=frontend" in cheap and "swad.mode=off" in finetune_schedule(1, "lora", 60)
    assert not any(o.startswith("run.") for o in finetune_schedule(1, "full", None))  # epoch budgets keep epochs
    with pytest.raises(ValueError, match="mode"):
        finetune_schedule(1, "adapters", 60)


def _init_checkpoint(tmp_path: Path) -> Path:
    cfg = load_train_config([], TINY["tds"])
    torch.manual_seed(1)
    model = build_model(cfg.model)
    return save_checkpoint(tmp_path / "init.pt", Checkpoint(model=model.state_dict(), config=to_dict(cfg)))


def _finetune_overrides(corpus, out: Path, init: Path, *extra: str) -> list[str]:
    return [f"data.data_root={corpus.root}", f"data.split={corpus.split_path}", f"run.out_dir={out}",
            f"run.init_from={init}", *TINY["tds"], "data.batch_size=2", "data.window.window_samples=2000",
            "data.window.pad_left_samples=200", "data.window.pad_right_samples=0", "run.steps_per_epoch=3",
            "run.val_max_batches=1", "run.tensorboard=false", "run.threads=1", "optim.lr=1e-2",
            "optim.warmup_epochs=0", *extra]


@pytest.mark.parametrize("mode", ["frontend", "lora"])
def test_frozen_weights_do_not_move_and_the_checkpoint_is_plain(tiny_corpus, tmp_path, mode):
    """Training in a cheap mode leaves frozen weights unchanged, moves the trained ones, and writes a checkpoint
    that eval's plain model loads."""
    from emgscale.eval import load_model

    init = _init_checkpoint(tmp_path)
    cfg = load_train_config([], _finetune_overrides(tiny_corpus, tmp_path / "run", init, "run.max_epochs=1",
                                                    f"finetune.mode={mode}", "finetune.lora_rank=2"))
    res = train(check_train_config(cfg))
    before, after = load_checkpoint(init).model, load_checkpoint(res.last_checkpoint).model
    assert set(before) == set(after)
    moved = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])
             and "running_" not in k}
    assert "head.weight" in moved
    if mode == "frontend":
        assert "frontend.mlps.0.mlp.0.weight" in moved
        assert not any(k.startswith("encoder.") and "layer_norm" not in k for k in moved)
    else:
        assert "encoder.tds_conv_blocks.1.fc_block.0.weight" in moved  # the merged adapter moved it
        assert not any(k.startswith(("frontend.", "featurizer.")) for k in moved)
        assert not any(k.startswith("encoder.") and "layer_norm" in k for k in moved)
    model, _ = load_model(res.last_checkpoint)
    assert not has_lora(model)


def test_a_lora_run_resumes_from_its_merged_checkpoint(tiny_corpus, tmp_path):
    """--resume of a LoRA fine-tune loads its plain checkpoint as the base and trains on to the new end."""
    init = _init_checkpoint(tmp_path)
    common = ["finetune.mode=lora", "finetune.layer_decay=0.5"]
    first = train(load_train_config([], _finetune_overrides(tiny_corpus, tmp_path / "run", init, "run.max_epochs=1",
                                                            *common)))
    a = load_checkpoint(first.last_checkpoint)  # the resumed run writes the same file
    again = train(load_train_config([], _finetune_overrides(tiny_corpus, tmp_path / "run", init, "run.max_epochs=2",
                                                            *common)), resume=True)
    assert (first.steps, again.steps) == (3, 6)
    b = load_checkpoint(again.last_checkpoint)
    assert set(a.model) == set(b.model) and not any("lora" in k for k in b.model)
    assert not torch.equal(a.model["encoder.tds_conv_blocks.1.fc_block.0.weight"],
                           b.model["encoder.tds_conv_blocks.1.fc_block.0.weight"])
