"""Tests of SWAD's segment files on disk: one per segment, excluded ones deleted, checkpoints without
weights, exact resume mid-segment (also through the training loop), bounded open files, bf16 segments."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from emgscale.swad import SWADConfig, WeightAverager, loss_valley
from emgscale.swad.store import SegmentStore

from _swad_fixtures import (STEPS_PER_SEGMENT, VALLEY, VALLEY_CFG, VALLEY_SEGMENTS, _assert_params_equal, _drive,
                            _mean, _segment_steps, _set, _Tiny, _weights)


# ---------------------------------------------------------------------- segment files on disk
def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


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
    loaded = {d: dict(SegmentStore(tmp_path / d).load(seg)["params"]) for d in ("b16", "f32")}
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
    """An unknown mode or segment dtype, or a negative start step, is a ValueError naming the field."""
    with pytest.raises(ValueError, match="swad.mode"):
        WeightAverager(SWADConfig(mode="ema"))
    with pytest.raises(ValueError, match="swad.segment_dtype"):
        WeightAverager(SWADConfig(mode="swad", segment_dtype="float16"))
    with pytest.raises(ValueError, match="swad.start_step"):
        WeightAverager(SWADConfig(mode="swad", start_step=-1))


class _Killed(RuntimeError):
    pass


def test_loop_with_a_store_folder_killed_mid_segment_resumes_to_the_same_average(tiny_corpus, tmp_path, monkeypatch):
    """The loop with store_dir=<out_dir>/swad, killed after a mid-segment checkpoint and resumed, ends as uninterrupted."""
    from _ray_fixtures import tiny_config

    import emgscale.train.loop as train_mod
    from emgscale.models.checkpoint import load_checkpoint

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


def test_segment_files_round_trip_and_older_archives_still_load(tmp_path):
    """A streamed segment file reads back exactly (f32 and bf16, with its facts); a torch.save one still loads."""
    from emgscale.swad.store import SegmentStore, weighted_mean

    store = SegmentStore(tmp_path)
    params = {"a": torch.randn(3, 5, dtype=torch.float64), "b": torch.randn(7, dtype=torch.float64),
              "c": torch.tensor(2.5, dtype=torch.float64)}
    for dtype in (torch.float32, torch.bfloat16):
        store.save_segment("seg-00000.pt", {"count": 4, "val_loss": 1.5}, params, dtype)
        seg = store.load("seg-00000.pt")
        assert seg["count"] == 4 and seg["val_loss"] == 1.5 and list(seg["params"]) == ["a", "b", "c"]
        for k, v in params.items():
            assert torch.equal(seg["params"][k], v.to(dtype))
    torch.save({"count": 4, "params": {k: v.float() for k, v in params.items()}}, tmp_path / "seg-00001.pt")
    old = store.load("seg-00001.pt")["params"]
    mixed = weighted_mean([(store.load("seg-00000.pt")["params"], 1.0), (old, 3.0)], 4.0)
    assert mixed.keys() == params.keys() and mixed["a"].dtype == torch.float32


def test_a_damaged_segment_file_is_one_clear_error(tmp_path):
    """A truncated or foreign segment file is a ValueError naming the file, not a crash deep in torch."""
    from emgscale.swad.store import SegmentStore

    store = SegmentStore(tmp_path)
    store.save_segment("seg-00000.pt", {"count": 1}, {"w": torch.ones(1000)}, torch.float32)
    path = tmp_path / "seg-00000.pt"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="seg-00000.pt"):
        store.load("seg-00000.pt")
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a SWAD segment file"):
        store.load("seg-00000.pt")


def test_weighted_mean_reads_one_tensor_of_every_source_before_the_next():
    """The average is built tensor by tensor (one float64 tensor held), not source by source (a whole copy)."""
    from emgscale.swad.store import weighted_mean

    reads: list[tuple[int, str]] = []

    class Recording(dict):
        def __init__(self, i: int, tensors: dict) -> None:
            super().__init__(tensors)
            self.i = i

        def __getitem__(self, k: str) -> torch.Tensor:
            reads.append((self.i, k))
            return super().__getitem__(k)

    srcs = [Recording(i, {"a": torch.full((2,), float(i)), "b": torch.full((3,), float(i))}) for i in range(3)]
    mean = weighted_mean([(s, 1.0) for s in srcs], 3.0)
    assert [k for _, k in reads] == ["a", "a", "a", "b", "b", "b"] and torch.equal(mean["a"], torch.ones(2))
