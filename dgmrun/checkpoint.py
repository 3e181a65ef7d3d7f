"""Self-contained checkpoints: written atomically, read safely, and enough to rebuild the model.

Besides Lightning's own keys, every checkpoint holds ``checkpoint["dgmrun"] = {"config": <resolved
run config>, "version": ..., "provenance": {...}}``, so ``task=sample``, ``task=eval`` and
``dgmrun.load`` need nothing but the file.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict

from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError
from dgmrun.io import atomic_open
from dgmrun.models.base import GenerativeModel
from dgmrun.schema import resolve_ckpt_path

# Groups whose settings a checkpoint fixes; the rest (trainer, sample, eval, ...) belong to the new run.
CHECKPOINT_GROUPS = ("model", "data")
# Trainer keys that resumed training takes from its checkpoint unless the command line sets them: the
# budget of the run. The other trainer keys (accelerator, precision, ...) belong to the new command.
BUDGET_KEYS = ("max_epochs", "max_steps", "max_time")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but a crash mid-write leaves the previous file intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a dgmrun checkpoint with ``weights_only=True`` (no arbitrary code runs on load)."""
    p = resolve_ckpt_path(path)
    try:
        checkpoint = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or not a torch file at all
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DgmrunError(f"cannot read checkpoint {p}: {reason}") from None
    if not isinstance(checkpoint, dict) or "config" not in checkpoint.get("dgmrun", {}):
        raise DgmrunError(f"{p} is not a dgmrun checkpoint (it carries no dgmrun run config)")
    return checkpoint


def build_model(model_cfg: dict[str, Any] | DictConfig, info: DataInfo) -> GenerativeModel:
    """Instantiate ``model_cfg`` (a ``_target_`` and its arguments) for data described by ``info``."""
    try:
        model = instantiate(model_cfg, data_info=info.to_dict(), _convert_="all")
    except InstantiationException as e:  # a model refusing its arguments: the user's one-line message
        if isinstance(e.__cause__, DgmrunError):
            raise e.__cause__ from None
        raise
    if not isinstance(model, GenerativeModel):
        raise DgmrunError(f"model._target_={model_cfg['_target_']} is not a dgmrun GenerativeModel")
    return model


def merge_with_checkpoint(cfg: DictConfig, stored: dict[str, Any], overrides: list[str]) -> DictConfig:
    """The checkpoint's model and data settings, with this command line's changes on top.

    A group chosen anew on the command line (``data=mnist``) replaces the stored one; a key set on
    it (``data.root=...``) changes the stored value. ``task=train`` (resuming) also keeps the stored
    budget (``BUDGET_KEYS``) of each key not set on the command line (``trainer.max_epochs=20``).
    """
    parsed = OverridesParser.create().parse_overrides(overrides)
    merged = cfg.copy()
    for group in CHECKPOINT_GROUPS:
        if any(o.key_or_group == group for o in parsed):
            continue
        node = OmegaConf.create(stored[group])
        for o in parsed:
            if o.key_or_group.startswith(group + ".") and not o.is_delete():
                OmegaConf.update(node, o.key_or_group[len(group) + 1:], o.value(), merge=True, force_add=True)
        with open_dict(merged):
            merged[group] = node
    if cfg.task.name == "train":
        set_here = {o.key_or_group for o in parsed}
        with open_dict(merged):
            for key in BUDGET_KEYS:
                if key in stored.get("trainer", {}) and f"trainer.{key}" not in set_here:
                    merged.trainer[key] = stored["trainer"][key]
    return merged


def load_model(path: str | os.PathLike, map_location: Any = "cpu",
               model_overrides: dict[str, Any] | None = None) -> GenerativeModel:
    """Rebuild the model of a checkpoint, in eval mode, with its trained weights."""
    checkpoint = read_checkpoint(path, map_location)
    record = checkpoint["dgmrun"]
    model_cfg = OmegaConf.merge(record["config"]["model"], model_overrides or {})
    info = DataInfo.from_dict(checkpoint["hyper_parameters"]["data_info"])
    model = build_model(model_cfg, info)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        raise DgmrunError(f"the weights in {path} do not fit the model built from its config "
                          f"(did an override change the architecture?): {str(e).splitlines()[0]}") from None
    model.run_record = record
    return model.to(map_location).eval()
