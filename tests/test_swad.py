"""Tests of SWAD / SWA weight averaging (emgscale.swad): which steps are averaged, the mean itself,
resume, BatchNorm recomputation, segment files on disk (one per segment, excluded ones deleted, small
checkpoints, exact resume mid-segment), post-hoc re-averaging, and the averaged model in a real
training checkpoint."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from emgscale.features.norm import MaskedBatchNorm
from emgscale.swad import SWADConfig, WeightAverager, loss_valley

STEPS_PER_SEGMENT = 2  # validation every 2 optimiser steps


class _Tiny(torch.nn.Module):
    """Linear + a batch norm over the channel axis; ``forward(x (B, T, C), lengths) -> (y, lengths)``.

    ``norm="torch"`` uses ``nn.BatchNorm1d``; ``norm="masked"`` the models' own :class:`MaskedBatchNorm`
    (the reference's spectrogram norm), which is what real models carry.
    """

    def __init__(self, channels: int = 3, norm: str = "torch") -> None:
        super().__init__()
        self.norm = norm
        self.lin = torch.nn.Linear(channels, channels)
        self.bn = torch.nn.BatchNorm1d(channels) if norm == "torch" else MaskedBatchNorm(channels)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.lin(x)  # (B, T, C)
        if self.norm == "torch":
            return self.bn(h.transpose(1, 2)).transpose(1, 2), lengths
        B, T, C = h.shape
        return self.bn(h.view(B, T, 1, C, 1), lengths).view(B, T, C), lengths  # (B, T, bands=1, C, K=1)


@dataclass
class _Batch:
    emg: torch.Tensor
    emg_lengths: torch.Tensor

    def to(self, device: torch.device) -> "_Batch":
        return _Batch(self.emg.to(device), self.emg_lengths.to(device))


def _weights(n_steps: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A random parameter set per step (what the optimiser would have produced)."""
    g = torch.Generator().manual_seed(seed)
    model = _Tiny()
    return [{k: torch.randn(p.shape, generator=g) for k, p in model.named_parameters()} for _ in range(n_steps)]


def _set(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])


def _drive(avg: WeightAverager, model: torch.nn.Module, weights: list[dict[str, torch.Tensor]],
           losses: list[float], start: int = 0, stop: int | None = None) -> None:
    """Play steps ``[start, stop)`` as the loop does: after_step each step, after_validation every segment."""
    stop = len(weights) if stop is None else stop
    for step in range(start, stop):
        _set(model, weights[step])
        avg.after_step(model, step)
        if (step + 1) % STEPS_PER_SEGMENT == 0:
            avg.after_validation(model, losses[(step + 1) // STEPS_PER_SEGMENT - 1], step + 1)


def _mean(weights: list[dict[str, torch.Tensor]], steps: list[int]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([weights[s][k] for s in steps]).mean(0) for k in weights[0]}


def _assert_params_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


# A validation-loss curve with one valley: falls, flattens around 2.0-2.15, then rises for good.
# With n_converge=3, n_tolerance=3, r=0.1 the rule starts at segment 3 (the oldest of [2.0, 2.1, 2.05]
# is their minimum; threshold 2.2) and keeps segments 3..7: each has a loss <= 2.2 among itself and
# the next two; segment 8 does not (min(3, 3.5, 4) > 2.2), so averaging stops there.
VALLEY = [5.0, 4.0, 3.0, 2.0, 2.1, 2.05, 2.15, 2.1, 3.0, 3.5, 4.0, 4.5, 5.0]
VALLEY_SEGMENTS = range(3, 8)
VALLEY_CFG = SWADConfig(mode="swad", n_converge=3, n_tolerance=3, tolerance_ratio=0.1)


def _segment_steps(segments: range) -> list[int]:
    return [s * STEPS_PER_SEGMENT + i for s in segments for i in range(STEPS_PER_SEGMENT)]


def test_swad_selects_the_loss_valley_and_averages_its_steps():
    """SWAD averages exactly the steps of the loss valley, and the average is their plain mean."""
    weights = _weights(len(VALLEY) * STEPS_PER_SEGMENT)
    avg, model = WeightAverager(VALLEY_CFG), _Tiny()
    _drive(avg, model, weights, VALLEY)
    expected = _segment_steps(VALLEY_SEGMENTS)
    assert avg.dead  # the valley ended before training did
    assert avg.included_steps == expected
    _assert_params_equal(avg.averaged_params(), _mean(weights, expected))


def test_swad_keeps_pending_valley_segments_at_the_end_of_training():
    """Training that ends inside the valley adds the segments still waiting for look-ahead at finalize."""
    losses = VALLEY[:8]  # ends at 2.1, still under the threshold 2.2
    weights = _weights(len(losses) * STEPS_PER_SEGMENT, seed=1)
    avg, model = WeightAverager(VALLEY_CFG), _Tiny()
    _drive(avg, model, weights, losses)
    assert avg.included_steps == _segment_steps(range(3, 6))  # 6, 7 still wait for their look-ahead
    avg.finalize(model, lambda: [], torch.device("cpu"))
    expected = _segment_steps(range(3, 8))
    assert avg.included_steps == expected
    final = avg.averaged_state_dict()
    _assert_params_equal({k: final[k] for k in weights[0]}, _mean(weights, expected))


def test_swad_averages_nothing_while_the_loss_keeps_falling():
    """A monotonically falling loss never converges: no average (training's final weights are used)."""
    losses = [10.0 - i for i in range(8)]
    weights = _weights(len(losses) * STEPS_PER_SEGMENT)
    avg, model = WeightAverager(VALLEY_CFG), _Tiny()
    _drive(avg, model, weights, losses)
    assert not avg.has_average() and avg.averaged_params() is None and avg.included_steps == []


def test_swa_averages_the_fixed_window():
    """Plain SWA averages every step in [swa_start_step, swa_end_step), whatever the validation loss."""
    weights = _weights(20)
    avg, model = WeightAverager(SWADConfig(mode="swa", swa_start_step=5, swa_end_step=12)), _Tiny()
    _drive(avg, model, weights, [1.0 + i for i in range(10)])
    assert avg.included_steps == list(range(5, 12))
    _assert_params_equal(avg.averaged_params(), _mean(weights, list(range(5, 12))))


@pytest.mark.parametrize("cfg,cut", [(VALLEY_CFG, 9), (VALLEY_CFG, 14), (SWADConfig(mode="swa", swa_start_step=3), 7)])
def test_resumed_averager_equals_uninterrupted(cfg: SWADConfig, cut: int):
    """state_dict -> torch.save/load -> a new averager -> continue gives the uninterrupted average."""
    weights = _weights(len(VALLEY) * STEPS_PER_SEGMENT, seed=2)
    whole, model = WeightAverager(cfg), _Tiny()
    _drive(whole, model, weights, VALLEY)

    first = WeightAverager(cfg)
    _drive(first, model, weights, VALLEY, stop=cut)  # cut 9: mid-segment; cut 14: valley open, segments pending
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = WeightAverager(cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    _drive(resumed, _Tiny(), weights, VALLEY, start=cut)

    assert resumed.included_steps == whole.included_steps and whole.included_steps
    _assert_params_equal(resumed.averaged_params(), whole.averaged_params())


@pytest.mark.parametrize("norm", ["torch", "masked"])
def test_finalize_recomputes_batchnorm_statistics(norm: str):
    """finalize gives the average fresh BN running stats: the cumulative mean of bn_batches batch stats."""
    torch.manual_seed(0)
    weights = _weights(12, seed=3)
    cfg = SWADConfig(mode="swa", swa_start_step=4, bn_batches=3)
    avg, model = WeightAverager(cfg), _Tiny(norm=norm)
    _drive(avg, model, weights, [1.0] * 6)
    model.train()
    model(torch.randn(4, 7, 3) * 5 + 3, torch.full((4,), 7))  # give the trained model stats of its own
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [_Batch(torch.randn(2, 5, 3) * (i + 1) + i, torch.full((2,), 5)) for i in range(5)]

    avg.finalize(model, lambda: iter(batches), torch.device("cpu"))
    final = avg.averaged_state_dict()

    for k, v in model.state_dict().items():  # the template is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    params = avg.averaged_params()
    means, variances = [], []
    for b in batches[: cfg.bn_batches]:  # only bn_batches batches count
        h = torch.nn.functional.linear(b.emg, params["lin.weight"], params["lin.bias"]).reshape(-1, 3)
        means.append(h.mean(0))
        variances.append(h.var(0, unbiased=True))
    torch.testing.assert_close(final["bn.running_mean"], torch.stack(means).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final["bn.running_var"], torch.stack(variances).mean(0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(final["bn.running_mean"], model.bn.running_mean, atol=1e-3)
    assert not torch.allclose(final["bn.running_var"], model.bn.running_var, atol=1e-3)
    assert int(final["bn.num_batches_tracked"]) == cfg.bn_batches
    _assert_params_equal({k: final[k] for k in params}, params)


def test_train_stores_the_swad_average_and_load_model_reads_it(tiny_corpus, tmp_path):
    """train() with swad.mode=swad writes averaged_model (fresh BN stats) into last.pt; load_model loads it."""
    from _ray_fixtures import tiny_config

    from emgscale.checkpoint import load_checkpoint
    from emgscale.eval import load_model
    from emgscale.train import train

    # n_converge 1 and a loose tolerance: the valley starts at the first validation and never ends,
    # so every step is averaged. features.norm=batch gives the model BatchNorm statistics to recompute.
    cfg = tiny_config(tiny_corpus.root, tiny_corpus.split_path, tmp_path / "run", "run.max_steps=6",
                      "run.eval_every_steps=1", "swad.mode=swad", "swad.n_converge=1", "swad.n_tolerance=1",
                      "swad.tolerance_ratio=100", "swad.bn_batches=2", "model.features.norm=batch")
    result = train(cfg)
    ckpt = load_checkpoint(result.last_checkpoint)
    segments = ckpt.averager["segments"]
    assert [t for s in segments for t in range(s["start_step"], s["end_step"])] == list(range(6))
    averaged, trained = ckpt.averaged_model, ckpt.model
    assert averaged is not None and averaged.keys() == trained.keys()
    norm_stats = [k for k in trained if k.endswith("running_mean")]
    assert norm_stats
    for k in norm_stats:  # recomputed for the averaged weights, not copied from the trained model
        assert not torch.allclose(averaged[k], trained[k])
    assert max(float((averaged[k] - trained[k]).abs().max()) for k in trained if k.endswith("weight")) > 1e-4

    model, loaded_cfg = load_model(result.last_checkpoint, which="averaged")
    assert loaded_cfg.swad.mode == "swad" and not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, averaged[k], rtol=0, atol=0)
    plain, _ = load_model(result.last_checkpoint)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(v, trained[k], rtol=0, atol=0)

    from emgscale.swad.__main__ import main  # re-averaging the finished run afterwards gives the same model

    assert main(["average", str(tmp_path / "run"), "--out", str(tmp_path / "again.pt")]) == 0
    again = load_checkpoint(tmp_path / "again.pt").averaged_model
    for k, v in averaged.items():
        torch.testing.assert_close(again[k], v, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- segment files on disk
def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _tensors_in(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, dict):
        return sum(_tensors_in(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensors_in(v) for v in obj)
    return 0


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.pt"))


def test_loss_valley_decisions_are_final():
    """A segment the rule puts in (or out) on a prefix of the losses stays in (out) on every longer prefix."""
    g = torch.Generator().manual_seed(5)
    for _ in range(30):
        losses = (3.0 + torch.randn(25, generator=g).cumsum(0) * 0.2).tolist()
        for n in range(1, len(losses)):
            now, later = (loss_valley(losses[:m], 3, 4, 0.05) for m in (n, n + 1))
            for k in range(n):
                if now.status(k) != "pending":
                    assert later.status(k) == now.status(k)


def test_disk_store_keeps_only_the_valley_and_checkpoints_carry_no_weights(tmp_path):
    """With a store folder: one mean file per valley segment, excluded ones deleted, index.json, no tensor in the state."""
    weights = _weights(len(VALLEY) * STEPS_PER_SEGMENT, seed=4)
    on_disk, in_memory, model = WeightAverager(VALLEY_CFG, tmp_path / "swad"), WeightAverager(VALLEY_CFG), _Tiny()
    _drive(on_disk, model, weights, VALLEY)
    _drive(in_memory, model, weights, VALLEY)
    assert _files(tmp_path / "swad") == [f"seg-{k:05d}.pt" for k in VALLEY_SEGMENTS]
    index = json.loads((tmp_path / "swad" / "index.json").read_text())
    n = len(index["segments"])  # recording stops once the valley has ended
    assert VALLEY_SEGMENTS[-1] < n < len(VALLEY)
    assert [s["status"] for s in index["segments"]] == ["in" if k in VALLEY_SEGMENTS else "out" for k in range(n)]
    assert [s["val_loss"] for s in index["segments"]] == VALLEY[:n]
    assert _tensors_in(on_disk.state_dict()) == 0 and _tensors_in(in_memory.state_dict()) > 0
    _assert_params_equal(on_disk.averaged_params(), _mean(weights, _segment_steps(VALLEY_SEGMENTS)))
    torch.testing.assert_close(on_disk.averaged_params(), in_memory.averaged_params(), rtol=0, atol=0)


def test_keep_segments_keeps_every_file_and_the_same_average(tmp_path):
    """swad.keep_segments keeps all segment files (also after the valley) and does not change the average."""
    weights = _weights(len(VALLEY) * STEPS_PER_SEGMENT, seed=4)
    kept = WeightAverager(replace(VALLEY_CFG, keep_segments=True), tmp_path / "kept")
    pruned = WeightAverager(VALLEY_CFG, tmp_path / "pruned")
    for avg in (kept, pruned):
        _drive(avg, _Tiny(), weights, VALLEY)
    assert _files(tmp_path / "kept") == [f"seg-{k:05d}.pt" for k in range(len(VALLEY))]
    assert kept.included_steps == pruned.included_steps
    torch.testing.assert_close(kept.averaged_params(), pruned.averaged_params(), rtol=0, atol=0)


@pytest.mark.parametrize("cut", [9, 13, 15])
def test_killed_mid_segment_and_resumed_equals_uninterrupted(tmp_path, cut: int):
    """Checkpoint mid-segment, run on (files written), die, resume from the checkpoint: the same average, bit for bit."""
    weights = _weights(len(VALLEY) * STEPS_PER_SEGMENT, seed=6)
    whole = WeightAverager(VALLEY_CFG, tmp_path / "whole")
    _drive(whole, _Tiny(), weights, VALLEY)

    store = tmp_path / "killed"
    first = WeightAverager(VALLEY_CFG, store)
    _drive(first, _Tiny(), weights, VALLEY, stop=cut)
    checkpoint = _roundtrip(first.state_dict())  # what last.pt holds
    assert any(n.startswith("open-") for n in _files(store))
    _drive(first, _Tiny(), weights, VALLEY, start=cut, stop=cut + 3)  # progress the kill loses
    del first

    resumed = WeightAverager(VALLEY_CFG, store)
    resumed.load_state_dict(checkpoint)
    _drive(resumed, _Tiny(), weights, VALLEY, start=cut)
    resumed.state_dict()
    resumed.state_dict()  # two checkpoints after the segment closed: its open-sum file is gone
    assert resumed.included_steps == whole.included_steps
    assert _files(store) == _files(tmp_path / "whole")
    torch.testing.assert_close(resumed.averaged_params(), whole.averaged_params(), rtol=0, atol=0)


def test_open_sum_files_are_bounded(tmp_path):
    """Mid-segment checkpoints keep at most the two newest open-sum files."""
    cfg = SWADConfig(mode="swa")
    avg, model = WeightAverager(cfg, tmp_path), _Tiny()
    for step, params in enumerate(_weights(6)):
        _set(model, params)
        avg.after_step(model, step)
        avg.state_dict()
        assert 1 <= sum(n.startswith("open-") for n in _files(tmp_path)) <= 2


def test_non_main_rank_keeps_no_weights(tmp_path):
    """A rank other than 0 writes nothing and averages nothing, yet follows the same valley."""
    weights = _weights(len(VALLEY) * STEPS_PER_SEGMENT)
    main, other = WeightAverager(VALLEY_CFG, tmp_path / "a", is_main=True), WeightAverager(VALLEY_CFG, tmp_path / "b", is_main=False)
    for avg in (main, other):
        _drive(avg, _Tiny(), weights, VALLEY)
    assert not (tmp_path / "b").exists() and other._sum is None and other.averaged_params() is None
    assert other.included_steps == main.included_steps and other.has_average() == main.has_average()


def test_bf16_segments_are_smaller_and_close(tmp_path):
    """swad.segment_dtype=bfloat16 stores half the bytes per segment; the average is within bf16 rounding."""
    weights = _weights(len(VALLEY) * STEPS_PER_SEGMENT, seed=7)
    f32 = WeightAverager(VALLEY_CFG, tmp_path / "f32")
    b16 = WeightAverager(replace(VALLEY_CFG, segment_dtype="bfloat16"), tmp_path / "b16")
    for avg in (f32, b16):
        _drive(avg, _Tiny(), weights, VALLEY)
    seg = f"seg-{VALLEY_SEGMENTS[0]:05d}.pt"
    loaded = {d: torch.load(tmp_path / d / seg, weights_only=True)["params"] for d in ("b16", "f32")}
    assert all(v.dtype == torch.bfloat16 for v in loaded["b16"].values())
    assert 2 * sum(v.nbytes for v in loaded["b16"].values()) == sum(v.nbytes for v in loaded["f32"].values())
    torch.testing.assert_close(b16.averaged_params(), f32.averaged_params(), rtol=1e-2, atol=1e-2)


def test_old_averager_state_is_refused_with_a_clear_error():
    """The older in-memory averager's state is a ValueError naming 'averager' (ignored with swad.mode=off)."""
    old = {"segment": {}, "pending": [], "average": {}, "converged": False, "dead": False}
    with pytest.raises(ValueError, match="'averager'"):
        WeightAverager(VALLEY_CFG).load_state_dict(old)
    WeightAverager(SWADConfig(mode="off")).load_state_dict(old)  # the way out the error names


def test_bad_settings_are_rejected():
    """An unknown mode or segment dtype is a ValueError naming the field."""
    with pytest.raises(ValueError, match="swad.mode"):
        WeightAverager(SWADConfig(mode="ema"))
    with pytest.raises(ValueError, match="swad.segment_dtype"):
        WeightAverager(SWADConfig(mode="swad", segment_dtype="float16"))


# ---------------------------------------------------------------------- after training
def _fake_run(tiny_corpus, tmp_path: Path, losses: list[float], steps_per_segment: int = 2):
    """A run folder as the loop leaves it (config, last.pt, swad/), from random weights of the tiny model."""
    from _ray_fixtures import tiny_config

    from emgscale.checkpoint import Checkpoint, save_checkpoint
    from emgscale.config import to_dict
    from emgscale.models import build_model

    run = tmp_path / "run"
    cfg = tiny_config(tiny_corpus.root, tiny_corpus.split_path, run, "swad.mode=swad", "swad.bn_batches=2",
                      "swad.keep_segments=true", "model.features.norm=batch")
    model = build_model(cfg.model)
    g = torch.Generator().manual_seed(8)
    weights = [{k: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for k, p in model.named_parameters()}
               for _ in range(len(losses) * steps_per_segment)]
    avg = WeightAverager(replace(cfg.swad, n_converge=3, n_tolerance=3, tolerance_ratio=0.1), run / "swad")
    for step, params in enumerate(weights):
        _set(model, params)
        avg.after_step(model, step)
        if (step + 1) % steps_per_segment == 0:
            avg.after_validation(model, losses[(step + 1) // steps_per_segment - 1], step + 1)
    cfg.swad = avg.cfg
    save_checkpoint(run / "checkpoints" / "last.pt", Checkpoint(model=model.state_dict(), config=to_dict(cfg),
                                                              averager=avg.state_dict()))
    return run, weights, avg


def test_swad_average_cli_reaverages_a_step_range(tiny_corpus, tmp_path, capsys):
    """`python -m emgscale.swad average RUN --from --to` writes the mean of exactly those steps, readable by load_model."""
    from emgscale.eval import load_model
    from emgscale.swad.__main__ import main

    run, weights, avg = _fake_run(tiny_corpus, tmp_path, VALLEY)
    out = tmp_path / "range.pt"
    assert main(["average", str(run), "--from", "4", "--to", "12", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    model, _ = load_model(out, which="averaged")
    got = dict(model.named_parameters())
    _assert_params_equal({k: got[k].detach() for k in weights[0]}, _mean(weights, list(range(4, 12))))

    assert main(["average", str(run)]) == 0  # the valley, as the averager chose it
    default = run / "swad" / f"average-{VALLEY_SEGMENTS[0] * 2}-{VALLEY_SEGMENTS[-1] * 2 + 2}.pt"
    model, _ = load_model(default, which="model")
    got = dict(model.named_parameters())
    _assert_params_equal({k: got[k].detach() for k in weights[0]}, avg.averaged_params())

    assert main(["average", str(run), "--from", "30", "--to", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--to" in err


def test_averaged_val_metrics_rank_a_run_by_its_average(tiny_corpus, tmp_path):
    """averaged_val_metrics are the validation metrics of the written average, not of the trained model."""
    from emgscale.eval import load_model
    from emgscale.config import from_dict
    from emgscale.loader import DataConfig, build_loader
    from emgscale.swad.posthoc import averaged_val_metrics, write_average
    from emgscale.train.validation import validate as evaluate_ctc

    run, _, avg = _fake_run(tiny_corpus, tmp_path, VALLEY)
    m = averaged_val_metrics(run, max_batches=0)
    assert m["steps"] == len(avg.included_steps) and m["val_samples"] > 0
    path, built = write_average(run)
    val = build_loader(from_dict(DataConfig, built.config["data"]), "val", train=False, seed=0, rank=0, world_size=1)
    cpu = torch.device("cpu")
    averaged = evaluate_ctc(load_model(path, which="averaged")[0], val, cpu)
    trained = evaluate_ctc(load_model(run / "checkpoints" / "last.pt")[0], val, cpu)
    assert m["val_loss"] == pytest.approx(averaged["val_loss"]) and m["val_cer"] == averaged["val_cer"]
    assert m["val_loss"] != pytest.approx(trained["val_loss"])


def test_bench_swad_before_and_after_average_the_same_weights(tmp_path):
    """benchmarks/bench_swad.py runs both implementations: same steps, equal averages, no weights in the new checkpoint."""
    import importlib.util
    import subprocess

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_swad", root / "benchmarks" / "bench_swad.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if subprocess.run(["git", "-C", str(root), "cat-file", "-e", "09f07ee:emgscale/swad.py"]).returncode:
        pytest.skip("the old implementation's git revision is not in this checkout")
    result = bench.run(["tds_tiny"], 2, "09f07ee", tmp_path)
    check = result["checks"]["tds_tiny"]
    assert check["same_steps"] and check["averaged_steps"] > 0 and check["same_keys"]
    assert check["max_abs_diff"] <= 1e-6 * max(1.0, check["max_abs_weight"])
    before, after = result["rows"]
    assert after["ckpt_averager_max_bytes"] < after["model_state_bytes"] < before["ckpt_averager_max_bytes"]
    assert after["store_final_bytes"] > 0 and (tmp_path / "bench_swad.json").is_file()


class _Killed(RuntimeError):
    pass


def test_loop_with_a_store_folder_killed_mid_segment_resumes_to_the_same_average(tiny_corpus, tmp_path, monkeypatch):
    """The loop with store_dir=<out_dir>/swad, killed after a mid-segment checkpoint and resumed, ends as uninterrupted."""
    from _ray_fixtures import tiny_config

    import emgscale.train.loop as train_mod
    from emgscale.checkpoint import load_checkpoint

    kill_at: dict[str, int | None] = {"step": None}

    class Integrated(WeightAverager):  # what the loop constructs (store_dir=<out_dir>/swad), killable
        def __init__(self, cfg: SWADConfig, store_dir: Path, is_main: bool) -> None:
            assert store_dir == Path(run_dir["path"]) / "swad"
            super().__init__(cfg, store_dir=store_dir, is_main=is_main)

        def after_step(self, model: torch.nn.Module, step: int) -> None:
            if step == kill_at["step"]:
                raise _Killed(step)
            super().after_step(model, step)

    monkeypatch.setattr(train_mod, "WeightAverager", Integrated)
    run_dir: dict[str, Path] = {}
    extra = ("run.max_steps=12", "run.eval_every_steps=3", "run.ckpt_every_steps=2", "swad.mode=swad",
             "swad.n_converge=1", "swad.n_tolerance=1", "swad.tolerance_ratio=100", "swad.bn_batches=2",
             "model.features.norm=batch")
    finals = {}
    for name, kill in (("whole", None), ("killed", 8)):  # dies right after the step-8 checkpoint
        run_dir["path"] = tmp_path / name
        cfg = tiny_config(tiny_corpus.root, tiny_corpus.split_path, tmp_path / name, *extra)
        kill_at["step"] = kill
        if kill is not None:
            with pytest.raises(_Killed):
                train_mod.train(cfg)
            ck = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
            assert ck.step == 8 and ck.averager["open"]["count"] == 2  # mid-segment: steps 6, 7
            assert (tmp_path / name / "swad" / ck.averager["open_file"]).is_file()
            kill_at["step"] = None
            train_mod.train(cfg, resume=True)
        else:
            train_mod.train(cfg)
        finals[name] = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
    whole, resumed = finals["whole"], finals["killed"]
    assert resumed.averager["segments"] == whole.averager["segments"]
    assert _tensors_in(whole.averager) == 0
    assert _files(tmp_path / "whole" / "swad") == _files(tmp_path / "killed" / "swad")
    for k, v in whole.averaged_model.items():
        torch.testing.assert_close(resumed.averaged_model[k], v, rtol=0, atol=0)
