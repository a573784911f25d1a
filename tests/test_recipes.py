"""The recipes table: model costs (params, MFLOPs per EMG-s, look-ahead), recipe definitions, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emgscale.config import ConfigError, shipped_configs


def _model(name: str):
    from emgscale.train import load_train_config

    return load_train_config([shipped_configs() / "models" / f"{name}.yaml"], []).model


def test_model_cost_params_and_offline_lookahead():
    """model_cost counts the built model's parameters; a bidirectional model is offline (no look-ahead)."""
    from emgscale.models import build_model, count_parameters
    from emgscale.models.cost import model_cost

    cfg = _model("cnn_bigru_tiny")
    cost = model_cost(cfg)
    assert cost["params"] == count_parameters(build_model(cfg))
    assert cost["lookahead_ms"] is None and cost["mflops_per_s"] > 0


def test_model_cost_lookahead_is_the_streamers():
    """A causal model's look-ahead is what its Streamer reports (span_samples[1]), in ms."""
    import torch

    from emgscale.models import build_model
    from emgscale.models.cost import model_cost
    from emgscale.stream import Streamer

    cfg = _model("cnn_gru_causal_tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    expected = Streamer(model).lookahead_samples * 1e3 / model.input_sample_rate_hz
    assert model_cost(cfg)["lookahead_ms"] == pytest.approx(expected)


def test_model_cost_is_per_second_and_counts_s4d_recurrence():
    """MFLOPs per EMG-s barely move with the duration counted; S4D adds its recurrence's FLOPs to the counter's."""
    from emgscale.models import build_model
    from emgscale.models.cost import forward_flops, model_cost

    cfg = _model("cnn_gru_causal_tiny")
    a, b = model_cost(cfg, seconds=4.0)["mflops_per_s"], model_cost(cfg, seconds=8.0)["mflops_per_s"]
    assert a == pytest.approx(b, rel=0.05)
    s4d = build_model(_model("s4d_tiny"))
    samples = 8000
    frames = int(s4d.output_lengths(__import__("torch").tensor([samples]))[0])
    assert forward_flops(s4d, samples) > s4d.encoder.recurrent_flops(frames) > 0
    with pytest.raises(ValueError, match="seconds"):
        model_cost(cfg, seconds=0.0)


def test_shipped_recipes_parse_and_bad_ones_give_one_line():
    """Every shipped recipe parses for every budget; an unknown name, key or kind is a ConfigError naming it."""
    from emgscale.bench.recipes import KINDS, parse_recipes
    from emgscale.bench.runner import load_definition, shipped_definitions

    for budget in ("tiny", "small", "paper"):
        d = load_definition(shipped_definitions(), "zero_shot", budget)
        recipes = parse_recipes(d, list(d["recipes"]), budget)
        assert {r.kind for r in recipes} == set(KINDS)
    d = load_definition(shipped_definitions(), "zero_shot", "small")
    small = parse_recipes(d, ["splashnet"], "small")[0]  # budgets: replaces the recipe's settings
    assert small.config == "recipes/splashnet" and small.overrides == ["data.shards=null", "data.batch_size=4"]
    with pytest.raises(ConfigError, match="no recipe 'nope'"):
        parse_recipes(d, ["nope"], "tiny")
    with pytest.raises(ConfigError, match="recipes.x.kind"):
        parse_recipes({"recipes": {"x": {"kind": "magic"}}}, ["x"], "tiny")
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_recipes({"recipes": {"x": {"archh": "tds"}}}, ["x"], "tiny")


def test_missing_recipe_file_is_not_available_with_its_name(tmp_path):
    """A recipe whose config file is not there is 'not available' naming the file, not a crash."""
    from emgscale.bench.budget import get_budget
    from emgscale.bench.context import BenchContext
    from emgscale.bench.recipes import Recipe, RecipeUnavailable, recipe_files
    from emgscale.bench.steps import Corpus

    ctx = BenchContext(cache=tmp_path, budget=get_budget("tiny"), corpus=Corpus(tmp_path, tmp_path),
                       configs_dir=shipped_configs())
    with pytest.raises(RecipeUnavailable, match="not available: no .*recipes/absent.yaml"):
        recipe_files(ctx, Recipe(name="x", kind="train", config="recipes/absent"), "tds")
    assert recipe_files(ctx, Recipe(name="s", kind="train", arch="s4d"), "tds")[0].endswith("s4d_tiny.yaml")


def test_close_pairs_note_names_recipes_within_two_std():
    """Two recipes closer than two std (test CER, greedy) are named with the --seeds 3 command; far ones are not."""
    from emgscale.bench.recipes import close_pairs_note

    def rows(v, cers):
        return [{"variant": v, "user": str(i), "part": "test", "decoder": "greedy", "cer": c} for i, c in enumerate(cers)]

    names = ["alpha", "beta", "gamma"]
    note = close_pairs_note(rows("alpha", [0.5, 0.7]) + rows("beta", [0.55, 0.75]) + rows("gamma", [0.1, 0.1]), names, 1)
    assert "alpha / beta" in note and "--seeds 3" in note and "gamma" not in note
    assert close_pairs_note(rows("alpha", [0.5, 0.5]) + rows("gamma", [0.1, 0.1]), ["alpha", "gamma"], 1) == ""


@pytest.mark.parametrize("argv, message", [
    (["few_shot", "--recipes", "s4d"], "use it with zero_shot"),
    (["zero_shot", "--recipes", ","], "comma list"),
    (["zero_shot", "--seeds", "3"], "with --recipes"),
])
def test_recipes_flag_mistakes_are_one_line(argv, message, tmp_path, capsys):
    """--recipes off zero_shot, an empty list or --seeds without --recipes: exit 2 with one line."""
    from emgscale.bench.__main__ import main

    assert main([*argv, "--budget", "tiny", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.slow  # ~3-6 min on 2 shared cores: three generic models trained and evaluated at the tiny budget
def test_recipes_table_end_to_end_tiny(tmp_path):
    """`bench zero_shot --recipes ...` at tiny: every recipe kind has a row (scores, or 'not available' and why)."""
    from emgscale.bench.__main__ import main

    names = ["reference", "splashnet", "s4d", "student", "student_no_teacher", "adapt"]
    assert main(["zero_shot", "--budget", "tiny", "--out", str(tmp_path), "--recipes", ",".join(names)]) == 0
    res = json.loads((tmp_path / "zero_shot_recipes" / "results.json").read_text())
    table = res["tables"]["recipes"]
    md = (tmp_path / "zero_shot_recipes" / "table.md").read_text()
    for name in names:
        assert f"| {name} |" in md
        status = table["columns"][name]["status"]
        assert status == "ok" or status.startswith(("not available", "adapted on"))
    scored = {a["variant"]: a for a in table["aggregate"]}
    for name in ("reference", "s4d", "student_no_teacher"):  # on main's code, without any helper's merge
        assert "test_greedy_mean" in scored[name] and "val_lm_mean" in scored[name]
        cells = table["columns"][name]
        assert cells["users"] == "2" and cells["seeds"] == "1" and float(cells["train wall (min)"]) >= 0  # tiny: ~0.0 min
        assert cells["params"].endswith(" M") and float(cells["MFLOPs / EMG-s"]) > 0
    assert table["columns"]["student_no_teacher"]["look-ahead (ms)"] != "offline"
    assert (tmp_path / "zero_shot_recipes" / "recipes.png").stat().st_size > 1000
    assert not (tmp_path / "zero_shot").exists()  # the default zero_shot table is not touched


def test_students_distil_from_their_teachers_seed_and_adapt_evaluates_the_teacher(tmp_path, monkeypatch):
    """Seed i of a student trains with loss.distill_from= the teacher's seed-i best; adapt scores the teacher's
    runs with adapt_seconds; seeds beyond the first add run.seed; every named recipe gets its columns."""
    import emgscale.bench.recipes as rec
    import emgscale.models.cost
    from emgscale.bench.budget import get_budget
    from emgscale.bench.context import BenchContext
    from emgscale.bench.runner import load_definition, shipped_definitions
    from emgscale.bench.steps import Corpus
    from emgscale.run_folder import RunFolder

    splits = tmp_path / "splits"
    splits.mkdir()
    for name in ("generic", "user0", "user1"):
        (splits / f"{name}.yaml").write_text("")
    ctx = BenchContext(cache=tmp_path, budget=get_budget("tiny"), corpus=Corpus(tmp_path, splits),
                       configs_dir=shipped_configs())
    trained, evaluated = [], []

    def fake_train_runs(_ctx, specs):
        out = []
        for split, files, extra, init in specs:
            out.append(RunFolder(tmp_path / "runs" / str(len(trained))))
            trained.append((Path(files[0]).name, list(extra), out[-1]))
        return out

    def fake_eval_rows(_ctx, checkpoint, split, variant, emission_options=None, **kw):
        evaluated.append((variant, str(checkpoint), emission_options))
        return [{"variant": variant, "user": split.stem, "part": p, "decoder": "greedy", "cer": 0.5}
                for p in ("val", "test")]

    monkeypatch.setattr(rec, "train_runs", fake_train_runs)
    monkeypatch.setattr(rec, "eval_rows", fake_eval_rows)
    monkeypatch.setattr(rec, "_has_distillation", lambda: True)
    monkeypatch.setattr(rec, "_has_adaptation", lambda: True)
    monkeypatch.setattr(rec, "_wall_min", lambda folder: 1.0)
    monkeypatch.setattr(emgscale.models.cost, "model_cost",
                        lambda cfg: {"params": 1000, "mflops_per_s": 5.0, "lookahead_ms": None})
    d = {**load_definition(shipped_definitions(), "zero_shot", "tiny"), "seeds": 2,
         "run_recipes": ["student", "adapt", "s4d"]}
    table = rec.compare_recipes(ctx, d)["tables"]["recipes"]
    # the teacher (reference, not named) trains for both seeds first, then the students
    teacher = [(extra, run) for name, extra, run in trained if name == "tds_tiny.yaml"]
    assert len(teacher) == 2 and not any(o.startswith("run.seed") for o in teacher[0][0])
    assert any(o.startswith("run.seed=") for o in teacher[1][0])
    students = [extra for name, extra, _ in trained if name == "cnn_gru_causal_tiny.yaml"]
    assert len(students) == 2
    for seed, extra in enumerate(students):
        assert [o for o in extra if o.startswith("loss.distill_from=")] == [f"loss.distill_from={teacher[seed][1].best}"]
    adapt = [(c, o) for v, c, o in evaluated if v == "adapt"]
    assert len(adapt) == 4 and all(o == {"adapt_seconds": 30.0} for _, o in adapt)  # 2 users (not tiny's 1) x 2 seeds
    assert {c for c, _ in adapt} == {str(run.best) for _, run in teacher}
    assert list(table["columns"]) == ["student", "adapt", "s4d"] and table["order"] == ["student", "adapt", "s4d"]
    assert table["columns"]["s4d"]["seeds"] == "2" and table["columns"]["adapt"]["look-ahead (ms)"] == "offline"
    assert "reference" not in {r["variant"] for r in table["rows"]}
