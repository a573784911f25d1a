"""The README's short commands run as written (on a tiny synthetic corpus in a scratch working directory)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Overrides that make the README's first training command take seconds (the resume line is run as written).
QUICK = ["run.max_epochs=1", "run.steps_per_epoch=1", "data.batch_size=2", "run.val_max_batches=1",
         "run.bf16=false", "run.threads=1", "run.tensorboard=false"]


def readme_command(prefix: str) -> str:
    """The one line of README.md's code blocks that starts with ``prefix`` (without its comment)."""
    lines = [line.split("  #")[0].strip() for line in (REPO / "README.md").read_text().splitlines()]
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"README.md has {len(found)} lines starting with {prefix!r}"
    return found[0]


def _sh(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMGSCALE_PROGRESS": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = re.sub(r"^python ", shlex.quote(sys.executable) + " ", cmd)
    p = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
def test_readme_train_resume_and_eval_lines_run_as_written(tmp_path):
    """train (tds_small) -> the README's resume line as written -> lm build -> eval lines, in one working dir:
    the resumed run keeps its TDS-small model and reaches the new epoch count; eval writes its JSON."""
    (tmp_path / "emgscale").symlink_to(REPO / "emgscale")  # configs/... names the package's shipped configs
    _sh("python -m emgscale.synth --out data/synth --users 2 --sessions-per-user 4 --minutes 0.3 --heldout-users 1 "
        "val_sessions_per_user=1 test_sessions_per_user=1 min_train_sessions_per_user=1", tmp_path)
    _sh(readme_command("python -m emgscale.train configs/single_user.yaml configs/models/tds_small.yaml")
        + " " + " ".join(QUICK), tmp_path)
    resume = readme_command("python -m emgscale.train configs/single_user.yaml run.max_epochs=40 --resume")
    p = _sh(resume, tmp_path)
    assert "config from runs/single_user/config.yaml" in p.stdout
    from emgscale.models.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "runs/single_user/checkpoints/last.pt")
    assert ck.epoch == 40 and ck.config["model"]["tds"]["block_channels"] == [16, 16, 16, 16]
    _sh(readme_command("python -m emgscale.lm build"), tmp_path)
    _sh(readme_command("python -m emgscale.eval runs/single_user/checkpoints/best.pt"), tmp_path)
    result = json.loads((tmp_path / "runs/single_user/checkpoints/eval-single_user-test-beam.json").read_text())
    assert result["per_session"] and all({"decoded", "target"} <= set(v) for v in result["per_session"].values())
    # The form: an override after the options.
    _sh("python -m emgscale.eval runs/single_user/checkpoints/best.pt --split val --decoder beam --lm lm/char6.bin "
        "decoder.lm_weight=1.0", tmp_path)
    val = json.loads((tmp_path / "runs/single_user/checkpoints/eval-single_user-val-beam.json").read_text())
    assert val["decoder"]["lm_weight"] == 1.0


def test_documented_outputs_land_in_git_ignored_folders():
    """Every --out/--json/--confusion/--plot path in the docs' commands is git-ignored (so
    `ray job submit --working-dir .`, which honours .gitignore, does not upload it)."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    docs = [REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "benchmarks" / "README.md",
            REPO / "cluster" / "README.md", REPO / "sharding" / "README.md"]
    outs = {m.group(2) for f in docs for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", f.read_text(), re.S)
            for m in re.finditer(r"--(out|json|confusion|plot|arpa)[ =]([\w./-]+)", block)}
    outs = sorted(o for o in outs if not o.startswith(("$", "/")) and o == o.lower())  # not placeholders
    assert len(outs) >= 5
    kept = [o for o in outs
            if subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", o]).returncode]
    assert not kept, f"documented outputs that git would track: {kept}"
