"""The library does not lean on the checkout: configs and benchmark definitions ship inside the package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json
from emgscale.bench.runner import load_definition, shipped_definitions
from emgscale.config import shipped_configs
from emgscale.train.config import load_train_config
names = sorted(p.stem for p in shipped_definitions().glob('*.yaml'))
load_definition(shipped_definitions(), 'zero_shot', 'small')
cfg = load_train_config(['configs/single_user.yaml', 'configs/models/tds_small.yaml'], [])
print(json.dumps({'definitions': names, 'models': len(list((shipped_configs() / 'models').glob('*.yaml'))),
                  'tds': cfg.model.tds.block_channels, 'configs': str(shipped_configs())}))
"""


def _probe(pythonpath: Path, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _package_data() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["emgscale"]


def test_package_data_covers_every_shipped_yaml():
    """Every YAML under emgscale/configs/ and emgscale/bench/definitions/ matches a package-data glob."""
    pkg = REPO / "emgscale"
    covered = {p for pattern in _package_data() for p in pkg.glob(pattern)}
    shipped = [*pkg.glob("configs/**/*.yaml"), *pkg.glob("bench/definitions/*.yaml")]
    assert len(shipped) > 30 and not [str(p.relative_to(pkg)) for p in shipped if p not in covered]


def test_configs_and_definitions_are_found_from_another_working_folder(tmp_path):
    """From a folder that is not the checkout, `configs/models/tds_small.yaml` and the definitions still load."""
    got = _probe(REPO, tmp_path)
    assert {"zero_shot", "personalized", "single_user"} <= set(got["definitions"]) and got["models"] > 10
    assert got["tds"] == [16, 16, 16, 16] and got["configs"].startswith(str(REPO / "emgscale"))


@pytest.mark.slow
def test_a_built_wheel_runs_outside_the_checkout(tmp_path):
    """`pip wheel .` holds the YAMLs, and the unpacked wheel alone (no checkout on the path) finds them."""
    src = tmp_path / "src"  # a copy: setuptools writes build/ beside the sources
    shutil.copytree(REPO / "emgscale", src / "emgscale", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(tmp_path / "whl"), "--no-deps",
                            "--no-build-isolation", "-q"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip()[-300:]}")
    wheel = next((tmp_path / "whl").glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(tmp_path / "site")
    assert "emgscale/configs/models/tds_small.yaml" in names and "emgscale/bench/definitions/zero_shot.yaml" in names
    work = tmp_path / "elsewhere"
    work.mkdir()
    got = _probe(tmp_path / "site", work)
    assert got["configs"] == str(tmp_path / "site" / "emgscale" / "configs") and "zero_shot" in got["definitions"]
