"""Fuzzing the configs: random overrides either train one ``trainer=debug`` step or end in a DgmrunError.

Hypothesis draws, for a model of ``conf/model/*.yaml`` and a data option (digits, toy2d, mnist-small,
a tiny image folder, a tiny CIFAR-10), a few overrides of the keys of their typed configs
(``dgmrun.schema``): ints (0, negatives, huge), floats (0, negatives, nan, inf, huge), choices (a known
one or junk), bools, lists (empty, wrong lengths), nulls and values of the wrong type. Each config is
validated and trained in process for one debug step. A ``DgmrunError`` (the one-line message of the
console script) or success passes; any other exception is a finding, shown with the overrides after
Hypothesis has shrunk them.

The committed run is small and reproducible (``derandomize``: the same 15 examples every time, ~20 s of
CPU on one thread). A deeper local run, e.g. 3000 examples with fresh randomness::

    OMP_NUM_THREADS=1 FUZZ_EXAMPLES=3000 FUZZ_RANDOM=1 python -m pytest -q tests/test_fuzz.py -x

What is not drawn, on purpose: huge loop counts (``cd_k``, Gibbs steps, ``num_layers``, ``n_critic``,
the data sizes of toy2d), which are long runs rather than mistakes, and huge widths between 2**20 and
2**40, which a machine may or may not be able to allocate.
"""

from __future__ import annotations

import logging
import os
import pickle
import typing
from dataclasses import fields, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import MISSING, OmegaConf
from PIL import Image

from dgmrun.errors import DgmrunError
from dgmrun.schema import DATA_SCHEMAS, MODEL_SCHEMAS, validate
from dgmrun.schema.base import OPTIMIZERS, SCHEDULERS
from dgmrun.schema.data import BINARIZE, TOY2D_SHAPES
from dgmrun.schema.gan import CONDITIONINGS, GAN_ARCHS, GAN_LOSSES, GAN_NOISES, GMMN_SPACES
from dgmrun.schema.vae import VAE_ARCHS, VAE_LIKELIHOODS
from tests.conftest import MNIST_SMALL, compose_config, run_dgmrun
from tests.test_config import options

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
MODELS = [m for m in options("model") if m != "vqvae_prior"]  # its vqvae_ckpt: the catalogue's cases

# The known values of each choice key, by its last name (a junk string is drawn as well).
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": tuple(sorted(set(VAE_ARCHS + GAN_ARCHS))), "likelihood": VAE_LIKELIHOODS, "loss": GAN_LOSSES,
    "noise": GAN_NOISES, "space": GMMN_SPACES, "conditioning": CONDITIONINGS, "visible": ("auto", "bernoulli", "gaussian"),
    "name": OPTIMIZERS, "binarize": BINARIZE, "shape": TOY2D_SHAPES,
}
# Counts of loops, of examples to make, or of processes to start: huge values are long runs (or a fork
# bomb, for data.num_workers), not mistakes a config check could tell.
LOOP_COUNTS = {"cd_k", "sample_gibbs_steps", "num_layers", "n_critic", "num_train", "num_val", "num_test",
               "kl_warmup_steps", "num_workers", "num"}
# Keys not drawn: names and paths the data options fix, and the data seed (an interpolation of ``seed``).
FIXED = {"_target_", "name", "root", "seed", "vqvae_ckpt"}


# ------------------------------------------------------------------------------------------ data
@lru_cache(maxsize=None)
def tiny_image_folder(root: str) -> str:
    """20 PNGs of 12x9 px (RGB and grey, so that ``load_image`` converts and crops)."""
    folder = Path(root) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(20):
        pixels = rng.integers(0, 256, size=(9, 12, 3) if i % 2 else (9, 12), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return str(folder)


@lru_cache(maxsize=None)
def tiny_cifar10(root: str) -> str:
    """The six CIFAR-10 python batches, 20 random images each."""
    folder = Path(root) / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(20, 3072), dtype=np.uint8), b"labels": [int(v) for v in rng.integers(0, 10, 20)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return str(folder)


def data_overrides(data: str, root: Path) -> list[str]:
    if data == "mnist":
        return ["data=mnist", f"data.root={MNIST_SMALL}"]
    if data == "image_folder":  # small images, no worker processes: one step in well under a second
        return ["data=image_folder", f"data.root={tiny_image_folder(str(root))}", "data.image_size=16",
                "data.num_workers=0"]
    if data == "cifar10":
        return ["data=cifar10", f"data.root={tiny_cifar10(str(root))}"]
    return [f"data={data}"]


def data_options() -> list[str]:
    found = (MNIST_SMALL / "train-images-idx3-ubyte.gz").exists()
    return ["digits", "toy2d", "image_folder", "cifar10"] + (["mnist"] if found else [])


# -------------------------------------------------------------------------------------- values
INT_ODD = [0, -1, -2**31, 2**40, 2**63, 10**20]
FLOAT_ODD = ["0", "-0.0", "-1", "nan", "inf", "-inf", "1e30", "1e-30", "1e308"]
# "'3'": a number in quotes, which validate() converts for the task (the fuzzer's second finding).
JUNK = ["nope", "null", "[1,2]", "{a: 1}", "true", "1.5", "''", "'3'"]


def ints(key: str) -> st.SearchStrategy:
    odd = [v for v in INT_ODD if key not in LOOP_COUNTS or v <= 0]
    return st.one_of(st.integers(1, 6), st.integers(1, 300), st.integers(-2, 0), st.sampled_from(odd)).map(str)


def floats() -> st.SearchStrategy:
    return st.one_of(st.floats(0, 1).map(lambda v: f"{v:.4g}"), st.floats(-2, 2).map(lambda v: f"{v:.4g}"),
                     st.sampled_from(FLOAT_ODD))


def lists(item: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(item, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")


def values(key: str, annotation: Any) -> st.SearchStrategy:
    """Override values (as command-line text) for a key of this type: mostly sensible, some odd, some junk."""
    name = key.rsplit(".", 1)[-1]
    origin, args = typing.get_origin(annotation), [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is Union:  # Optional[X]
        return st.one_of(st.just("null"), values(key, args[0]))
    if origin is list:
        return st.one_of(lists(values(key, args[0])), st.sampled_from(JUNK))
    if origin is dict:  # the scheduler
        return st.one_of(st.just("null"), st.sampled_from([*SCHEDULERS, "nope"]).map(lambda s: f"{{name: {s}}}"),
                         st.sampled_from(["{}", "{step_size: 0}", "{name: step, step_size: 0, gamma: -1}",
                                          "{name: cosine, T_max: -5}", "3"]))
    junk = st.sampled_from(JUNK)  # drawn about one time in five: OmegaConf's type checks are simple
    if annotation is bool:
        return st.sampled_from(["true", "false", "true", "false", "maybe", "2"])
    if annotation is int:
        return st.one_of(ints(name), junk)
    if annotation is float:
        return st.one_of(floats(), junk)
    if annotation is str and name in CHOICES:
        return st.one_of(st.sampled_from(CHOICES[name]), st.sampled_from(CHOICES[name]), st.sampled_from(CHOICES[name]),
                         junk)
    return junk  # Any and other strings


def typed_keys(schema: type, prefix: str) -> dict[str, Any]:
    """Every leaf key of a config dataclass (nested ones dotted), with its type."""
    keys: dict[str, Any] = {}
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        if f.name in FIXED:
            continue
        hint, key = hints[f.name], f"{prefix}.{f.name}"
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        nested = hint if is_dataclass(hint) else inner[0] if len(inner) == 1 and is_dataclass(inner[0]) else None
        if nested is not None:
            keys.update(typed_keys(nested, key))
        else:
            keys[key] = hint
    return keys


# Run-wide keys drawn too. Not ``seed``: a negative one ends in numpy's ValueError, refused by
# ``validate`` in another change (the fuzzer's first finding).
RUN_KEYS = {"sample.num": int, "sample.batch_size": int, "sample.classes": Optional[list[int]],
            "trainer.max_steps": int, "trainer.gradient_clip_val": Optional[float]}


@lru_cache(maxsize=None)
def keys_of(model: str, data: str) -> dict[str, tuple[str, Any]]:
    """{key: (override prefix, type)}: ``++`` adds the schema's keys that the YAML leaves out."""
    cfg = compose_config([f"model={model}", f"data={data}"])
    keys = {**typed_keys(MODEL_SCHEMAS[cfg.model._target_], "model"),
            **typed_keys(DATA_SCHEMAS[cfg.data._target_], "data"), **RUN_KEYS}
    return {k: ("" if OmegaConf.select(cfg, k, default=MISSING) is not MISSING else "++", t) for k, t in keys.items()}


@st.composite
def runs(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    model, data = draw(st.sampled_from(MODELS)), draw(st.sampled_from(data_options()))
    keys = keys_of(model, data)
    chosen = draw(st.lists(st.sampled_from(sorted(keys)), min_size=1, max_size=3, unique=True))
    return model, data, [f"{keys[k][0]}{k}={draw(values(k, keys[k][1]))}" for k in chosen]


# ---------------------------------------------------------------------------------------- tests
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                   print_blob=True)
# DDIM with 2 steps: the DDPM sampler would run the U-Net 1,000 times for the final grid. Batches of 16: the
# step checks the model, and 128 images of 32 px through DDPM's default U-Net take 20 s (a drawn batch size wins).
ONE_STEP = ["trainer=debug", "task.test=false", "~logger", "sample.num=4", "eval.num_samples=16", "sample.sampler=ddim",
            "sample.steps=2", "data.batch_size=16", "data.eval_batch_size=16"]


def train_once(model: str, data: str, overrides: list[str], tmp: Path) -> str | None:
    """validate + task=train for one debug step, in process: None when it trained, the message of a
    DgmrunError or of Hydra's refusal of the command line; any other exception is raised."""
    from dgmrun.tasks.train import train

    try:
        cfg = compose_config([f"model={model}", *data_overrides(data, tmp), *ONE_STEP, *overrides], tmp / "run")
    except Exception as e:  # Hydra's grammar and type errors: the console script prints them in one line
        assert type(e).__module__.startswith(("hydra", "omegaconf")), f"compose raised {type(e).__name__}: {e}"
        return f"hydra: {e}"
    try:
        validate(cfg)
        train(cfg)
    except DgmrunError as e:
        return str(e)
    finally:
        GlobalHydra.instance().clear()
    return None


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    logging.getLogger("lightning").setLevel(logging.ERROR)  # one debug fit per example: its chatter drowns findings
    return tmp_path_factory.mktemp("fuzz")


@PROFILE
@given(run=runs())
def test_random_overrides_train_or_fail_in_one_line(fuzz_dir, run):
    model, data, overrides = run
    example = fuzz_dir / str(abs(hash((model, data, *overrides))))
    example.mkdir(exist_ok=True)
    train_once(model, data, overrides, example)


# What the fuzzer and the catalogue (scripts/bad_input_catalogue.py) found, each once a traceback from
# torch, numpy, Lightning or Hydra's instantiate (or, for T_max, silently ignored), and the message it gets now.
FOUND = [
    ("iwae", "model.scheduler={name:step,step_size:0}", "model.scheduler.step_size must be an integer >= 1, got 0"),
    ("vae", "model.scheduler={name:cosine,T_max:5}", "unknown key model.scheduler.T_max; the cosine scheduler takes: name"),
    ("vae", "model.optimizer.weight_decay=inf", "model.optimizer.weight_decay must be a finite number, got inf"),
    ("vae", "model.latent_dim=1099511627776", "model.latent_dim must be at most 1048576"),
    ("gan", "model.g_hidden_dims=[8,1099511627776]", "model.g_hidden_dims must be at most 1048576"),
    ("vae", "data.eval_batch_size=9223372036854775808", "data.eval_batch_size must be at most 1048576"),
    ("sngan", "++model.optimizer.lr=0.1", "model.optimizer is not a key of the GANs"),
    ("vae", "data.val_fraction=0.9 data.test_fraction=0.5", "data.val_fraction + data.test_fraction must leave some"),
    ("pixelcnn", "model.kernel_size=17", "model.kernel_size must be at most 15 for images of 8x8 px"),
    ("gmmn", "model.bandwidths=[{a:1},0.5]", "model.bandwidths must be a list of numbers"),
    ("vae", "model.hidden_dims=[{a:1}]", "model.hidden_dims must be a list of numbers"),
    ("vae", "model.upper_layers=[[8,{a:1}]]", "model.upper_layers[0]=[8, {'a': 1}] has the wrong type: expected list[list[int]]"),
    ("vae", "model.upper_layers=[[8,0]]", "model.upper_layers must be positive widths, got [8, 0]"),
    ("vae", "model.upper_layers=[[8,nan]]", "model.upper_layers[0]=[8, nan] has the wrong type: expected list[list[int]]"),
    ("iwae", "model.scheduler={name:burda,stages:0}", "model.scheduler.stages must be an integer in [1, 20], got 0"),
    ("vae", "model.optimizer.eps=0", "model.optimizer.eps must be > 0, got 0"),
    ("vae", "model.activation=gelu", "model.activation='gelu' is not one of: relu, tanh"),
    ("vae", "data.val_fraction=0 eval.reference_split=val", "eval.reference_split=val needs a validation split"),
]


@pytest.mark.parametrize("model,override,message", FOUND)
def test_found_cases_are_refused_before_training(tmp_path, model, override, message):
    with pytest.raises(DgmrunError) as refused:
        validate(compose_config([f"model={model}", "data=toy2d" if "gan" in model else "data=digits", *override.split()],
                                tmp_path))
    GlobalHydra.instance().clear()
    assert str(refused.value).startswith(message)


@pytest.mark.slow
@pytest.mark.parametrize("model,override,message", FOUND[:2])
def test_found_cases_print_one_line_without_traceback(tmp_path, model, override, message):
    result = run_dgmrun(f"model={model}", *override.split(), "trainer=debug", cwd=tmp_path, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert lines[-1] == f"dgmrun: error: {message}"
