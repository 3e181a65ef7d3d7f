"""Clear answers to bad input, through the installed ``dgmrun`` command: one ``dgmrun: error:`` line that
names what is wrong, a non-zero exit, no traceback, and no run dir left behind by a refused config."""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException

from dgmrun.checkpoint import read_checkpoint
from dgmrun.cli import user_error
from dgmrun.errors import DgmrunError
from dgmrun.schema.data import IMAGE_DATASETS
from tests.conftest import compose_config, run_dgmrun

# Phrases that must never reach the user: Hydra's and torch's own reports and advice.
FOREIGN = ("Traceback", "Error in call to target", "weights_only=False", "`weights_only` set to `False`",
           "To append to your config use +", "HYDRA_FULL_ERROR")


def refusal(out, *needles: str) -> str:
    """The one error line of a refused command, checked to name every needle."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0, out.stdout + out.stderr
    assert len(lines) == 1 and lines[0].startswith("dgmrun: error: "), out.stderr
    for text in FOREIGN:
        assert text not in out.stderr + out.stdout, out.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


def assert_no_run_dir(cwd: Path) -> None:
    left = [p for p in ("outputs", "multirun") if (cwd / p).exists()]
    assert not left, f"left behind: {[str(p) for d in left for p in (cwd / d).rglob('*')]}"


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    """A VAE trained on the 8x8 digits for one batch: a real checkpoint to misuse."""
    cwd = tmp_path_factory.mktemp("vae")
    out = run_dgmrun("trainer=debug", "task.test=false", "hydra.run.dir=run", cwd=cwd)
    assert out.returncode == 0, out.stderr
    return cwd / "run"


# ------------------------------------------------------------------------------ the config alone
def test_misspelled_key_names_the_closest_valid_keys(tmp_path):
    line = refusal(run_dgmrun("model.latnt_dim=3", cwd=tmp_path, timeout=60),
                   "unknown key model.latnt_dim", "did you mean model.latent_dim?")
    assert "+" not in line
    assert_no_run_dir(tmp_path)


@pytest.mark.parametrize("override,expected", [
    ("model.optimizer.lrr=1e-3", "unknown key model.optimizer.lrr; did you mean model.optimizer.lr?"),
    ("model.optimzer.lr=1e-3", "unknown key model.optimzer; did you mean model.optimizer?"),
    ("traner.max_epochs=3", "unknown key traner; did you mean trainer?"),
    ("model=vea", "model=vea: no such option; did you mean model=vae?"),
])
def test_composition_errors_are_reworded(override, expected):
    with pytest.raises(HydraException) as refused:
        compose_config([override])
    GlobalHydra.instance().clear()
    assert user_error(refused.value).startswith(expected)


def test_a_data_key_the_checkpoints_data_lacks_is_refused_with_its_keys(tmp_path, vae_run):
    """``task=eval ckpt_path=<a digits run> data.root=...``: the key is checked against the checkpoint's data
    (the 8x8 digits are embedded and have no root), not against a default option."""
    line = refusal(run_dgmrun("task=eval", f"ckpt_path={vae_run}", "data.root=somewhere", cwd=tmp_path, timeout=60),
                   "unknown key data.root", "(data takes: batch_size")
    assert "did you mean" not in line


@pytest.mark.parametrize("override", ["trainer.devices=0", "trainer.precision=nope", "+trainer.foo=3"])
def test_trainer_settings_lightning_refuses_leave_no_logger_files(tmp_path, override):
    """Refused by Lightning when the Trainer is built: before the CSV logger has written into the run dir."""
    from dgmrun.schema import validate
    from dgmrun.tasks.train import train

    cfg = compose_config(["logger=csv", override], tmp_path / "run")
    validate(cfg)
    with pytest.raises(DgmrunError, match="trainer settings rejected by Lightning"):
        train(cfg)
    GlobalHydra.instance().clear()
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_seed_of_the_wrong_type_is_reported_as_seed(tmp_path):
    line = refusal(run_dgmrun("seed=[1,2]", cwd=tmp_path, timeout=60), "seed=[1, 2]", "int")
    assert "data.seed" not in line
    assert_no_run_dir(tmp_path)


def test_fractions_leaving_no_training_data_are_refused_before_the_data_module(tmp_path):
    refusal(run_dgmrun("data.val_fraction=0.9", "data.test_fraction=0.5", cwd=tmp_path, timeout=60),
            "data.val_fraction + data.test_fraction", "0.9 + 0.5")
    assert_no_run_dir(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_without_a_gpu(tmp_path):
    refusal(run_dgmrun("trainer=gpu", cwd=tmp_path, timeout=120), "trainer.accelerator=gpu", "no GPU", "trainer=cpu")
    assert_no_run_dir(tmp_path)


def test_dgmrun_error_inside_a_target_is_shown_as_is(tmp_path):
    """A user's own data module (a ``_target_`` dgmrun does not check) refusing its settings while Hydra
    instantiates it: its own message, not Hydra's "Error in call to target"."""
    (tmp_path / "my_data.py").write_text(
        "from dgmrun.errors import DgmrunError\n\n\n"
        "def refuse(**settings):\n"
        "    raise DgmrunError(f\"my_data cannot use batch_size={settings['batch_size']}\")\n")
    out = run_dgmrun("data=toy2d", "data._target_=my_data.refuse", "data.batch_size=7", cwd=tmp_path, timeout=120,
                     env={"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))})
    assert refusal(out) == "dgmrun: error: my_data cannot use batch_size=7"
    assert_no_run_dir(tmp_path)


@pytest.mark.parametrize("args", [["-m", "data.batch_size=0,-1"], ["-m", "model.latnt_dim=3,4"], ["-m", "--cfg", "job"]])
def test_refused_sweep_leaves_no_sweep_dir(tmp_path, args):
    out = run_dgmrun(*args, cwd=tmp_path, timeout=60)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and lines[-1].startswith("dgmrun: error: "), out.stderr
    for text in FOREIGN:  # Hydra's advice to set HYDRA_FULL_ERROR, say
        assert text not in out.stderr, out.stderr
    assert_no_run_dir(tmp_path)


def test_refusal_keeps_a_run_dir_that_holds_anything_else(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refusal(run_dgmrun("data.batch_size=0", "hydra.run.dir=mine", cwd=tmp_path, timeout=60), "data.batch_size")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------- with a checkpoint
@pytest.mark.parametrize("task", ["sample", "train"])
def test_checkpoint_of_another_model_says_whose_it_is(tmp_path, vae_run, task):
    refusal(run_dgmrun(f"task={task}", "model=gan", f"ckpt_path={vae_run}", "trainer=debug", cwd=tmp_path, timeout=120),
            "checkpoint of model VAE (dgmrun.models.vae.VAE)", "model=gan (dgmrun.models.gan.GAN)", "drop model=gan")
    assert_no_run_dir(tmp_path)


def test_shape_changing_override_on_resume_is_refused(tmp_path, vae_run):
    refusal(run_dgmrun("model.latent_dim=3", f"ckpt_path={vae_run}", "trainer=debug", cwd=tmp_path, timeout=120),
            "do not fit", "size mismatch")
    assert_no_run_dir(tmp_path)


def test_eval_on_data_of_another_shape_names_both_shapes_before_reading_data(tmp_path, vae_run):
    """data.root is empty: the refusal must come from the shapes alone, before any file is read."""
    trained = tuple(torch.load(vae_run / "checkpoints" / "last.ckpt", weights_only=True)
                    ["hyper_parameters"]["data_info"]["shape"])
    mnist = IMAGE_DATASETS["mnist"][0]
    assert trained != mnist
    refusal(run_dgmrun("task=eval", "data=mnist", f"data.root={tmp_path}", f"ckpt_path={vae_run}",
                       cwd=tmp_path, timeout=120), f"digits of shape {trained}", f"data=mnist gives {mnist}")
    assert_no_run_dir(tmp_path)


class RunsCode:
    """Unpickled without a safe loader, it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


BAD_CHECKPOINTS = ("random", "zip", "truncated", "torch_code", "pickle_code")


def bad_checkpoint(kind: str, folder: Path, real: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("hello.txt", "not a torch file")
    elif kind == "truncated":
        data = real.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "torch_code":
        torch.save({"state_dict": RunsCode(folder / "code_ran")}, path)
    else:
        path.write_bytes(pickle.dumps(RunsCode(folder / "code_ran")))
    return path


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_unreadable_checkpoint_is_named_without_torchs_advice(tmp_path, vae_run, kind):
    bad = bad_checkpoint(kind, tmp_path, vae_run / "checkpoints" / "last.ckpt")
    with pytest.raises(DgmrunError) as refused:
        read_checkpoint(bad)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"cannot read checkpoint {bad}: not a dgmrun checkpoint")
    assert "weights_only" not in message
    assert not (tmp_path / "code_ran").exists()


def test_unreadable_checkpoint_through_the_command(tmp_path, vae_run):
    bad = bad_checkpoint("torch_code", tmp_path, vae_run / "checkpoints" / "last.ckpt")
    line = refusal(run_dgmrun("task=eval", f"ckpt_path={bad}", cwd=tmp_path, timeout=120), f"cannot read checkpoint {bad}")
    assert "weights_only" not in line
    assert not (tmp_path / "code_ran").exists()
    assert_no_run_dir(tmp_path)


def test_seed_outside_numpys_range_is_refused_in_one_line(tmp_path):
    # seed=-1 ended in numpy's "Seed must be between 0 and 2**32 - 1" traceback (found by the catalogue).
    for seed in ("-1", str(2**32)):
        refusal(run_dgmrun(f"seed={seed}", cwd=tmp_path, timeout=60), "seed must be in [0, 2**32)", seed)
        assert_no_run_dir(tmp_path)
