"""Files are data, never code: no pickled callable runs, stored configs run no shell, metadata sizes are
checked before allocation, file modes follow the umask (issue 23, security)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from emgscale.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, upgrade_legacy_checkpoint
from emgscale.config import to_dict
from emgscale.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls ``os.mkdir(target)``: the marker that pickled code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.target),)


def _hostile(tmp_path: Path) -> tuple[Path, Path]:
    """A ``.pt`` that looks like an emgscale checkpoint and carries a payload; returns (file, marker)."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {"w": torch.zeros(2)}, "config": to_dict(TrainConfig()),
                "step": 1, "history": [_Payload(marker)]}, path)
    return path, marker


def _eval_model(p: Path) -> Any:
    from emgscale.eval import load_model  # eval, stream, fingers evaluate

    return load_model(p)


def _resume_config(p: Path) -> Any:
    from emgscale.train.config import resumed_config  # train --resume CKPT

    return resumed_config([], [f"run.out_dir={p.parent / 'run'}"], str(p))


def _init_from(p: Path) -> Any:
    from emgscale.train.loop import _init_weights  # run.init_from

    return _init_weights(torch.nn.Linear(2, 2), str(p), False)


def _ray_restart(p: Path) -> Any:
    from emgscale.train.launch import _step_of  # a restarted Ray worker group picks the newest checkpoint

    assert _step_of(p) is None  # unreadable: not a candidate
    return load_checkpoint(p)


def _models_export(p: Path) -> Any:
    from emgscale.models.__main__ import main

    assert main(["export", str(p), "--to", "reference", "--out", str(p.parent / "out.ckpt")]) == 2
    raise ValueError("refused")


LOADERS: dict[str, Callable[[Path], Any]] = {
    "load_checkpoint": load_checkpoint,  # bench --generic-checkpoint, swad posthoc, fingers bench
    "eval/stream load_model": _eval_model, "train --resume": _resume_config, "run.init_from": _init_from,
    "ray restart": _ray_restart, "models export": _models_export,
}


@pytest.mark.parametrize("name", list(LOADERS))
def test_a_checkpoint_with_a_pickled_payload_is_refused_and_never_run(tmp_path: Path, name: str) -> None:
    """Every reader of a .pt refuses a file whose pickle names a callable, and the callable never runs."""
    path, marker = _hostile(tmp_path)
    with pytest.raises(ValueError) as e:
        LOADERS[name](path)
    assert not marker.exists()
    if name != "models export":
        assert str(e.value).startswith(f"{path}: not an emgscale checkpoint (it pickles ") and "mkdir" in str(e.value)
        assert "\n" not in str(e.value)


def test_the_eval_cli_refuses_a_hostile_checkpoint_in_one_line(tmp_path: Path) -> None:
    """`python -m emgscale.eval evil.pt`: exit 2, one line naming the file, the payload not run."""
    path, marker = _hostile(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "emgscale.eval", str(path)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"{path}: not an emgscale checkpoint" in proc.stderr
    assert not marker.exists()


def _format_1(path: Path) -> Path:
    cfg = to_dict(TrainConfig())
    window = cfg["data"].pop("window")
    cfg["data"].update({k: window[k] for k in ("window_samples", "stride_samples", "pad_left_samples")})
    cfg["data"]["window_samples"] = 4000
    old = {"format_version": 1, "model": {"w": torch.zeros(2)}, "config": cfg, "step": 3, "epoch": 0,
           "step_in_epoch": 3, "rng": [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                        "python": random.getstate()}], "best_val_cer": 0.5, "history": [],
           "optimizer": {}, "scheduler": {}, "averager": {}, "averaged_model": None}
    torch.save(old, path)
    return path


def test_a_format_1_checkpoint_is_refused_with_the_command_that_converts_it(tmp_path: Path) -> None:
    """A pre-format-2 file (numpy RNG state) is not unpickled: one line naming upgrade-legacy."""
    old = _format_1(tmp_path / "v1.pt")
    with pytest.raises(ValueError, match=r"v1\.pt: an emgscale checkpoint from before format 2 .*"
                                         r"python -m emgscale\.models upgrade-legacy .*--i-trust-this-file"):
        load_checkpoint(old)


def test_upgrade_legacy_converts_a_format_1_file_and_refuses_a_payload(tmp_path: Path) -> None:
    """upgrade-legacy writes a loadable format-3 file; a payload file is refused unrun; the flag is required."""
    from emgscale.config import from_dict
    from emgscale.models.__main__ import main

    old = _format_1(tmp_path / "v1.pt")
    assert main(["upgrade-legacy", str(old), "--out", str(tmp_path / "new.pt")]) == 2  # no --i-trust-this-file
    assert main(["upgrade-legacy", str(old), "--out", str(tmp_path / "new.pt"), "--i-trust-this-file"]) == 0
    ck = load_checkpoint(tmp_path / "new.pt")
    assert ck.step == 3 and from_dict(TrainConfig, ck.config).data.window.window_samples == 4000
    assert isinstance(ck.rng[0]["numpy"][1], torch.Tensor)
    path, marker = _hostile(tmp_path)
    with pytest.raises(ValueError, match="not a format-1 emgscale checkpoint"):
        upgrade_legacy_checkpoint(path, tmp_path / "x.pt")
    assert not marker.exists() and not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match="nothing to upgrade"):
        upgrade_legacy_checkpoint(tmp_path / "new.pt", tmp_path / "y.pt")


def test_an_ordinary_checkpoint_still_loads(tmp_path: Path) -> None:
    """The weights-only path reads what save_checkpoint writes."""
    path = save_checkpoint(tmp_path / "c.pt", Checkpoint(model={"w": torch.ones(2)}, config=to_dict(TrainConfig())))
    assert torch.equal(load_checkpoint(path).model["w"], torch.ones(2))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """A file written through atomic_path gets 0o666 less the umask, as a plain open would (not mkstemp's 0600)."""
    from emgscale.common import atomic_torch_save, atomic_write_json, current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_torch_save({"w": torch.ones(1)}, tmp_path / "b.pt")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.json": want, "b.pt": want,
                                                                               "plain": want}


def test_import_reference_checks_tensor_shapes_before_allocating(tmp_path: Path) -> None:
    """A tiny .ckpt whose hyper_parameters ask for mlp_features [60000] (57.6 GB): refused before anything is built."""
    import resource

    sd = {"model.1.mlps.0.mlp.0.weight": torch.zeros(2, 2)}
    hp = {"in_features": 528, "mlp_features": [60000], "block_channels": [24, 24, 24, 24], "kernel_width": 32}
    path = tmp_path / "huge.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": hp, "pytorch-lightning_version": "1.8.6", "epoch": 0,
                "global_step": 0}, path)
    assert path.stat().st_size < 4000

    def limit() -> None:  # an address-space cap: an attempt to allocate the 57.6 GB fails instead of swapping
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "emgscale.models", "import-reference", str(path), "--out",
                           str(tmp_path / "out.pt")], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "huge.ckpt: state_dict does not match its hyper_parameters (missing tensor" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("over", [{}, {"frontend": {"mlp_features": [48, 32]},
                                       "tds": {"block_channels": [16, 32, 64]}}])
def test_reference_shapes_are_those_of_the_built_model(over: dict[str, Any]) -> None:
    """reference_shapes (computed without building) equals the built model's tensors in the reference layout."""
    from emgscale.config import from_dict
    from emgscale.models import ModelConfig, build_model
    from emgscale.models.reference import export_reference, reference_shapes

    base = {"arch": "tds", "features": {"kind": "log_spectrogram", "n_fft": 64, "hop_samples": 16, "norm": "batch"},
            "frontend": {"kind": "rotation_mlp", "mlp_features": [48], "offsets": [-1, 0, 1], "pooling": "mean"},
            "tds": {"block_channels": [24, 32], "kernel_width": 8, "feature_order": "channel_major"}}
    for k, v in over.items():
        base[k] = {**base[k], **v}
    cfg = from_dict(ModelConfig, base, "model")
    exported = export_reference(build_model(cfg))
    want = reference_shapes(cfg)
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: v for k, v in want.items() if k in exported}
    assert set(want) - set(exported) <= {"model.0.batch_norm.num_batches_tracked"}


def _stored(tmp_path: Path, shards: str) -> Path:
    """A checkpoint whose stored config reads its shards from ``shards``."""
    cfg = to_dict(TrainConfig())
    cfg["data"]["shards"] = shards
    cfg["run"]["out_dir"] = str(tmp_path / "theirs")
    return save_checkpoint(tmp_path / "stored.pt", Checkpoint(model={"w": torch.ones(1)}, config=cfg,
                                                             optimizer={}, scheduler={}))


@pytest.mark.parametrize("shards", ["pipe:touch {marker}", "PIPE:touch {marker}", " pipe:touch {marker}",
                                    "x.tar::pipe:touch {marker}", "{{pipe,x}}:touch {marker}"])
def test_resume_refuses_a_shell_url_stored_in_a_checkpoint(tmp_path: Path, shards: str) -> None:
    """--resume CKPT: a pipe: URL (any spelling) in the stored config is refused in one line naming key and file."""
    from emgscale.config import ConfigError
    from emgscale.train.config import resumed_config

    marker = tmp_path / "payload-ran"
    ckpt = _stored(tmp_path, shards.format(marker=marker))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(ckpt))}: data\.shards=.* would run a shell command"):
        resumed_config([], [f"run.out_dir={tmp_path / 'mine'}"], str(ckpt))
    assert not marker.exists()


def test_resume_refuses_a_shell_url_in_a_run_folders_config(tmp_path: Path) -> None:
    """--resume of a run folder: a pipe: URL in its config.yaml is refused too (it is not the command line's)."""
    from emgscale.config import ConfigError, save_config
    from emgscale.train.config import resumed_config

    cfg = TrainConfig()
    cfg.data.shards, cfg.run.out_dir = "pipe:cat /dev/null", str(tmp_path / "run")
    save_config(cfg, tmp_path / "run" / "config.yaml")
    with pytest.raises(ConfigError, match="config.yaml: data.shards='pipe:cat /dev/null' would run a shell command"):
        resumed_config([], [f"run.out_dir={tmp_path / 'run'}"], True)


def test_a_shell_url_the_user_gives_is_taken_and_resume_lists_the_stored_values(tmp_path: Path) -> None:
    """The same pipe: URL on the user's own command line is accepted; the note lists each stored value taken."""
    from emgscale.train.config import resumed_config

    url = "pipe:cat /dev/null"
    ckpt = _stored(tmp_path, url)
    cfg, _ = resumed_config([], [f"data.shards={url}"], str(ckpt))
    assert cfg.data.shards == url
    local = _stored(tmp_path, str(tmp_path / "shards"))
    cfg, note = resumed_config([], [], str(local))
    assert f"\n  data.shards = {str(tmp_path / 'shards')!r}" in note
    assert f"\n  run.out_dir = {str(tmp_path / 'theirs')!r}" in note


@pytest.mark.parametrize("name", ["train/a;touch x.tar", "../x.tar", "/etc/passwd", "a/$(id).tar", "a b.tar", "-x"])
def test_a_manifest_shard_name_that_is_not_a_plain_path_is_refused(name: str) -> None:
    """Shard names come from a manifest (data): one that could reach a shell or leave the folder is refused."""
    from emgscale.data.errors import DataError
    from emgscale.shard.manifest import shard_url

    assert shard_url("pipe:aws s3 cp s3://b/{name} -", "train/train-000000.tar") == \
        "pipe:aws s3 cp s3://b/train/train-000000.tar -"
    with pytest.raises(DataError, match="shard name .*refused"):
        shard_url("pipe:aws s3 cp s3://b/{name} -", name)


def test_runs_a_command_catches_every_pipe_spelling() -> None:
    """pipe: in any case, after blanks or tabs, after ::, or made by braces; plain paths and https are not."""
    from emgscale.config import runs_a_command

    for v in ["pipe:ls", "Pipe:ls", "\tpipe:ls", "pi\tpe:ls", "a.tar::pipe:ls", "p{i,x}pe:ls", ["a", "pipe:x"]]:
        assert runs_a_command(v), v
    for v in ["/data/shards", "/d/x-{000..009}.tar", "https://h/x-{0..9}.tar", "file:/x.tar", "s3://b/x", 3, None]:
        assert not runs_a_command(v), v


def test_swad_average_refuses_a_shell_url_in_the_runs_stored_config(tmp_path: Path, capsys) -> None:
    """`python -m emgscale.swad average RUN`: a pipe: shard URL stored in RUN's checkpoint is refused, exit 2."""
    from emgscale.swad.__main__ import main

    marker = tmp_path / "payload-ran"
    ckpt = _stored(tmp_path, f"pipe:touch {marker}")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt.rename(tmp_path / "run" / "checkpoints" / "last.pt")
    assert main(["average", str(tmp_path / "run")]) == 2
    assert "data.shards='pipe:touch" in capsys.readouterr().err and not marker.exists()
