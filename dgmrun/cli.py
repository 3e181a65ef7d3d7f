"""The ``dgmrun`` command: one Hydra app whose ``task`` group says what to run.

Start-up stays light: composing and checking the config needs only Hydra and OmegaConf, so
``--help``, ``--cfg job`` and configuration errors answer before torch or lightning is imported.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_method
from omegaconf import DictConfig

from dgmrun.errors import DgmrunError
from dgmrun.schema import validate


@hydra.main(version_base="1.3", config_path="pkg://dgmrun.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> Any:
    try:
        validate(cfg)
        return get_method(cfg.task._target_)(cfg)
    except DgmrunError as error:
        print(f"dgmrun: error: {error}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records this job as failed and goes on with the others
        sys.exit(1)


HELP = """dgmrun: train, sample and evaluate deep generative models.

Usage:  dgmrun [group=option ...] [key=value ...]      one run
        dgmrun -m model=vae,iwae seed=0,1,2            a sweep (multirun)

Config groups (choose one option each, e.g. model=vae):
{groups}

Examples:
  dgmrun                                             VAE on sklearn's 8x8 digits, CPU, < 1 min
  dgmrun data=mnist data.root=PATH trainer.max_epochs=20
  dgmrun task=sample ckpt_path=outputs/train/DATE/TIME sample.num=100 sample.seed=1
  dgmrun task=eval ckpt_path=outputs/train/DATE/TIME eval.num_importance_samples=5000
  dgmrun --cfg job                                   print the composed config

Hydra's own options: dgmrun --hydra-help"""


def config_groups() -> dict[str, list[str]]:
    """Every config group shipped in ``dgmrun.conf`` and its options, from the file names alone.

    (Hydra's own --help composes a config repository per group, which takes seconds once sweeper
    plugins are installed; the options are simply the YAML files.)
    """
    root = files("dgmrun.conf")
    return {group.name: sorted(f.name.removesuffix(".yaml") for f in group.iterdir() if f.name.endswith(".yaml"))
            for group in sorted(root.iterdir(), key=lambda g: g.name)
            if group.is_dir() and group.name not in ("hydra", "__pycache__")}


def main() -> None:
    """Console-script entry point."""
    if sys.argv[1:] in (["--help"], ["-h"]):
        print(HELP.format(groups="\n".join(f"{g}: {', '.join(o)}" for g, o in config_groups().items())))
        return
    _hydra_main()


if __name__ == "__main__":
    main()
