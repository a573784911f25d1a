"""Tests of SWAD / SWA weight averaging (emgscale.swad): which steps are averaged, the mean itself,
resume, BatchNorm recomputation, post-hoc re-averaging, and the averaged model in a real training
checkpoint (segment files on disk: test_swad_store.py)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from emgscale.swad import SWADConfig, WeightAverager, loss_valley

from _swad_fixtures import (STEPS_PER_SEGMENT, VALLEY, VALLEY_CFG, VALLEY_SEGMENTS, _assert_params_equal, _Batch,
                            _drive, _mean, _segment_steps, _set, _Tiny, _weights)


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


def test_start_step_keeps_a_plateau_out_of_the_valley():
    """With swad.start_step no segment starting before it can start the valley (a flat CTC plateau
    otherwise starts it at step 0 and every later loss meets its threshold); earlier segments are out."""
    from emgscale.swad.rule import first_candidate

    # the demo's generic model: plateau (3.66, 3.72), then learning, then a flatter stretch
    losses = [3.66, 3.72, 2.76, 2.86, 3.02, 2.72, 2.25, 2.01, 2.05, 2.11, 1.88, 1.75, 1.98, 1.77, 1.68, 1.65]
    segments = [{"start_step": 50 * k, "end_step": 50 * (k + 1)} for k in range(len(losses))]
    plain = loss_valley(losses, 2, 3, 0.3, final=True)
    assert (plain.start, plain.end) == (0, len(losses))  # the plateau fooled the rule
    first = first_candidate(segments, 400)
    assert first == 8
    late = loss_valley(losses, 2, 3, 0.3, final=True, first=first)
    assert late.start == 8 and late.end == len(losses)  # 2.05 < 2.11 starts it; threshold 2.665
    assert [late.status(k) for k in range(8)] == ["out"] * 8
    running = loss_valley(losses[:9], 2, 3, 0.3, first=first)
    assert running.start is None and running.status(7) == "out" and running.status(8) == "pending"


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
    resumed.load_state_dict(torch.load(buf, weights_only=True))
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

    from emgscale.models.checkpoint import load_checkpoint
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


# ---------------------------------------------------------------------- after training
def _fake_run(tiny_corpus, tmp_path: Path, losses: list[float], steps_per_segment: int = 2):
    """A run folder as the loop leaves it (config, last.pt, swad/), from random weights of the tiny model."""
    from _ray_fixtures import tiny_config

    from emgscale.models.checkpoint import Checkpoint, save_checkpoint
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
    from emgscale.swad.posthoc import write_average
    from emgscale.tune import averaged_val_metrics
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


def test_bench_swad_memory_mode_peaks_at_one_float64_copy(tmp_path):
    """bench_swad.py --memory: with streamed segments, validations and finalize stay near the steady float64 sum."""
    import importlib.util
    import subprocess

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_swad", root / "benchmarks" / "bench_swad.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if subprocess.run(["git", "-C", str(root), "cat-file", "-e", "6fb2a6b:emgscale/swad/store.py"]).returncode:
        pytest.skip("the compared git revision is not in this checkout")
    result = bench.memory(["tds"], "6fb2a6b", tmp_path)  # 5.3 M parameters: a float64 copy is 42 MB
    before, after = result["rows"]
    assert after["averaged"] and before["averaged"] and (tmp_path / "bench_swad_memory.json").is_file()
    assert after["final_bytes"] < before["final_bytes"] and after["validation_bytes"] <= before["validation_bytes"]
