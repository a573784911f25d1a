"""Tests of distillation into a student (loss.distill_from: emgscale.train.distill and the CTC objective)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from emgscale.config import ConfigError, to_dict
from emgscale.data.windows import Batch
from emgscale.models import build_model
from emgscale.models.checkpoint import Checkpoint, save_checkpoint
from emgscale.train.distill import TEACHER_RECORD, Teacher, distill_kl, record_teacher, resample_frames
from emgscale.train.objective import build_objective

REPO = Path(__file__).resolve().parents[1]
TDS_TINY = ["model.frontend.mlp_features=[16]", "model.tds.block_channels=[4,4]", "model.tds.kernel_width=8"]
STUDENT = str(REPO / "emgscale" / "configs" / "models" / "cnn_gru_causal_tiny.yaml")


def _cfg(tmp_path: Path, files: list[str], overrides: list[str]):
    from emgscale.train import load_train_config

    return load_train_config(files, [f"run.out_dir={tmp_path / 'run'}", *overrides])


def _teacher_ckpt(tmp_path: Path, seed: int = 0, name: str = "teacher.pt") -> Path:
    cfg = _cfg(tmp_path, [], TDS_TINY)
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    return save_checkpoint(tmp_path / name, Checkpoint(model=model.state_dict(), config=to_dict(cfg)))


def _batch(seed: int = 0, B: int = 2, T: int = 4000) -> Batch:
    g = torch.Generator().manual_seed(seed)
    emg = torch.randn(B, T, 2, 16, generator=g) * 20
    labels = torch.randint(0, 90, (B, 6), generator=g)
    return Batch(emg, torch.tensor([T, T - 700][:B]), labels, torch.tensor([6, 4][:B]), [f"k{i}" for i in range(B)],
                 ["u"] * B)


def test_equal_rates_resample_to_the_same_frames():
    """Teacher and student at one frame rate: the resampled targets are the teacher's frames exactly."""
    p = torch.randn(2, 9, 5).softmax(-1)
    out = resample_frames(p, torch.tensor([9, 9]), 9, 16, 16)
    assert torch.equal(out, p)


def test_resampling_pools_a_faster_teacher_and_holds_a_slower_one():
    """4x faster teacher: each student frame is the mean of its 4 frames; 4x slower: each frame holds; rows sum to 1."""
    p = torch.randn(2, 12, 5).softmax(-1)
    pooled = resample_frames(p, torch.tensor([12, 12]), 3, 8, 32)
    torch.testing.assert_close(pooled, p.view(2, 3, 4, 5).mean(2))
    held = resample_frames(p, torch.tensor([12, 12]), 48, 32, 8)
    torch.testing.assert_close(held, p.repeat_interleave(4, dim=1))
    odd = resample_frames(p, torch.tensor([12, 7]), 10, 16, 80 / 4)  # a ratio of 1.25
    assert odd.shape == (2, 10, 5)
    torch.testing.assert_close(odd.sum(-1), torch.ones(2, 10))


def test_resampling_keeps_lengths_and_extends_the_last_valid_frame():
    """Student frames beyond the teacher's valid frames take its last valid frame, never its padding."""
    p = torch.randn(2, 10, 4).softmax(-1)
    p[1, 6:] = float("nan")  # padding of sequence 1 (6 valid frames) must never be read
    out = resample_frames(p, torch.tensor([10, 6]), 5, 16, 32)
    assert out.shape == (2, 5, 4) and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out[1, 3:], p[1, 5].expand(2, 4))
    delayed = resample_frames(p[:1], torch.tensor([10]), 10, 16, 16, delay_samples=32)
    torch.testing.assert_close(delayed[0, 2:], p[0, :8])  # two frames later
    torch.testing.assert_close(delayed[0, :2], p[0, :1].expand(2, 4))


def test_kl_is_nonnegative_and_zero_when_student_equals_teacher():
    """KL(teacher || student) at T is >= 0, and 0 when the tempered student is the teacher; padding is ignored."""
    logits = torch.randn(3, 7, 11) * 4
    lengths = torch.tensor([7, 3, 5])
    for T in (1.0, 2.0, 5.0):
        teacher = (logits / T).softmax(-1)
        assert float(distill_kl(logits, lengths, teacher, T)) == pytest.approx(0.0, abs=1e-6)
        other = (torch.randn(3, 7, 11) / T).softmax(-1)
        assert float(distill_kl(logits, lengths, other, T)) > 1e-3
    garbage = teacher.clone()
    garbage[1, 3:] = (torch.randn(4, 11)).softmax(-1)
    assert float(distill_kl(logits, lengths, garbage, 5.0)) == pytest.approx(0.0, abs=1e-6)


def test_weight_zero_is_plain_ctc(tmp_path):
    """loss.distill_weight=0: the objective's loss equals plain CTC's on the same batch."""
    teacher = _teacher_ckpt(tmp_path)
    plain = build_objective(_cfg(tmp_path, [STUDENT], []))
    off = build_objective(_cfg(tmp_path, [STUDENT], [f"loss.distill_from={teacher}", "loss.distill_weight=0"]))
    on = build_objective(_cfg(tmp_path, [STUDENT], [f"loss.distill_from={teacher}", "loss.distill_weight=1"]))
    torch.manual_seed(0)
    student = build_model(_cfg(tmp_path, [STUDENT], []).model).eval()
    batch = _batch()
    lp, ol = student(batch.emg, batch.emg_lengths)
    assert torch.equal(plain.loss(lp, ol, batch, 0), off.loss(lp, ol, batch, 0))
    assert float(on.loss(lp, ol, batch, 0).detach()) > float(plain.loss(lp, ol, batch, 0).detach())
    assert on.teacher is not None and not any(p.requires_grad for p in on.teacher.model.parameters())


def test_a_few_steps_lower_the_kl_to_the_teacher(tmp_path):
    """A tiny causal student trained on the distillation loss for a few steps moves toward the teacher."""
    teacher = _teacher_ckpt(tmp_path)
    obj = build_objective(_cfg(tmp_path, [STUDENT], [f"loss.distill_from={teacher}", "loss.distill_temperature=2"]))
    torch.manual_seed(0)
    student = build_model(_cfg(tmp_path, [STUDENT], []).model).eval()  # eval: no augmentation, a fixed input
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    batch = _batch(1)
    kls = []
    for _ in range(15):
        lp, ol = student(batch.emg, batch.emg_lengths)
        loss = obj.distill_loss(lp, ol, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        kls.append(float(loss.detach()))
    assert kls[-1] < 0.7 * kls[0]


def test_distill_settings_are_checked_in_one_line(tmp_path):
    """A missing teacher file, a temperature of 0 or a negative weight: one ConfigError naming the key."""
    from emgscale.train.config import check_train_config

    base = [f"data.data_root={tmp_path}", f"data.split={_teacher_ckpt(tmp_path)}"]  # any existing file
    cases = {"loss.distill_from": f"loss.distill_from={tmp_path / 'nope.pt'}",
             "loss.distill_temperature": "loss.distill_temperature=0",
             "loss.distill_weight": "loss.distill_weight=-1"}
    for key, override in cases.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
            check_train_config(_cfg(tmp_path, [STUDENT], [*base, override]))
        assert "\n" not in str(e.value)


def test_distillation_needs_the_ctc_objective(tmp_path):
    """loss.distill_from with loss.kind=frame_ce is refused, naming both keys."""
    cfg = _cfg(tmp_path, [STUDENT], [f"loss.distill_from={_teacher_ckpt(tmp_path)}"])
    cfg.loss.kind = "frame_ce"
    with pytest.raises(ValueError, match="distill_from.*frame_ce"):
        build_objective(cfg)


def test_resuming_with_another_teacher_is_refused(tmp_path):
    """The teacher's sha256 is recorded in the run; a run with checkpoints refuses another teacher, not the same."""
    cfg = _cfg(tmp_path, [STUDENT], [])
    student = build_model(cfg.model)
    a = Teacher(_teacher_ckpt(tmp_path, 0, "a.pt"), student, 2.0)
    b = Teacher(_teacher_ckpt(tmp_path, 1, "b.pt"), student, 2.0)
    out = tmp_path / "run"
    record_teacher(out, a)
    record_teacher(out, b)  # no checkpoint yet: a fresh start may change its mind
    assert b.sha256 in (out / TEACHER_RECORD).read_text()
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"x")
    record_teacher(out, b)
    with pytest.raises(ValueError, match="another teacher"):
        record_teacher(out, a)


def test_train_with_a_teacher_and_resume(tiny_corpus, tmp_path):
    """train() distils a TDS teacher into a causal student (other frame rate), writes the record, and resumes."""
    from emgscale.train import train

    teacher = _teacher_ckpt(tmp_path)
    common = [f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}", "data.batch_size=2",
              "data.window.window_samples=4000", "run.steps_per_epoch=2", "run.tensorboard=false",
              f"loss.distill_from={teacher}", "loss.distill_weight=1.0"]
    first = train(_cfg(tmp_path, [STUDENT], [*common, "run.max_steps=2", "run.max_epochs=2"]))
    assert first.steps == 2 and (tmp_path / "run" / TEACHER_RECORD).is_file()
    again = train(_cfg(tmp_path, [STUDENT], [*common, "run.max_steps=4", "run.max_epochs=2"]), resume=True)
    assert again.steps == 4
    _teacher_ckpt(tmp_path, seed=1)  # another teacher at the same path
    with pytest.raises(ValueError, match="another teacher"):
        train(_cfg(tmp_path, [STUDENT], [*common, "run.max_steps=6", "run.max_epochs=3"]), resume=True)
