"""Issue 23, disk full: checkpoint, shard and LM writes that hit ENOSPC end with one line naming the path and
saying "No space left on device"; the temporary file is removed and the previous file is intact."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from emgscale.cli import cli


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _as_cli(fn):
    """``fn`` run as a CLI main: the exit code and what it printed, as every emgscale command does."""
    @cli("prog")
    def main(argv=None) -> int:
        fn()
        return 0
    return main([])


def test_checkpoint_write_on_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    """A full disk while writing last.pt: exit 2, one line naming it; the old last.pt intact, no temp file left."""
    from emgscale.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, Checkpoint(model={"w": torch.ones(3)}, config={}, step=1))
    before = path.read_bytes()
    real_save = torch.save

    def half_then_full(obj, f, *a, **k):
        f.write(b"x" * 100)
        _enospc()
    monkeypatch.setattr(torch, "save", half_then_full)
    assert _as_cli(lambda: save_checkpoint(path, Checkpoint(model={"w": torch.zeros(3)}, config={}, step=2))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err and "No space left on device" in err
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path).step == 1


def test_shard_write_on_a_full_disk_is_one_line_without_temp_files(tiny_corpus, tmp_path, monkeypatch, capsys):
    """A full disk while writing a shard: `shard` exits 2 naming the shard; no .tmp left; a rerun completes."""
    import emgscale.shard.writer as writer
    from emgscale.shard.__main__ import main

    out = tmp_path / "sh"
    args = ["--data-root", str(tiny_corpus.root), "--split", str(tiny_corpus.split_path), "--out", str(out),
            "--parts", "train", "--workers", "1"]
    real_write = writer._HashingFile.write
    monkeypatch.setattr(writer._HashingFile, "write", lambda self, data: _enospc())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err and ".tar" in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(writer._HashingFile, "write", real_write)
    assert main(args) == 0


def test_lm_write_on_a_full_disk_is_one_line_and_keeps_the_old_lm(tmp_path, monkeypatch, capsys):
    """A full disk while KenLM writes (its log says so): `lm build` exits 2 naming the folder; the old LM intact."""
    import emgscale.lm.build as build
    from emgscale.lm.__main__ import main

    fake = tmp_path / "lmplz"
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'util/file.cc:228 in void util::WriteOrThrow threw "
                    "FDException. No space left on device in /tmp/x' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(build, "find_kenlm_tool", lambda name: fake)
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 50)
    out = tmp_path / "lm" / "char3.bin"
    out.parent.mkdir()
    out.write_bytes(b"old model")
    assert main(["build", "--text", str(text), "--out", str(out), "--order", "3"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err
    assert out.read_bytes() == b"old model" and sorted(p.name for p in out.parent.iterdir()) == ["char3.bin"]


def test_atomic_write_on_a_full_disk_removes_the_temp_file(tmp_path, monkeypatch):
    """atomic_write_bytes on a full disk raises one error naming the path; temp removed, old bytes kept."""
    from emgscale.common import atomic_write_bytes

    path = tmp_path / "manifest.json"
    path.write_bytes(b"old")
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: _enospc())
    with pytest.raises(OSError) as e:
        atomic_write_bytes(path, b"new")
    assert e.value.filename == str(path) and "No space left on device" in str(e.value)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
