"""The ``dgmrun`` command: one Hydra app whose ``task`` group says what to run.

Start-up stays light: composing and checking the config needs only Hydra and OmegaConf, so
``--help``, ``--cfg job`` and configuration errors answer before torch or lightning is imported.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_method
from omegaconf import DictConfig

from dgmrun import signals
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
    except OSError as error:  # a write not of the run's own files (a logger's, say) on a full or read-only disk
        print(f"dgmrun: error: cannot write {error.filename or 'the run files'}: {error.strerror or error}",
              file=sys.stderr)
        sys.exit(1)  # in a sweep too: the next jobs would meet the same disk
    except signals.Stopped as stop:  # SIGTERM or Ctrl-C: ends a sweep too (see dgmrun.signals)
        _exit_stopped(stop, _resume_hint(cfg))


def _resume_hint(cfg: DictConfig) -> str:
    last = Path(cfg.paths.output_dir).absolute() / "checkpoints" / "last.ckpt"
    if cfg.task.name != "train":
        return ""
    if not last.is_file():
        return "; no checkpoint was written"
    return f". Resume with: dgmrun task=train ckpt_path={last.parent.parent}"


def _exit_stopped(stop: signals.Stopped, hint: str = "") -> None:
    print(f"dgmrun: {stop}{hint}", file=sys.stderr)
    sys.exit(stop.exit_code)


class CheckRunDir(Callback):
    """Hydra makes the run dir and writes into it before the task starts, and answers a failure there
    with a traceback: try it first, and say in one line what stops it (a parent that is a file, a
    read-only file system, no space left)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(directory: str) -> None:
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory) as f:
                f.write(b"dgmrun")
                f.flush()
        except OSError as error:  # exit here: Hydra turns a callback's exceptions into warnings
            print(f"dgmrun: error: cannot write the run dir {directory}: {error.strerror or error}", file=sys.stderr)
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
    signals.install()
    logging.raiseExceptions = False  # a log file on a full disk: no traceback for every line logged
    try:
        _hydra_main()
    except signals.Stopped as stop:  # while Hydra starts up or winds down
        _exit_stopped(stop)


if __name__ == "__main__":
    main()
