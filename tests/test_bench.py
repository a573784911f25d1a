"""Each benchmark runs end to end on a tiny synthetic corpus with the tiny budget, sharing one cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from emgscale.bench.__main__ import main
from emgscale.bench.report import aggregate, markdown_table


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One results folder (and cache) for every benchmark of this module."""
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(autouse=True)
def bench_cache(out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every benchmark of this module shares one default cache (``$EMGSCALE_CACHE`` = ``<out>/cache``)."""
    monkeypatch.setenv("EMGSCALE_CACHE", str(out / "cache"))
    return out / "cache"


def _check(out: Path, name: str, min_variants: int) -> dict:
    res = json.loads((out / name / "results.json").read_text())
    table = (out / name / "table.md").read_text()
    assert res["benchmark"] == name and res["budget"] == "tiny" and res["wall_s"] > 0 and res["hardware"]
    for t in res["tables"].values():
        assert len(t["aggregate"]) >= min_variants
        for png in t["plots"]:
            assert (out / name / png).stat().st_size > 1000
        for row in t["aggregate"]:  # every row has val and test, but the seen-user row (val sessions only)
            assert "val_greedy_mean" in row and ("test_greedy_mean" in row or row["variant"].startswith("seen users"))
            assert "val_greedy_rendered_cer_mean" in row and "val_greedy_insertion_rate_std" in row
    assert "±" in table
    return res


def test_aggregate_is_mean_and_population_std():
    """Table cells are mean ± population std over users (the paper's Table 3)."""
    rows = [{"variant": "a", "user": u, "part": "test", "decoder": "greedy", "cer": c} for u, c in (("1", 0.2), ("2", 0.4))]
    agg = aggregate(rows)
    assert agg[0]["test_greedy_mean"] == pytest.approx(0.3) and agg[0]["test_greedy_std"] == pytest.approx(0.1)
    assert "30.00 ± 10.00" in markdown_table(agg, "t")


def test_aggregate_carries_rates_and_rendered_cer():
    """The rates and rendered CER of the rows are aggregated like the CER (mean, population std over users)."""
    rows = [{"variant": "a", "user": u, "part": "val", "decoder": "lm", "cer": c, "insertion_rate": i,
             "deletion_rate": c - i, "substitution_rate": 0.0, "rendered_cer": r}
            for u, c, i, r in (("1", 0.2, 0.1, 0.1), ("2", 0.4, 0.1, 0.3))]
    agg = aggregate(rows + [{"variant": "b", "user": "1", "part": "val", "decoder": "lm", "cer": 0.5}])  # older row
    assert agg[0]["val_lm_rendered_cer_mean"] == pytest.approx(0.2) and agg[0]["val_lm_rendered_cer_std"] == pytest.approx(0.1)
    assert agg[0]["val_lm_deletion_rate_mean"] == pytest.approx(0.2) and agg[0]["val_lm_insertion_rate_std"] == 0.0
    assert agg[1]["val_lm_mean"] == 0.5 and "val_lm_rendered_cer_mean" not in agg[1]


@pytest.mark.slow  # ~70 s: the demo's two suites end to end on tiny settings
def test_zero_shot_and_personalized_demo(out):
    """`bench demo` (the README's main job) writes zero-shot (with the seen-user row) and personalized tables."""
    assert main(["demo", "--budget", "tiny", "--out", str(out)]) == 0
    z = _check(out, "zero_shot", 2)
    variants = [r["variant"] for r in z["tables"]["zero_shot"]["aggregate"]]
    assert variants[:3] == ["seen users, new sessions (best val)", "final checkpoint", "best val checkpoint"]
    assert not any(v.startswith("causal") for v in variants)  # the demo leaves the causal model out
    p = _check(out, "personalized", 3)
    assert [r["variant"] for r in p["tables"]["personalized"]["aggregate"]] == [
        "generic (zero-shot)", "personalized, random init", "personalized, fine-tuned generic, full"]


@pytest.mark.slow  # ~45 s: a second generic model (the causal one) trained and evaluated
def test_zero_shot_has_a_causal_generic_model_row(out):
    """`bench zero_shot` (not the demo) adds the causal generic model (causal_arch) beside the offline one."""
    assert main(["zero_shot", "--budget", "tiny", "--out", str(out)]) == 0
    z = _check(out, "zero_shot", 4)
    assert "causal cnn_gru_causal (best val)" in [r["variant"] for r in z["tables"]["zero_shot"]["aggregate"]]


def test_single_user(out):
    """The single-user benchmark trains one model per listed architecture."""
    assert main(["single_user", "--budget", "tiny", "--out", str(out)]) == 0
    _check(out, "single_user", 2)


def test_few_shot(out):
    """Few-shot fine-tuning reports 0 min plus each listed amount in each listed mode (tiny: LoRA, whose merged
    checkpoint the evaluation loads as a plain model), with a CER-vs-minutes plot."""
    assert main(["few_shot", "--budget", "tiny", "--out", str(out)]) == 0
    res = _check(out, "few_shot", 2)
    assert res["tables"]["few_shot"]["plots"] == ["cer_vs_minutes.png"]
    assert [r["variant"] for r in res["tables"]["few_shot"]["aggregate"]] == ["0 min", "0.25 min, lora"]
    runs = [yaml.safe_load(p.read_text()) for p in (out / "cache" / "runs").glob("*/config.yaml")]
    assert any(r["finetune"]["mode"] == "lora" and r["run"]["init_from"] for r in runs)


def test_finetune_axis_and_budget_steps(tmp_path):
    """A definition's finetune axis is a list (every mode at every amount) or a mapping mode -> amounts;
    unknown modes and amounts outside ``minutes`` are refused; the budget's fine-tune steps are read from it."""
    from types import SimpleNamespace

    from emgscale.bench.budget import get_budget
    from emgscale.bench.suites import budget_finetune_steps, finetune_modes, finetune_overrides

    assert finetune_modes({}) == {"full": [0.0]}
    assert finetune_modes({"finetune": ["full", "lora"]}, [0.5, 1.0]) == {"full": [0.5, 1.0], "lora": [0.5, 1.0]}
    assert finetune_modes({"finetune": {"full": None, "frontend": [0.5]}}, [0.5, 2.0]) == {
        "full": [0.5, 2.0], "frontend": [0.5]}
    with pytest.raises(ValueError, match="adapters"):
        finetune_modes({"finetune": ["adapters"]})
    with pytest.raises(ValueError, match="not in minutes"):
        finetune_modes({"finetune": {"frontend": [3]}}, [0.5])
    steps = {b: budget_finetune_steps(SimpleNamespace(budget=get_budget(b))) for b in ("tiny", "small", "paper")}
    assert steps == {"tiny": 2, "small": 60, "paper": None}
    small = SimpleNamespace(budget=get_budget("small"))
    got = finetune_overrides(small, {"finetune_overrides": ["optim.lr=5e-3"]}, 0.5, "frontend")
    assert "finetune.mode=frontend" in got and got[-1] == "optim.lr=5e-3"  # the definition's come last: they win


@pytest.mark.slow
def test_sweep(out):
    """The sweep writes one table and plot per axis (channels, rate, minutes, architecture, preprocessing)."""
    assert main(["sweep", "--budget", "tiny", "--out", str(out)]) == 0
    res = _check(out, "sweep", 2)
    assert set(res["tables"]) == {"channels", "sample_rate_hz", "minutes", "arch", "features", "norm", "augment",
                                  "window_s"}


@pytest.mark.slow  # re-runs zero_shot after the slow zero_shot tests above filled the cache
def test_rerun_reuses_cache(out):
    """A second run with the same settings, into another results folder, trains nothing new: the default
    cache is shared across ``--out`` (same config hash -> same checkpoints)."""
    runs = sorted((out / "cache" / "runs").iterdir())
    before = {p.name: (p / "DONE.json").stat().st_mtime for p in runs}
    assert main(["zero_shot", "--budget", "tiny", "--out", str(out / "elsewhere")]) == 0
    assert (out / "elsewhere" / "zero_shot" / "results.json").is_file() and not (out / "elsewhere" / "cache").exists()
    after = {p.name: (p / "DONE.json").stat().st_mtime for p in sorted((out / "cache" / "runs").iterdir())}
    assert after == before


def test_parallel_runs_equal_sequential_runs(tiny_corpus, tmp_path):
    """Runs trained side by side (jobs=2) end with the weights of the same runs one by one; a run listed twice trains once."""
    import torch

    from emgscale.bench.training import ensure_trained_many
    from emgscale.models.checkpoint import load_checkpoint
    from emgscale.run_folder import LAST

    base = [f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}", "data.batch_size=2",
            "run.max_epochs=1", "run.steps_per_epoch=2", "run.tensorboard=false", "run.ckpt_every_steps=0",
            "run.threads=1", "model.arch=tds", "model.frontend.mlp_features=[16]", "model.tds.block_channels=[4]",
            "model.tds.kernel_width=4"]
    runs = [([], [*base, "run.seed=1"]), ([], [*base, "run.seed=2"]), ([], [*base, "run.seed=1"])]
    seq = ensure_trained_many(tmp_path / "a", runs[:2], jobs=1)
    par = ensure_trained_many(tmp_path / "b", runs, jobs=2)
    assert par[0] == par[2] and par[0] != par[1] and [p.name for p in par[:2]] == [p.name for p in seq]
    assert len(list((tmp_path / "b" / "runs").iterdir())) == 2
    for a, b in zip(seq, par):
        wa, wb = (load_checkpoint(p / "checkpoints" / LAST).model for p in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert (b / "train.log").stat().st_size > 0


def test_preprocessing_sweep_axes_share_the_baseline_at_defaults():
    """Default points of the features / norm / augment / window axes add no override (they share the
    baseline's run); other points set the field they name."""
    from emgscale.bench.suites import AUGMENT_VARIANTS, SWEEP_AXES
    from emgscale.train import load_train_config

    for axis, default in (("features", "log_spectrogram"), ("norm", "batch"), ("augment", "default"), ("window_s", 4)):
        assert SWEEP_AXES[axis][1](default) == []
    cfg = load_train_config([], [*SWEEP_AXES["features"][1]("log_bands"), *SWEEP_AXES["norm"][1]("rolling"),
                                 *SWEEP_AXES["augment"][1]("none"), *SWEEP_AXES["window_s"][1](2)])
    assert (cfg.model.features.kind, cfg.model.features.norm) == ("log_bands", "rolling")
    assert cfg.model.augment.band_rotation == cfg.model.augment.temporal_jitter_samples == 0
    assert cfg.data.window.window_samples == 4000 and cfg.data.shards is None
    assert set(AUGMENT_VARIANTS) >= {"none", "no_band_rotation", "no_jitter", "no_specaugment"}


def test_bench_workers_flag_names_its_new_name(tmp_path, capsys):
    """`bench --workers N` (shard writers, easily taken for training workers) is refused in one line naming
    --shard-workers and run.workers, before any work."""
    assert main(["zero_shot", "--budget", "tiny", "--out", str(tmp_path), "--workers", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--shard-workers 4" in err and "run.workers=4" in err
    assert not any(tmp_path.iterdir())


def test_series_from_draws_a_line_per_named_group_of_rows():
    """With x given as {line: {variant: x}}, each line gets its greedy and +LM series of its own rows only."""
    from emgscale.bench.report import series_from

    agg = [{"variant": v, "test_greedy_mean": g, "test_greedy_std": 0.0, "test_lm_mean": g / 2, "test_lm_std": 0.0}
           for v, g in (("0 min", 0.5), ("1 min, full", 0.3), ("1 min, lora", 0.4), ("2 min, full", 0.2))]
    s = series_from(agg, {"full": {"0 min": 0.0, "1 min, full": 1.0, "2 min, full": 2.0},
                          "lora": {"0 min": 0.0, "1 min, lora": 1.0}})
    assert s["full, greedy"] == ([0.0, 1.0, 2.0], [0.5, 0.3, 0.2], [0.0, 0.0, 0.0])
    assert s["lora, +LM"] == ([0.0, 1.0], [0.25, 0.2], [0.0, 0.0]) and len(s) == 4
