"""The documented finger-transfer route runs as written: pretrain -> fine-tune with a new head, each in its own folder."""

from __future__ import annotations

from pathlib import Path


from emgscale.fingers.__main__ import main

QUICK = ["run.max_steps=2", "run.max_epochs=1", "run.steps_per_epoch=2", "run.threads=1", "data.batch_size=2",
         "run.val_max_batches=1"]


def test_pretrain_then_fine_tune_in_their_own_folders(tiny_corpus, tmp_path, monkeypatch):
    """`fingers pretrain` makes runs/fingers-pre (a CTC head over the keys); `fingers train --minutes 1
    --init-from runs/fingers-pre/checkpoints/last.pt` fine-tunes a 6-class head into runs/fingers-ft-1min, not runs/fingers."""
    from emgscale.models.checkpoint import load_checkpoint
    from emgscale.synth.fingers import FingerSynthConfig, generate_fingers

    monkeypatch.chdir(tmp_path)
    generate_fingers(FingerSynthConfig(out="data/fingers", users=1, sessions_per_user=3, minutes=0.3))
    assert main(["pretrain", str(tiny_corpus.root), "--split", str(tiny_corpus.split_path), *QUICK]) == 0
    pre = load_checkpoint(Path("runs/fingers-pre/checkpoints/last.pt"))
    assert pre.model["head.weight"].shape[0] == 99
    assert main(["train", "data/fingers", "--minutes", "1", "--init-from", "runs/fingers-pre/checkpoints/last.pt", *QUICK]) == 0
    tuned = load_checkpoint(Path("runs/fingers-ft-1min/checkpoints/last.pt"))
    assert tuned.model["head.weight"].shape[0] == 6 and not Path("runs/fingers").exists()


def test_ctc_over_a_six_class_head_is_one_line(tmp_path, capsys):
    """The model file named after pretrain.yaml (a 6-class head under CTC) is refused in one line, not a
    'blank must be in label range' traceback."""
    from emgscale.train.__main__ import main as train_main

    cfgs = Path(__file__).resolve().parents[1] / "emgscale" / "configs" / "fingers"
    code = train_main([str(cfgs / "pretrain.yaml"), str(cfgs / "cnn_gru_causal.yaml"), f"run.out_dir={tmp_path}",
                       f"data.data_root={tmp_path}", f"data.split={cfgs / 'pretrain.yaml'}"])
    err = capsys.readouterr().err
    assert code == 2 and "model.num_classes=6" in err and "frame_ce" in err and "Traceback" not in err
