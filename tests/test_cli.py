"""The command line answers fast and refuses bad input with a short message, without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import fake_mnist, run_dgmrun


def test_help_lists_every_group_without_importing_torch(tmp_path):
    code = ("import sys; from dgmrun.cli import main; sys.argv = ['dgmrun', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY' if {'torch', 'lightning'} & set(sys.modules) else 'LIGHT')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("LIGHT")
    for group, option in [("model", "vae"), ("data", "mnist"), ("data", "toy2d"), ("trainer", "ddp_cpu"),
                          ("logger", "wandb"), ("task", "sample")]:
        line = next((l for l in out.stdout.splitlines() if l.startswith(f"{group}:")), "")
        assert option in line, f"--help does not list {group}={option}:\n{out.stdout}"


def test_cfg_job_prints_the_config(tmp_path):
    out = run_dgmrun("--cfg", "job", "model.latent_dim=7", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "latent_dim: 7" in out.stdout


BAD_INPUTS = [
    (["model=no_such_model"], ["model=no_such_model: no such option", "vae"]),
    (["model.latnt_dim=3"], ["unknown key model.latnt_dim", "model.latent_dim"]),
    (["model.latent_dim=abc"], ["model.latent_dim", "int"]),
    (["model.latent_dim=-4"], ["model.latent_dim must be > 0"]),
    (["data.batch_size=0"], ["data.batch_size must be > 0"]),
    (["model.optimizer.lr=0"], ["model.optimizer.lr must be > 0"]),
    (["model.optimizer.lr=-1e-3"], ["model.optimizer.lr must be > 0"]),
    (["model.beta=lots"], ["model.beta", "float"]),
    (["data.binarize=sometimes"], ["data.binarize='sometimes' is not one of"]),
    (["data=toy2d", "model.arch=conv"], ["model.arch=conv needs images"]),
    (["data.binarize=none", "model.likelihood=bernoulli"], ["bernoulli needs binary data"]),
    (["trainer.max_steps=-5"], ["trainer.max_steps"]),
    (["sample.num=0"], ["sample.num must be > 0"]),
    (["task=sample"], ["task=sample needs a checkpoint"]),
    (["task=eval", "ckpt_path=does/not/exist.ckpt"], ["no such file", "does/not/exist.ckpt"]),
]


@pytest.mark.parametrize("args,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_refused_cleanly(tmp_path, args, expected):
    """One ``dgmrun: error:`` line naming the problem, and no (empty) run dir left behind."""
    out = run_dgmrun(*args, cwd=tmp_path, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgmrun: error: "), out.stderr
    for text in expected:
        assert text in out.stderr, f"{text!r} not in stderr:\n{out.stderr}"
    assert not (tmp_path / "outputs").exists()


def test_a_run_reads_its_data_from_another_root_without_naming_its_option(tmp_path):
    """The data of an MNIST run moved: ``task=eval ckpt_path=<run> data.root=<new place>`` alone finds it."""
    fake_mnist(tmp_path / "first")
    trained = run_dgmrun("data=mnist", f"data.root={tmp_path / 'first'}", "trainer=debug", "task.test=false",
                         "hydra.run.dir=run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    (tmp_path / "first").rename(tmp_path / "moved")
    evaluated = run_dgmrun("task=eval", "ckpt_path=run", "data.root=moved", "eval.num_importance_samples=2",
                           "trainer.limit_test_batches=1", "hydra.run.dir=eval", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/nll"] > 0
    assert OmegaConf.load(tmp_path / "eval" / "config.yaml").data.root == str(tmp_path / "moved")
