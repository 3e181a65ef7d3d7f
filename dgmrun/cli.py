"""The ``dgmrun`` command: one Hydra app whose ``task`` group says what to run.

Start-up stays light: composing and checking the config needs only Hydra and OmegaConf, so
``--help``, ``--cfg job`` and configuration errors answer before torch or lightning is imported.
"""

from __future__ import annotations

import sys
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


def main() -> None:
    """Console-script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
