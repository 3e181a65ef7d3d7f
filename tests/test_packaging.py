"""The built wheel carries the configs: an installed dgmrun works from any directory."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_in_a_fresh_venv_runs_from_any_directory(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("dgmrun-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dgmrun/conf/config.yaml" in names and "dgmrun/conf/model/vae.yaml" in names

    # A fresh venv that sees the already-installed dependencies (torch, lightning, ...) but not this checkout.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import dgmrun, dgmrun.conf; print(dgmrun.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert str(env_dir) in where, where  # the wheel's copy, not the checkout's

    out = subprocess.run([str(env_dir / "bin" / "dgmrun"), "trainer=debug", "hydra.run.dir=run"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (elsewhere / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (elsewhere / "run" / "metrics.json").is_file()
