"""Issue 23, one line (exit 2) and not a traceback for a user's mistake: each case names the file or the key
and the problem."""

from __future__ import annotations

import numpy as np
import pytest
from _faults_helpers import REPO, TINY_MODEL, one_error_line, rewrite_session

from emgscale.cli import cli


@pytest.fixture
def causal_checkpoint(tmp_path, tiny_corpus):
    """An untrained causal (streamable) checkpoint whose config points at the tiny corpus."""
    from emgscale.models.checkpoint import Checkpoint, save_checkpoint
    from emgscale.config import to_dict
    from emgscale.models import build_model
    from emgscale.train import load_train_config

    cfg = load_train_config([str(REPO / "emgscale" / "configs" / "models" / "cnn_gru_causal_tiny.yaml")],
                            [f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}"])
    return save_checkpoint(tmp_path / "model.pt", Checkpoint(model=build_model(cfg.model).state_dict(),
                                                             config=to_dict(cfg)))


@pytest.mark.parametrize("content", [b"hello, I am a text file\n", bytes(np.random.default_rng(0).integers(
    0, 256, 5000, dtype=np.uint8))], ids=["text", "random-bytes"])
def test_lm_that_is_not_kenlm_is_one_line_naming_it(tmp_path, capsys, content):
    """--lm of a text file or random bytes: exit 2, one line naming the file (not a KenLM C++ traceback)."""
    from emgscale.decode import DecoderConfig, build_decoder

    lm = tmp_path / "lm.bin"
    lm.write_bytes(content)

    @cli("prog")
    def main(argv=None) -> int:
        build_decoder(DecoderConfig(kind="beam", lm_path=str(lm)))
        return 0
    assert main([]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(lm) in line and "KenLM" in line


def test_zero_row_session_in_stream_is_one_line(tiny_corpus, causal_checkpoint, capsys):
    """`stream CKPT EMPTY.hdf5`: exit 2 naming the 0-row file (not IndexError)."""
    from emgscale.stream.__main__ import main

    path = tiny_corpus.path(tiny_corpus.split["test"][0].session)
    rewrite_session(path, rows=0)
    assert main([str(causal_checkpoint), str(path), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and "no EMG rows" in line


def test_zero_row_session_in_eval_is_one_line(tiny_corpus, causal_checkpoint, tmp_path, capsys):
    """`eval` over a split holding a 0-row session: exit 2 naming that file."""
    from emgscale.eval.__main__ import main

    path = tiny_corpus.path(tiny_corpus.split["test"][0].session)
    rewrite_session(path, rows=0)
    assert main([str(causal_checkpoint), "--split", "test", "--out", str(tmp_path / "r.json")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and "no EMG rows" in line


def test_lm_build_on_binary_garbage_is_refused(tmp_path, capsys):
    """`lm build` on random bytes: exit 2, one line naming the file as mostly untypeable (no LM written)."""
    from emgscale.lm.__main__ import main

    text = tmp_path / "garbage.txt"
    text.write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    assert main(["build", "--text", str(text), "--out", str(tmp_path / "g.bin"), "--order", "3"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(text) in line and "untypeable" in line
    assert not (tmp_path / "g.bin").exists()


def test_lm_build_on_a_fake_gz_is_one_line(tmp_path, capsys):
    """`lm build --text fake.gz` (not gzip): exit 2, one line naming the file (not BadGzipFile's traceback)."""
    from emgscale.lm.__main__ import main

    fake = tmp_path / "text.gz"
    fake.write_text("not gzip at all\n")
    assert main(["build", "--text", str(fake), "--out", str(tmp_path / "g.bin"), "--order", "3"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(fake) in line and "gz" in line


def test_binary_yaml_is_one_line_naming_the_file(tmp_path, capsys):
    """A binary file given as a config: exit 2, one line naming the file."""
    from emgscale.train.__main__ import main

    bad = tmp_path / "cfg.yaml"
    bad.write_bytes(bytes(range(128, 256)) * 3)
    assert main([str(bad)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line


def test_override_without_equals_says_so(capsys):
    """`train run.max_epochs` (no '='): exit 2, one line saying an override needs '='."""
    from emgscale.train.__main__ import main

    assert main(["run.max_epochs"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "run.max_epochs" in line and "'='" in line


def test_window_longer_than_every_session_says_so(tiny_corpus, tmp_path, capsys):
    """A training window longer than every session: exit 2, one line saying so (with the longest session)."""
    from emgscale.train.__main__ import main

    assert main([f"data.data_root={tiny_corpus.root}", f"data.split={tiny_corpus.split_path}",
                 "data.window.window_samples=100000", f"run.out_dir={tmp_path / 'run'}", *TINY_MODEL]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "longer than every train session" in line and "window_samples=100000" in line


def test_data_root_without_sessions_is_refused_by_shard(tmp_path, capsys):
    """`shard` of a data root holding no session: exit 2 naming the folder, and no manifest written."""
    from emgscale.shard.__main__ import main

    root = tmp_path / "empty"
    root.mkdir()
    assert main(["--data-root", str(root), "--out", str(tmp_path / "sh"), "--parts", "train", "--workers", "1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(root) in line and "no session" in line
    assert not (tmp_path / "sh" / "manifest.json").exists()
