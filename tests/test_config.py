"""Config groups compose (Hydra's compose API, in process) and validate; the static data description
agrees with what the loaders produce."""

from __future__ import annotations

import sys
from importlib.resources import files

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dgmrun.errors import DgmrunError
from dgmrun.schema import DATA_SCHEMAS, validate
from tests.conftest import MNIST_SMALL


def options(group: str) -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in files("dgmrun.conf").joinpath(group).iterdir()
                  if p.name.endswith(".yaml"))


@pytest.mark.parametrize("group", ["task", "data", "trainer", "logger", "paths"])
def test_every_option_composes_and_validates(cfg_factory, group):
    for option in options(group):
        extra = {"train": [], "report": ["dir=."]}.get(option, ["ckpt_path=."]) if group == "task" else []
        cfg = cfg_factory(f"{group}={option}", *extra)
        if group == "task" and option not in ("train", "report"):
            with pytest.raises(DgmrunError, match="last.ckpt|checkpoint"):
                validate(cfg)  # '.' is a directory without a checkpoint: refused before any work
            continue
        validate(cfg)
        assert cfg[group] is not None


@pytest.mark.parametrize("model", options("model"))
def test_every_model_composes_with_its_natural_data(cfg_factory, model):
    if model == "vqvae_prior":  # needs the checkpoint of a trained VQ-VAE, and says so
        with pytest.raises(DgmrunError, match="model.vqvae_ckpt must be set"):
            validate(cfg_factory(f"model={model}"))
        return
    data = "toy2d" if any(k in model for k in ("gan", "gmmn")) and "dc" not in model else "digits"
    try:
        validate(cfg_factory(f"model={model}", f"data={data}"))
    except DgmrunError:
        validate(cfg_factory(f"model={model}", "data=mnist"))  # models made for 28 px images


def test_the_task_gets_the_checked_values(cfg_factory):
    cfg = cfg_factory("sample.num='3'", "model.latent_dim='4'", "trainer.max_epochs='2'", "data.batch_size='16'")
    assert cfg.sample.num == "3"  # OmegaConf keeps a quoted number a string
    validate(cfg)
    assert (cfg.sample.num, cfg.model.latent_dim, cfg.trainer.max_epochs, cfg.data.batch_size) == (3, 4, 2, 16)
    # An int is a number of batches to Lightning, a float a fraction: neither is turned into the other.
    limits = cfg_factory("trainer.limit_train_batches=1", "trainer.limit_val_batches=0.5")
    validate(limits)
    assert [type(v) for v in (limits.trainer.limit_train_batches, limits.trainer.limit_val_batches)] == [int, float]


@pytest.mark.parametrize("model,batch_size,refused", [("gan", 1, "at least 2"), ("infogan", 1, "at least 2"),
                                                       ("gan", 3, "multiple of model.pack=2"), ("gan", 4, None)])
def test_gan_batches_must_hold_whole_packs_of_two_or_more(cfg_factory, model, batch_size, refused):
    cfg = cfg_factory(f"model={model}", "data=toy2d" if model == "gan" else "data=digits", f"data.batch_size={batch_size}")
    if refused is None:
        validate(cfg)
        return
    with pytest.raises(DgmrunError, match=refused):
        validate(cfg)


def test_a_dgmrun_class_without_a_declaration_is_refused(cfg_factory):
    with pytest.raises(DgmrunError, match=r"model._target_=dgmrun.models.vae.BetterVAE has no declaration.*VAE"):
        validate(cfg_factory("model._target_=dgmrun.models.vae.BetterVAE"))
    with pytest.raises(DgmrunError, match=r"data._target_=dgmrun.data.datamodule.Mine has no declaration"):
        validate(cfg_factory("data._target_=dgmrun.data.datamodule.Mine"))


def test_a_users_own_model_must_say_how_to_binarize(cfg_factory):
    """A class of the user's own passes unchecked, but ``binarize=auto`` has no model declaration to follow."""
    own = ["model=nade", "model._target_=my_models.NADE"]
    with pytest.raises(DgmrunError, match="data.binarize=auto: model my_models.NADE declares no choice"):
        validate(cfg_factory(*own))
    cfg = cfg_factory(*own, "data.binarize=dynamic")
    validate(cfg)
    assert cfg.data.binarize == "dynamic"


def test_the_run_dir_and_the_checkpoint_record_what_auto_meant(cfg_factory, tmp_path):
    from omegaconf import OmegaConf

    from dgmrun.checkpoint import read_checkpoint
    from dgmrun.tasks.train import train

    cfg = cfg_factory("trainer=debug", "task.test=false", "sample.every_n_epochs=0", "trainer.enable_progress_bar=false")
    assert (cfg.model.arch, cfg.model.likelihood, cfg.data.binarize) == ("auto", "auto", "auto")
    validate(cfg)
    train(cfg)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    stored = OmegaConf.create(read_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))["dgmrun"]["config"])
    for config in (saved, stored):  # the 8x8 digits: an MLP, and Bernoulli pixels for the binarized data
        assert (config.model.arch, config.model.likelihood, config.data.binarize) == ("mlp", "bernoulli", "dynamic")


def test_relative_roots_become_absolute(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = cfg_factory("data=mnist", "data.root=some/where")
    validate(cfg)
    assert cfg.data.root == str(tmp_path / "some" / "where")


NEEDS_MNIST_SMALL = pytest.mark.skipif(not (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists(),
                                       reason=f"real MNIST digits not found at {MNIST_SMALL} (see ../shared/data/README.md)")


@pytest.mark.parametrize("overrides", [["data=digits"], ["data=digits", "data.binarize=none"],
                                       ["data=toy2d", "data.num_train=500"],
                                       pytest.param(["data=mnist", f"data.root={MNIST_SMALL}"], marks=NEEDS_MNIST_SMALL)])
def test_static_data_description_matches_the_loader(cfg_factory, overrides):
    cfg = cfg_factory(*overrides)
    validate(cfg)
    predicted = DATA_SCHEMAS[cfg.data._target_](**{k: v for k, v in cfg.data.items()}).info()
    assert instantiate(cfg.data).info == predicted


@pytest.mark.parametrize("model", ["gan", "cgan", "rbm"])
def test_gradient_clipping_is_refused_for_models_that_step_their_own_optimizers(cfg_factory, model):
    with pytest.raises(DgmrunError, match="steps its optimizers itself.*remove trainer.gradient_clip_val"):
        validate(cfg_factory(f"model={model}", "trainer.gradient_clip_val=1.0"))
    validate(cfg_factory("model=vae", "trainer.gradient_clip_val=1.0"))  # automatic optimization clips


@pytest.mark.parametrize("model,expected", [("vae", "dynamic"), ("nade", "dynamic"), ("dcgan", "none"),
                                            ("cgan", "none"), ("gmmn", "none")])
def test_binarize_auto_is_the_models_choice(cfg_factory, model, expected):
    cfg = cfg_factory(f"model={model}", "data=mnist")
    assert cfg.data.binarize == "auto"
    validate(cfg)
    assert cfg.data.binarize == expected
    scoring = cfg_factory(f"model={model}", "data=mnist", "task=eval", "eval.samples=samples.npz")
    validate(scoring)
    assert scoring.data.binarize == "none"  # scoring files: no model decides, the data are taken as they are
    explicit = cfg_factory(f"model={model}", "data=mnist", "data.binarize=static")
    validate(explicit)
    assert explicit.data.binarize == "static"


def test_binarize_auto_waits_for_the_checkpoints_model(cfg_factory, tmp_path):
    """``task=eval ckpt_path=<a GAN run> data=mnist``: auto is resolved by the GAN of the checkpoint,
    not by the default model of the command line."""
    from dgmrun.checkpoint import merge_with_checkpoint

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    cfg = cfg_factory("task=eval", "data=mnist", f"ckpt_path={ckpt}")
    validate(cfg)
    assert cfg.data.binarize == "auto"
    stored = {"model": dict(cfg_factory("model=dcgan").model), "data": dict(cfg_factory("data=digits").data)}
    merged = merge_with_checkpoint(cfg, stored, ["task=eval", "data=mnist", f"ckpt_path={ckpt}"])
    validate(merged, checkpoint_merged=True)
    assert merged.data.name == "mnist" and merged.data.binarize == "none"


def test_a_checkpoint_fixes_its_model(cfg_factory, tmp_path):
    """``model=`` with a checkpoint: the same class keeps the checkpoint's settings (command-line keys on
    top), another class is refused by name; ``data=`` replaces the stored data, whose shape must fit."""
    from dgmrun.checkpoint import merge_with_checkpoint
    from dgmrun.data.info import DataInfo

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    stored_cfg = cfg_factory("model.latent_dim=7")
    stored = {"model": dict(stored_cfg.model), "data": dict(stored_cfg.data)}

    def merge(*overrides: str):
        args = ["task=eval", f"ckpt_path={ckpt}", *overrides]
        return merge_with_checkpoint(cfg_factory(*args), stored, args)

    same = merge("model=beta_vae", "model.beta=2")
    assert (same.model.latent_dim, same.model.beta, same.model.kl_warmup_steps) == (7, 2.0, 0)
    with pytest.raises(DgmrunError, match=r"checkpoint of model VAE \(dgmrun.models.vae.VAE\), but model=gan"):
        merge("model=gan")
    trained_on = DataInfo("digits", (1, 8, 8))
    validate(merge("data=digits", "data.test_fraction=0.3"), checkpoint_merged=True, trained_on=trained_on)
    with pytest.raises(DgmrunError, match=r"digits of shape \(1, 8, 8\), but data=cifar10 gives \(3, 32, 32\)"):
        validate(merge("data=cifar10"), checkpoint_merged=True, trained_on=trained_on)


def test_keys_of_a_checkpoints_groups_need_no_option_named(cfg_factory, tmp_path):
    """``ckpt_path=<an IWAE run on MNIST> data.root=B model.k=7``: the keys change the checkpoint's own
    settings (which the default option, the 8x8 digits' VAE, lacks) and are checked against them."""
    from dgmrun.checkpoint import merge_with_checkpoint
    from dgmrun.cli import onto_checkpoint

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    stored_cfg = cfg_factory("model=iwae", "model.k=5", "data=mnist", "data.root=/a", "data.batch_size=20")
    stored = {group: OmegaConf.to_container(stored_cfg[group]) for group in ("model", "data")}

    def merge(*overrides: str):
        args = onto_checkpoint(["task=eval", f"ckpt_path={ckpt}", *overrides])
        cfg = cfg_factory(*args)
        validate(cfg)
        merged = merge_with_checkpoint(cfg, stored, args)
        validate(merged, checkpoint_merged=True)
        return merged

    merged = merge("data.root=/b", "model.k=7")
    assert (merged.data.name, merged.data.root, merged.data.batch_size) == ("mnist", "/b", 20)
    assert (merged.model._target_, merged.model.k) == ("dgmrun.models.iwae.IWAE", 7)
    with pytest.raises(DgmrunError, match=r"unknown key data.rooot; did you mean data.root\? \(data takes: "):
        merge("data.rooot=/b")
    with pytest.raises(DgmrunError, match="unknown key model.kk; did you mean model.k"):
        merge("model.kk=7")
    fresh = onto_checkpoint(["task=eval", f"ckpt_path={ckpt}", "data=mnist", "data.root=/c", "model.k=7"])
    assert fresh[-3:] == ["data=mnist", "data.root=/c", "++model.k=7"]  # a group chosen anew: Hydra checks it
    assert onto_checkpoint(["data.root=/c"]) == ["data.root=/c"]  # no checkpoint: the default option's keys


@pytest.mark.parametrize("model,kept", [("ddpm", True), ("vae", False)])
def test_a_checkpoint_keeps_the_sampler_options_its_model_declares(cfg_factory, tmp_path, model, kept):
    """A DDPM preset's DDIM sampler stays with its checkpoint for task=sample (unless the command line sets
    it); a model without sampler options takes the sample group of the new command."""
    from dgmrun.checkpoint import merge_with_checkpoint

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    stored_cfg = cfg_factory(f"model={model}", "sample.sampler=ddim", "sample.steps=7", "sample.num=9")
    stored = {group: OmegaConf.to_container(stored_cfg[group]) for group in ("model", "data", "sample")}

    def merge(*overrides: str):
        args = ["task=sample", f"ckpt_path={ckpt}", *overrides]
        return merge_with_checkpoint(cfg_factory(*args), stored, args)

    merged = merge()
    assert (merged.sample.sampler, merged.sample.steps) == (("ddim", 7) if kept else ("ddpm", 50))
    assert merged.sample.num == 64  # not a sampler option: the new run's
    assert merge("sample.steps=3").sample.steps == 3


@pytest.mark.parametrize("group,schemas", [("model", "MODEL_SCHEMAS"), ("data", "DATA_SCHEMAS")])
def test_every_option_has_exactly_the_keys_of_its_declaration(cfg_factory, group, schemas):
    """Each option starts from its class's declaration (``/schema/<group>/<Class>``): the composed config
    has every declared key with its default unless the option sets it, and no key of its own."""
    import dataclasses

    import dgmrun.schema

    declared = getattr(dgmrun.schema, schemas)
    for option in options(group):
        node = cfg_factory(f"{group}={option}")[group]
        schema = declared[node._target_]
        assert set(node.keys()) == {f.name for f in dataclasses.fields(schema)}, option
        yaml = files("dgmrun.conf").joinpath(group, f"{option}.yaml").read_text()
        defaults = OmegaConf.structured(schema)
        for key in node:
            if f"\n{key}:" not in yaml and key != "_target_" and not OmegaConf.is_missing(node, key):
                assert node[key] == defaults[key], (option, key)


def test_constructors_have_no_defaults_of_their_own():
    """Every setting's default is its declaration's: a default in a constructor could drift from it."""
    import inspect

    from hydra.utils import get_class

    from dgmrun.schema import DATA_SCHEMAS, MODEL_SCHEMAS

    for target in [*MODEL_SCHEMAS, *DATA_SCHEMAS]:
        parameters = inspect.signature(get_class(target).__init__).parameters.values()
        with_defaults = [p.name for p in parameters if p.default is not inspect.Parameter.empty]
        assert not with_defaults, (target, with_defaults)


def test_the_tasks_of_one_slurm_job_share_a_run_dir_and_its_commands_do_not(monkeypatch):
    """``srun dgmrun ...`` with several tasks starts the command once per rank, seconds apart, and a requeued
    job starts it again: one run dir (by job, step and command line); another command of the job: another dir."""
    import re

    from dgmrun.schema import run_stamp

    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", run_stamp())
    monkeypatch.setattr(sys, "argv", ["dgmrun", "model=vae", "seed=0"])
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    first = run_stamp()
    assert re.fullmatch(r"slurm-77\.3-[0-9a-f]{6}", first) and run_stamp() == first
    monkeypatch.setattr(sys, "argv", ["dgmrun", "model=vae", "seed=1"])
    assert run_stamp() != first and run_stamp().startswith("slurm-77.3-")
    monkeypatch.delenv("SLURM_STEP_ID")  # dgmrun in the batch script itself
    assert re.fullmatch(r"slurm-77-[0-9a-f]{6}", run_stamp())
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # a shell on a node: runs as anywhere else
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", run_stamp())
