"""Self-contained checkpoints: written atomically, read safely, and enough to rebuild the model.

Besides Lightning's own keys, every checkpoint holds ``checkpoint["dgmrun"] = {"config": <resolved
run config>, "version": ..., "provenance": {...}}``, so ``task=sample``, ``task=eval`` and
``dgmrun.load`` need nothing but the file.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict

from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError
from dgmrun.files import atomic_open
from dgmrun.models.base import GenerativeModel, build_model
from dgmrun.schema import CHECKPOINT_GROUPS, resolve_ckpt_path

# Trainer keys that resumed training keeps even under a trainer group chosen anew (trainer=gpu): the budget.
BUDGET_KEYS = ("max_epochs", "max_steps", "max_time")
# The trainer keys that describe the machine, not the run: a run resumed elsewhere takes this command's.
MACHINE_KEYS = ("accelerator", "devices", "num_nodes", "strategy")
# The groups a resumed run keeps (beside model and data) where the command line does not set a key.
RESUMED_GROUPS = ("trainer", "eval", "task")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but a crash mid-write leaves the previous file intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a dgmrun checkpoint with ``weights_only=True`` (no arbitrary code runs on load)."""
    p = resolve_ckpt_path(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            checkpoint = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or not a torch file at all
        raise DgmrunError(f"cannot read checkpoint {p}: {_unreadable_reason(e)}") from None
    if not isinstance(checkpoint, dict) or "config" not in checkpoint.get("dgmrun", {}):
        raise DgmrunError(f"{p} is not a dgmrun checkpoint (it carries no dgmrun run config)")
    return checkpoint


def _unreadable_reason(error: Exception) -> str:
    """Why torch could not load a file, without torch's advice to load it with ``weights_only=False``
    (which would let the file run code)."""
    if isinstance(error, pickle.UnpicklingError):
        return ("not a dgmrun checkpoint, or corrupt: it holds something other than tensors and plain "
                "values, which dgmrun never loads")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "weights_only" in first:
        first = type(error).__name__
    return f"not a dgmrun checkpoint, or truncated or corrupt ({first})"


def describe_model(target: str) -> str:
    """``VAE (dgmrun.models.vae.VAE)``"""
    return f"{target.rsplit('.', 1)[-1]} ({target})"


def merge_with_checkpoint(cfg: DictConfig, stored: dict[str, Any], overrides: list[str]) -> DictConfig:
    """The checkpoint's model and data settings, with this command line's changes on top.

    A checkpoint fixes its model: ``model=...`` on the command line must name a model of the same
    class (its settings are then the checkpoint's), and another class is refused. A data group chosen
    anew (``data=mnist``) replaces the stored one (``validate`` then checks its shape against the
    checkpoint's). A key set on either group (``model.beta=2``, ``data.root=...``) changes the stored value.
    ``task=train`` (resuming) also keeps the stored ``trainer`` (but its ``MACHINE_KEYS``), ``eval`` and ``task``
    settings not set on the command line: its budget (``trainer.max_epochs=20`` extends it), gradient clipping,
    precision, logging interval and the test's protocol are the run's own; a group chosen anew (``trainer=gpu``)
    keeps only the budget. Every task keeps the stored ``sample`` keys that the model
    takes as its ``sampler_options`` (DDPM: sampler, steps, eta, guidance) unless the command line sets them:
    a checkpoint of ``experiment=ddpm_mnist`` samples with its 50 DDIM steps.
    """
    parsed = OverridesParser.create().parse_overrides(overrides)
    merged = cfg.copy()
    for group in CHECKPOINT_GROUPS:
        chosen = next((o for o in parsed if o.key_or_group == group), None)
        if chosen is not None and group == "model":
            stored_target, target = stored["model"].get("_target_"), cfg.model.get("_target_")
            if target != stored_target:
                raise DgmrunError(
                    f"ckpt_path={cfg.ckpt_path} is a checkpoint of model {describe_model(str(stored_target))}, "
                    f"but model={chosen.value()} ({target}) was asked for; drop model={chosen.value()} to use "
                    "the checkpoint's model")
        elif chosen is not None:
            continue
        node = OmegaConf.create(stored[group])
        for o in parsed:
            if o.key_or_group.startswith(group + ".") and not o.is_delete():
                OmegaConf.update(node, o.key_or_group[len(group) + 1:], o.value(), merge=True, force_add=True)
        with open_dict(merged):
            merged[group] = node
    set_here = {o.key_or_group for o in parsed}
    kept = [(group, key) for group in RESUMED_GROUPS for key in stored.get(group, {}) if cfg.task.name == "train"
            and (key in BUDGET_KEYS if group in set_here else not (group == "trainer" and key in MACHINE_KEYS))]
    try:
        model_class = get_class(str(stored["model"]["_target_"]))
    except (ImportError, ValueError):  # a user's class gone: building the model says so
        model_class = None
    if isinstance(model_class, type) and issubclass(model_class, GenerativeModel):
        kept += [("sample", key) for key in model_class.sampler_options]
    with open_dict(merged):
        for group, key in kept:
            if key in stored.get(group, {}) and f"{group}.{key}" not in set_here:
                merged[group][key] = stored[group][key]
    return merged


def load_model(path: str | os.PathLike, map_location: Any = "cpu",
               model_overrides: dict[str, Any] | None = None) -> GenerativeModel:
    """Rebuild the model of a checkpoint, in eval mode, with its trained weights."""
    checkpoint = read_checkpoint(path, map_location)
    return model_from_checkpoint(checkpoint, path, model_overrides).to(map_location).eval()


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike,
                          model_overrides: dict[str, Any] | DictConfig | None = None) -> GenerativeModel:
    """The model of a checkpoint read by ``read_checkpoint``, with its weights; refuses overrides that
    change the shape of any weight."""
    record = checkpoint["dgmrun"]
    model_cfg = OmegaConf.merge(record["config"]["model"], model_overrides or {})
    info = DataInfo.from_dict(checkpoint["hyper_parameters"]["data_info"])
    model = build_model(model_cfg, info)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:  # torch lists every misfit after a header line; the first says enough
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise DgmrunError(f"the weights in {path} do not fit the model built from its config "
                          f"(did an override change the architecture?): {lines[min(1, len(lines) - 1)]}") from None
    model.run_record = record
    return model
