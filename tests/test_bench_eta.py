"""The benchmark runner's ETA counts expected steps of every running and queued run, not runs finished;
a run's DONE.json says what it cost."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest

from emgscale.bench.eta import RUNNING, RunEstimate, eta_seconds, expected_steps, steps_done
from emgscale.bench.steps import DONE
from emgscale.train import load_train_config


def test_a_short_finetune_finishing_first_leaves_the_long_runs_in_the_eta():
    """A fine-tune done early does not shrink the ETA below the running long run's remaining steps; queued
    runs go to the slot that frees first (2 at a time)."""
    measured = {"g": (200.0, 100), "ft": (60.0, 60)}  # the generic config at 2 s/step; a fine-tune at 1 s/step
    runs = [RunEstimate(800, 100, "g", running=True)] + [RunEstimate(400, 0, "g") for _ in range(4)]
    seconds, unknown = eta_seconds(runs, measured, jobs=2)
    # slot A: the generic model's 700 steps (1400 s), then user run 3; slot B: user runs 1, 2 and 4
    assert unknown == 0 and seconds == pytest.approx(2400.0)
    assert eta_seconds(runs[:1], measured, jobs=2)[0] == pytest.approx(1400.0)  # never below the long run
    assert eta_seconds(runs, measured, jobs=1)[0] == pytest.approx(1400.0 + 4 * 800.0)


def test_an_unmeasured_config_takes_the_pooled_rate_and_unknown_lengths_are_counted():
    """A config with no measured step costs the pooled s/step; a run of unknown length is counted apart;
    before any step is measured there is no ETA."""
    measured = {"a": (100.0, 100), "b": (300.0, 100)}  # pooled: 2 s/step
    seconds, unknown = eta_seconds([RunEstimate(50, 0, "new"), RunEstimate(None, 0, "a")], measured)
    assert seconds == pytest.approx(100.0) and unknown == 1
    assert eta_seconds([RunEstimate(50)], {}) is None and eta_seconds([RunEstimate(50)], {"a": (5.0, 0)}) is None


def test_an_unmeasured_config_is_priced_by_its_step_flops():
    """A config not measured yet, whose step's MFLOPs are known, costs the measured seconds per MFLOP times
    them (a small model's step is not a generic model's); without its cost it takes the pooled rate."""
    measured = {"big": (200.0, 100)}  # 2 s/step for a 40-MFLOP step: 0.05 s per MFLOP
    costs = {"big": 40.0, "small": 4.0}
    assert eta_seconds([RunEstimate(300, 0, "small")], measured, costs=costs)[0] == pytest.approx(60.0)
    assert eta_seconds([RunEstimate(300, 0, "other")], measured, costs=costs)[0] == pytest.approx(600.0)


def test_step_cost_counts_a_training_batch_of_any_model_config(tmp_path):
    """step_cost is the forward MFLOPs of a training batch (batch size x a window with its context), for an
    EMG model and an 8-channel finger model alike; cached per rate key."""
    from emgscale.bench.eta import known_step_costs, rate_key, step_cost
    from emgscale.config import shipped_configs

    tiny = ["model.arch=cnn_rnn", "model.frontend.mlp_features=[16]", "model.cnn_rnn.conv_channels=[8]",
            "model.cnn_rnn.strides=[2]", "model.cnn_rnn.hidden_size=8"]
    one, two = (load_train_config([], [*tiny, f"data.batch_size={b}"]) for b in (1, 2))
    assert step_cost(two) == pytest.approx(2 * step_cost(one)) and step_cost(one) > 0
    fingers = shipped_configs() / "fingers"
    cfg = load_train_config([str(fingers / "train.yaml"), str(fingers / "cnn_gru_causal.yaml")], [])
    assert step_cost(cfg) > 0 and known_step_costs()[rate_key(cfg)] == step_cost(cfg)


def test_expected_steps_come_from_the_config():
    """Expected steps = steps_per_epoch x max_epochs, capped by max_steps; unknown when steps_per_epoch is 0."""
    assert expected_steps(load_train_config([], ["run.steps_per_epoch=50", "run.max_epochs=8"])) == 400
    assert expected_steps(load_train_config([], ["run.steps_per_epoch=50", "run.max_epochs=8",
                                                 "run.max_steps=100"])) == 100
    assert expected_steps(load_train_config([], ["run.steps_per_epoch=0"])) is None
    assert expected_steps(load_train_config([], ["run.steps_per_epoch=0", "run.max_steps=30"])) == 30


def test_steps_done_is_the_last_logged_step(tmp_path):
    """A run's progress is the last step in its metrics.jsonl (a long file read from its tail); 0 without one."""
    assert steps_done(tmp_path) == 0
    rows = [{"step": s, "train_loss": 1.0, "pad": "x" * 200} for s in range(1, 301)] + [{"step": 300, "val_loss": 2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert steps_done(tmp_path) == 300


def test_progress_line_reads_running_queued_and_done_runs(tmp_path):
    """The progress line counts done, running (steps / expected) and queued runs and gives an ETA from the
    running run's measured rate."""
    from emgscale.bench.training import Progress

    folders = [tmp_path / "runs" / n for n in ("done", "running", "queued")]
    for f in folders:
        f.mkdir(parents=True)
    (folders[0] / DONE).write_text(json.dumps({"rate_key": "k", "wall_s": 100.0, "steps": 100}))
    progress = Progress(tmp_path, {f: (100, "k") for f in folders}, jobs=1)
    (folders[1] / RUNNING).write_text(json.dumps({"pid": os.getpid(), "started_at": time.time() - 10,
                                                  "steps_at_start": 0}))
    (folders[2] / RUNNING).write_text(json.dumps({"pid": 0, "started_at": time.time() - 99}))  # stale: ignored
    (folders[1] / "metrics.jsonl").write_text(json.dumps({"step": 10}) + "\n")
    line = progress.line()
    assert "1/3 done, 1 running (10/100 steps), 1 queued; ETA " in line
    assert "ETA 2m" in line or "ETA 3m" in line  # (90 + 100) steps at ~1 s/step


def test_runs_planned_for_later_suites_stay_in_the_eta_until_they_are_trained(tmp_path):
    """With a plan, the progress line queues the benchmark's later runs behind this batch (their expected steps
    at the measured rate); a run settled (trained or found done) leaves the plan, and so does the batch itself."""
    from emgscale.bench import plan
    from emgscale.bench.training import Progress

    folder = tmp_path / "runs" / "now"
    folder.mkdir(parents=True)
    plan.set_plan({"now": (100, "k"), "later1": (200, "k"), "later2": (300, "k"), "done": (50, "k")})
    plan.settle(["done"])
    later = plan.later_runs({"now"})
    assert set(later) == {"later1", "later2"}
    progress = Progress(tmp_path, {folder: (100, "k")}, jobs=1, later=later)
    (folder / RUNNING).write_text(json.dumps({"pid": os.getpid(), "started_at": time.time() - 10,
                                              "steps_at_start": 0}))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 10}) + "\n")
    line = progress.line()
    assert "0 queued (+ 2 later in this benchmark; ETA " in line and "of all its training" in line
    assert "ETA 9m" in line or "ETA 10m" in line  # (90 + 200 + 300) steps at ~1 s/step
    plan.settle(["later1"])
    assert set(plan.later_runs({"now"})) == {"later2"}
    plan.set_plan({})


def test_the_planning_pass_records_runs_and_trains_nothing(tmp_path, tiny_corpus):
    """Inside planning(), ensure_trained_many records each run not done (plan id, expected steps) and returns its
    folder untrained; the same runs outside planning() get the same plan ids."""
    from emgscale.bench import plan
    from emgscale.bench.training import ensure_trained_many

    base = ["run.max_epochs=2", "run.steps_per_epoch=3", f"data.data_root={tiny_corpus.root}",
            f"data.split={tiny_corpus.split_path}"]
    runs = [([], [*base, "run.seed=1"]), ([], [*base, "run.seed=2"])]
    with plan.planning() as planned:
        folders = ensure_trained_many(tmp_path / "cache", runs, jobs=2)
    assert not plan.is_planning() and len(folders) == 2 and not any(f.exists() for f in folders)
    assert set(planned) == {plan.plan_id(f, o) for f, o in runs}
    assert all(steps == 6 for steps, _ in planned.values())


@pytest.mark.parametrize("timings", [None, {"step_s": 3.0, "total_s": 5.0}])
def test_a_runs_done_json_holds_its_cost(tmp_path, monkeypatch, tiny_corpus, timings):
    """DONE.json of a run: wall seconds, steps, expected steps, label, rate key, and the loop's timings
    (empty when the loop gives none)."""
    import emgscale.train
    from emgscale.bench.training import ensure_trained

    def fake_launch(cfg, resume=True):
        r = SimpleNamespace(best_val_score=0.5, best_val_metric="val_cer", steps=6, wall_s=1.0, world_size=1)
        if timings is not None:
            r.timings = timings
        return r

    monkeypatch.setattr(emgscale.train, "launch", fake_launch)
    folder = ensure_trained(tmp_path, [], [f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}",
                                           "run.steps_per_epoch=3", "run.max_epochs=2", "model.arch=tds"])
    done = json.loads((folder / DONE).read_text())
    assert done["kind"] == "runs" and done["steps"] == 6 and done["expected_steps"] == 6 and done["wall_s"] >= 0
    assert done["timings"] == (timings or {}) and done["label"] == {"split": "tiny", "arch": "tds", "finetune": False}
    assert done["rate_key"] and not (folder / RUNNING).exists() and not (folder / ".lock").exists()
