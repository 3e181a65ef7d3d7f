"""The built wheel is complete: installed where the checkout cannot be imported, dgmrun runs from any directory.

An editable install hides a package missing from the wheel (its import hook serves it from the
checkout), so the wheel is installed into a venv of its own that sees the dependencies (torch,
lightning, hydra, ...) but neither the checkout nor the editable install's hook.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile

from tests.conftest import REPO

# Not marked slow: the wheel is checked in every run of the suite.

IMPORT_EVERY_MODULE = """
import importlib, pkgutil, dgmrun, dgmrun.conf
for m in pkgutil.walk_packages(dgmrun.__path__, "dgmrun."):
    importlib.import_module(m.name)
print(dgmrun.__file__)
"""


def test_wheel_in_a_venv_without_the_checkout_runs_from_any_directory(tmp_path):
    # Built from a copy of the sources: an in-tree build/ left by an earlier build could supply what is missing.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                                "outputs", "multirun", "wandb", ".venv*", ".whl"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("dgmrun-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "dgmrun").rglob("__init__.py")}
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"packages left out of the wheel: {missing}"
    assert "dgmrun/conf/config.yaml" in names and "dgmrun/conf/model/vae.yaml" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies as plain paths: the .pth files there (the editable install's hook among them) are not run.
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (tmp_path / "venv" / site.split(str(env_dir) + "/", 1)[1] / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", site, str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([str(python), "-c", IMPORT_EVERY_MODULE], cwd=elsewhere, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith(str(env_dir)), out.stdout  # the wheel's copy, not the checkout's

    console_script = "from dgmrun.cli import main; import sys; sys.argv[0] = 'dgmrun'; main()"
    out = subprocess.run([str(python), "-c", console_script, "trainer=debug", "hydra.run.dir=run"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (elsewhere / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (elsewhere / "run" / "metrics.json").is_file()
