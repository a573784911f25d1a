"""Fast feedback: a config is parsed and checked before torch is imported, so a typo comes back at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); its last stdout line as JSON."""
    env_path = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_model_configs_load_without_torch():
    """Every configs/models/*.yaml builds its ModelConfig (and the encoder sections) with torch never imported."""
    got = _run(
        "import json, sys; from pathlib import Path\n"
        "from emgscale.config import build_config, load_yaml, shipped_configs\n"
        "from emgscale.models.config import ModelConfig\n"
        "n = 0\n"
        "for p in sorted((shipped_configs() / 'models').glob('*.yaml')):\n"
        "    build_config(ModelConfig, [], [], base=load_yaml(p).get('model', {})); n += 1\n"
        "print(json.dumps({'n': n, 'torch': 'torch' in sys.modules}))")
    assert got["n"] > 10 and got["torch"] is False


def test_train_config_typo_is_reported_before_torch_is_imported():
    """`load_train_config` + `check_train_config` of configs/single_user.yaml, and a typo'd key, import no torch."""
    probe = _run("import json, sys; import emgscale.loader.base; print(json.dumps({'torch': 'torch' in sys.modules}))")
    if probe["torch"]:
        pytest.skip("emgscale.loader.base still imports torch (issue 22 step 1 makes DataConfig torch-free)")
    got = _run(
        "import json, sys\n"
        "from emgscale.config import ConfigError\n"
        "from emgscale.train.config import check_train_config, load_train_config\n"
        "cfg = load_train_config(['configs/single_user.yaml'], ['data.data_root=.', 'data.split=pyproject.toml'])\n"
        "check_train_config(cfg)\n"
        "try:\n"
        "    load_train_config(['configs/single_user.yaml'], ['model.nosuchkey=1'])\n"
        "    err = ''\n"
        "except ConfigError as e:\n"
        "    err = str(e)\n"
        "print(json.dumps({'err': err, 'torch': 'torch' in sys.modules}))")
    assert "model.nosuchkey" in got["err"] and got["torch"] is False


def test_builtin_names_match_the_registries():
    """The torch-free lists of built-in model.arch / loss.kind names are exactly the registries' built-ins."""
    from emgscale.models import ENCODERS
    from emgscale.models.config import BUILTIN_ARCHS
    from emgscale.train.config import BUILTIN_OBJECTIVES
    from emgscale.train.objective import OBJECTIVES

    assert set(BUILTIN_ARCHS) <= set(ENCODERS) and set(BUILTIN_OBJECTIVES) <= set(OBJECTIVES)


@pytest.mark.parametrize("argv", [["emgscale.train", "configs/single_user.yaml", "model.nosuchkey=1"],
                                  ["emgscale.bench", "zero_shot", "model.nosuchkey=1"],
                                  ["emgscale.tune", "configs/tune/lr_arch.yaml", "nosuchkey=1"]])
def test_cli_reports_a_config_typo_without_importing_torch(argv, tmp_path):
    """`python -m emgscale.<cli> ... <typo>` exits 2 with one line naming the key, and never imports torch."""
    probe = _run("import json, sys; import emgscale.loader.base; print(json.dumps({'torch': 'torch' in sys.modules}))")
    if probe["torch"]:
        pytest.skip("emgscale.loader.base still imports torch (issue 22 step 1 makes DataConfig torch-free)")
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", *argv], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    errors = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert out.returncode == 2 and len(errors) == 1 and "nosuchkey" in errors[0]
    assert "torch" not in imported
