"""The benchmark plots say what they show: no empty groups, legends off the data, readable ticks, honest titles."""

from __future__ import annotations

import itertools
import json

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from emgscale.bench.report import aggregate, bars_figure, cer_axis_label, lines_figure  # noqa: E402


def _zero_shot_rows() -> list[dict]:
    """A zero_shot table's rows: the seen-user row has val sessions only; long variant names."""
    rows = []
    for user, cer in (("a", 0.4), ("b", 0.6)):
        for dec in ("greedy", "lm"):
            rows.append({"variant": "seen users, new sessions (best val)", "user": user, "part": "val",
                         "decoder": dec, "cer": cer})
    for v, (user, cer) in itertools.product(("final checkpoint", "best val checkpoint", "SWAD average",
                                             "causal cnn_gru_causal (best val)"), (("c", 0.9), ("d", 1.1))):
        for part, dec in itertools.product(("val", "test"), ("greedy", "lm")):
            rows.append({"variant": v, "user": user, "part": part, "decoder": dec, "cer": cer})
    return rows


def _extent(artist, renderer):
    return artist.get_window_extent(renderer)


def test_bars_show_the_val_only_row_as_val_never_as_an_empty_n0_group():
    """The seen-users row (val only) is drawn from its val sessions, labelled val and n=2, hatched; no n=0."""
    fig = bars_figure(aggregate(_zero_shot_rows()), "zero shot", "synthetic data (emgscale.synth, seed 0)")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert not any("n=0" in t for t in labels)
    assert labels[0].endswith("(val, n=2)") and all(t.endswith("(test, n=2)") for t in labels[1:])
    heights = [p.get_height() for p in ax.patches]
    assert heights[0] == pytest.approx(50.0)  # the seen row's val mean, not a missing (NaN) test mean
    assert ax.patches[0].get_hatch() == "//" and not ax.patches[1].get_hatch()
    assert "val" in ax.get_ylabel() and "test" in ax.get_ylabel()
    assert any("hatched" in t.get_text() for t in fig.texts)


def test_bars_legend_is_outside_every_bar_and_labels_do_not_overlap():
    """The legend's box meets no bar; tick labels are horizontal, wrapped and pairwise disjoint."""
    fig = bars_figure(aggregate(_zero_shot_rows()), "zero shot", "data root 'x'")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = _extent(ax.get_legend(), renderer)
    assert not any(legend.overlaps(_extent(p, renderer)) for p in ax.patches)
    ticks = [t for t in ax.get_xticklabels() if t.get_text()]
    assert all(t.get_rotation() == 0 for t in ticks)
    assert all(max(len(line) for line in t.get_text().split("\n")) <= 20 for t in ticks)
    boxes = [_extent(t, renderer) for t in ticks]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def test_bar_labels_wrap_between_words_and_name_what_is_not_shown():
    """Long names wrap at spaces and underscores, never inside a word; variants without scores are named."""
    from emgscale.bench.report import wrap_label

    assert wrap_label("student_no_teacher", 12) == "student_no_\nteacher"
    assert all(len(line) <= 16 for line in wrap_label("causal cnn_gru_causal (best val)", 16).split("\n"))
    fig = bars_figure(aggregate(_zero_shot_rows()), "recipes", missing=["splashnet"], counts="users x seeds")
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "not shown (no scores): splashnet" in caption and "users x seeds per bar" in caption


def test_few_shot_lines_say_which_cer_and_tick_at_the_data():
    """A CER-vs-minutes plot's y axis names the part and decoders; its log x ticks are the data's values as numbers."""
    xs = [0.5, 1.0, 2.0, 5.0]
    series = {"greedy": (xs, [0.9, 0.8, 0.7, 0.6], [0.1] * 4), "+LM": (xs, [0.8, 0.7, 0.6, 0.5], [0.1] * 4)}
    assert cer_axis_label("test", list(series)) == "test CER (%), greedy and +LM"
    assert cer_axis_label("test", ["full, greedy", "full, +LM", "lora, greedy"]) == "test CER (%), greedy and +LM"
    fig = lines_figure(series, "minutes", "few shot", logx=True, users=[2] * 4,
                       ylabel=cer_axis_label("test", list(series)))
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_ylabel() == "test CER (%), greedy and +LM"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "1", "2", "5"]
    assert not ax.xaxis.get_minor_ticks() or not any(t.label1.get_text() for t in ax.xaxis.get_minor_ticks())


def test_finger_minutes_axis_ticks_are_the_data_minutes():
    """The finger plot's minutes axis is ticked at 0.5, 1, 2, 5 and all, written as such (no powers of two)."""
    from emgscale.bench.fingers import minutes_figure

    agg = [{"variant": v, "minutes": m, "x": x, "accuracy_mean": 0.5, "accuracy_std": 0.1}
           for v in ("scratch", "pretrained") for m, x in (("0.5", 0.5), ("1", 1.0), ("2", 2.0), ("5", 5.0),
                                                              ("all", 7.25))]
    fig = minutes_figure(agg, "caption")
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["0.5", "1", "2", "5", "all\n(7.2)"]
    assert not any("^" in t for t in labels)
    renderer = fig.canvas.get_renderer()
    legend = _extent(ax.get_legend(), renderer)
    assert not legend.overlaps(_extent(ax, renderer).shrunk(0.98, 0.98))


def test_data_label_says_what_is_known_and_never_real_data(tmp_path):
    """Our generator's corpus is named with its seed; anything else by its root and its own name; never 'real data'."""
    from emgscale.bench.runner import data_label
    from emgscale.config import to_dict
    from emgscale.synth import SynthConfig

    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "synth_summary.json").write_text(json.dumps({"config": to_dict(SynthConfig(seed=7)), "summary": {}}))
    assert data_label(ours) == "synthetic data (emgscale.synth, seed 7)"
    other = tmp_path / "other_gen"
    other.mkdir()
    (other / "synth_summary.json").write_text(json.dumps({"config": {"seed": 1, "generator": "theirs"},
                                                         "summary": {}}))
    (other / "metadata.csv").write_text("user,session,duration_mins,num_keystrokes,num_prompts\n")
    assert data_label(other) == "data root 'other_gen', emg2qwerty-format metadata.csv"
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "emg2qwerty"}))
    assert data_label(bids) == "data root 'bids', dataset 'emg2qwerty' (dataset_description.json)"
    assert data_label(tmp_path / "bare") == "data root 'bare'"
    assert not any("real" in data_label(p) for p in (ours, other, bids, tmp_path / "bare"))
