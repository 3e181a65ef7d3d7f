"""The ``dgmrun`` command: one Hydra app whose ``task`` group says what to run.

Start-up stays light: composing and checking the config needs only Hydra and OmegaConf, so
``--help``, ``--cfg job`` and configuration errors answer before torch or lightning is imported.
"""

from __future__ import annotations

import difflib
import logging
import os
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_method
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from dgmrun import signals
from dgmrun.errors import DgmrunError
from dgmrun.report import REPORT_FILES, is_refused_job, read_runs
from dgmrun.schema import CHECKPOINT_GROUPS, validate


# Set while Hydra composes the config, so that its errors reach main() instead of its own report
# (which advises `+key=value` for a misspelled key); unset once the task runs (see _hydra_main).
FULL_ERROR = "HYDRA_FULL_ERROR"
_raising_hydra_errors = False
# Set once a job of this sweep was refused: the sweeper re-raises that refusal after its batch, which must
# reach main() too, so FULL_ERROR is set again between jobs (but not during a job: its own environment,
# and that of processes it starts, is the user's).
_refused_in_sweep = False


class SweepDirRecorder(Callback):
    """Notes a multirun's sweep dir (conf/hydra/default.yaml), for main() to remove it if bad input left
    nothing in it but Hydra's multirun.yaml."""

    sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepDirRecorder.sweep_dir = Path(config.hydra.sweep.dir).absolute()


@hydra.main(version_base="1.3", config_path="pkg://dgmrun.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> Any:
    global _refused_in_sweep
    _report_task_errors_as_hydra_does()
    if _refused_in_sweep:
        os.environ.pop(FULL_ERROR, None)
    try:
        validate(cfg)
        check_accelerator(cfg)
        task = get_method(cfg.task._target_)  # imports torch (but task=report): the config is valid
        return task(cfg)
    except (DgmrunError, InstantiationException) as error:
        bad_input = error if isinstance(error, DgmrunError) else error.__cause__
        if not isinstance(bad_input, DgmrunError):
            raise  # a bug while building an object, not bad input: Hydra reports it as usual
        print(f"dgmrun: error: {bad_input}", file=sys.stderr)
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        # A sweep's job dir stays, for its report to show the refusal (a sweep of refusals only is removed
        # by main()); one run's dir stays when the error was found once the run had started.
        if multirun or not remove_if_only_hydra_files(Path(HydraConfig.get().runtime.output_dir)):
            _log_to_run_file(f"dgmrun: error: {bad_input}")
        if multirun:
            # The sweeper records this job as failed, runs the rest of its batch, then re-raises: to main().
            _refused_in_sweep = True
            raise bad_input from None
        sys.exit(1)
    except OSError as error:  # a write not of the run's own files (a logger's, say) on a full or read-only disk
        print(f"dgmrun: error: cannot write {error.filename or 'the run files'}: {error.strerror or error}",
              file=sys.stderr)
        sys.exit(1)  # in a sweep too: the next jobs would meet the same disk
    except signals.Stopped as stop:  # SIGTERM or Ctrl-C: ends a sweep too (see dgmrun.signals)
        _exit_stopped(stop, _resume_hint(cfg))
    finally:
        if _refused_in_sweep:
            os.environ[FULL_ERROR] = "1"


def check_accelerator(cfg: DictConfig) -> None:
    """Refuse a GPU run on a machine without one, before anything is built or written (torch is imported
    only to ask)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DgmrunError(f"trainer.accelerator={accelerator}: no GPU is visible to torch on this machine "
                              "(torch.cuda.is_available() is False); use trainer=cpu or trainer=default")


def _log_to_run_file(message: str) -> None:
    """Write ``message`` to the run dir's log (Hydra's file handler) only: the console has it already."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("dgmrun", logging.ERROR, __file__, 0, message, None, None))


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


def _report_task_errors_as_hydra_does() -> None:
    global _raising_hydra_errors
    if _raising_hydra_errors:
        os.environ.pop(FULL_ERROR, None)
        _raising_hydra_errors = False


def user_error(error: HydraException) -> str:
    """One line for the user: dgmrun's own message (also when raised inside a ``_target_``), or Hydra's
    composition error re-worded."""
    cause = error.__cause__
    if isinstance(error, DgmrunError) or isinstance(cause, DgmrunError):
        return str(error if isinstance(error, DgmrunError) else cause)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return unknown_key_message(str(cause.full_key), str(cause.key), cause.parent_node)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = error.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(option, error.options, n=3)
        hint = f"; did you mean {' or '.join(f'{group}={c}' for c in close)}?" if close else ""
        return f"{group}={option}: no such option{hint} ({group} options: {', '.join(error.options)})"
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def unknown_key_message(full_key: str, key: str, parent: Any) -> str:
    """``model.latnt_dim``: no such key, with the closest keys of the same node."""
    prefix = full_key[: -len(key)].rstrip(".")
    names = sorted(str(k) for k in parent.keys()) if isinstance(parent, DictConfig) else []
    names = [n for n in names if not n.startswith("_") and (prefix or n != "hydra")]
    close = [f"{prefix}.{c}" if prefix else c for c in difflib.get_close_matches(key, names, n=3)]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown key {full_key}{hint} ({prefix or 'the top level'} takes: {', '.join(names)})"


def onto_checkpoint(overrides: list[str]) -> list[str]:
    """With ``ckpt_path``, ``data.root=PATH`` and ``model.k=5`` set keys of the checkpoint's own data and
    model settings, which the default options Hydra composes first may lack (the 8x8 digits have no root):
    they are passed as ``++data.root=PATH``, and checked once merged with the checkpoint's
    (``dgmrun.checkpoint.merge_with_checkpoint``, then ``validate``). A group chosen anew (``data=mnist``)
    keeps its keys as given, checked by Hydra against that option."""
    keys = [o.split("=", 1)[0] for o in overrides]
    if "ckpt_path" not in keys:
        return overrides
    onto = set(CHECKPOINT_GROUPS) - set(keys)  # the groups not chosen anew: the checkpoint's

    def passed(override: str) -> str:
        group, dot, _ = override.split("=", 1)[0].partition(".")
        return f"++{override}" if "=" in override and dot and group in onto else override

    return [passed(o) for o in overrides]


def _every_job_failed(sweep_dir: Path | None) -> bool:
    """Whether a sweep ran jobs and none of them succeeded (by their records, dgmrun.report.SweepReport)."""
    runs = read_runs([sweep_dir]) if sweep_dir is not None and sweep_dir.is_dir() else []
    return bool(runs) and all(run.status != "ok" for run in runs)


def remove_if_only_hydra_files(run_dir: Path) -> bool:
    """Remove a run (or sweep) dir that holds nothing but what Hydra wrote before the task ran
    (``.hydra/``, an empty log, ``multirun.yaml``; in a sweep dir also the job dirs of refused jobs and
    their report), and its parents left empty below the working directory. Returns whether the dir is gone."""
    cwd = Path.cwd()
    if not run_dir.is_dir():
        return True
    if run_dir == cwd or run_dir in cwd.parents:
        return False
    for entry in run_dir.iterdir():
        hydra_files = entry.name == ".hydra" and entry.is_dir() and all(f.is_file() for f in entry.iterdir())
        empty_log = entry.suffix == ".log" and entry.is_file() and entry.stat().st_size == 0
        sweep_files = entry.name in ("multirun.yaml", *REPORT_FILES) or entry.is_dir() and is_refused_job(entry)
        if not (hydra_files or empty_log or sweep_files):
            return False
    shutil.rmtree(run_dir)
    _remove_empty_parents(run_dir)
    return True


def _remove_empty_parents(path: Path) -> None:
    cwd = Path.cwd()
    for parent in path.parents:  # outputs/train/DATE/ of a removed outputs/train/DATE/TIME/
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            return
        parent.rmdir()


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
    sys.argv[1:] = onto_checkpoint(sys.argv[1:])
    signals.install()
    logging.raiseExceptions = False  # a log file on a full disk: no traceback for every line logged
    global _raising_hydra_errors
    if os.environ.get(FULL_ERROR) == "1":  # the user asked for Hydra's full tracebacks
        _hydra_main()
        return
    os.environ[FULL_ERROR] = "1"
    _raising_hydra_errors = True
    try:
        _hydra_main()
    except HydraException as error:  # bad overrides, or the first refused job of a sweep (a DgmrunError)
        print(f"dgmrun: error: {user_error(error)}", file=sys.stderr)
        sys.exit(1)
    except ValueError as error:
        if str(error).startswith("Only one of --run, --multirun"):  # Hydra's word on its flags
            print(f"dgmrun: error: {error} (print a sweep's first job with `dgmrun --cfg job` without -m)",
                  file=sys.stderr)
        elif _every_job_failed(SweepDirRecorder.sweep_dir):  # Optuna, asked for the best trial of a search
            print(f"dgmrun: error: every trial of the search failed; their errors are in the sweep report "
                  f"{SweepDirRecorder.sweep_dir / 'summary.md'}", file=sys.stderr)
        else:
            raise
        sys.exit(1)
    except signals.Stopped as stop:  # while Hydra starts up or winds down
        _exit_stopped(stop)
    finally:
        _report_task_errors_as_hydra_does()
        if SweepDirRecorder.sweep_dir is not None:  # a sweep whose every job was refused
            remove_if_only_hydra_files(SweepDirRecorder.sweep_dir)


if __name__ == "__main__":
    main()
