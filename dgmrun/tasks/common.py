"""What every task shares: the run record, loggers, the Trainer, and the files at the end of a run."""

from __future__ import annotations

import logging
import math
import os
import platform
import secrets
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import dgmrun
from dgmrun.callbacks import NetworkSpeedups, StepsPerExecution, progress_bar
from dgmrun.checkpoint import AtomicCheckpointIO, merge_with_checkpoint, model_from_checkpoint, read_checkpoint
from dgmrun.data.info import DataInfo
from dgmrun.errors import DgmrunError
from dgmrun.files import atomic_open, write_json
from dgmrun.loggers import continue_logs, flatten
from dgmrun.metrics.samples import sample_metrics

log = logging.getLogger("dgmrun")
# The distributed environment this process was started with (by torchrun or SLURM, or none): Lightning's
# launcher sets these in the process when it starts the ranks of a job, and the next job of a multirun must
# not take them for its own (it would think itself an extra rank, or reuse the last job's port).
DDP_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_LAUNCH_ENVIRONMENT = {key: os.environ.get(key) for key in DDP_VARIABLES}

# `lightning` prints through a console handler of its own and also propagates to the root logger that
# Hydra sets up (console + the run's log file): drop its handler so each message appears once.
logging.getLogger("lightning").handlers.clear()
# A deprecation inside Lightning itself, printed on every run; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def git_commit() -> str | None:
    """The commit of the dgmrun source tree, when it is a git checkout (with -dirty for local edits)."""
    source = Path(dgmrun.__file__).parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    return {"dgmrun": dgmrun.__version__, "git_commit": git_commit(), "torch": str(torch.__version__),
            "lightning": lightning.__version__, "python": platform.python_version(),
            "command": " ".join(["dgmrun", *sys.argv[1:]])}


def run_record(cfg: DictConfig) -> dict[str, Any]:
    """What a checkpoint carries so that it can be used without anything else."""
    return {"config": OmegaConf.to_container(cfg, resolve=True), "version": dgmrun.__version__, "provenance": provenance()}


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir).absolute()


def command_line_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def config_from_checkpoint(cfg: DictConfig, overrides: list[str] | None = None) -> tuple[DictConfig, dict[str, Any]]:
    """(run config with the checkpoint's model and data settings under the ``overrides`` (by default this
    command line's), checkpoint)."""
    from dgmrun.schema import validate

    checkpoint = read_checkpoint(cfg.ckpt_path)
    stored = checkpoint["dgmrun"]["config"]
    merged = merge_with_checkpoint(cfg, stored, command_line_overrides() if overrides is None else overrides)
    data_info = checkpoint.get("hyper_parameters", {}).get("data_info")
    validate(merged, checkpoint_merged=True, trained_on=DataInfo.from_dict(data_info) if data_info else None)
    if merged.task.name == "train":  # resuming: the weights must fit before Lightning loads them, with a traceback
        model_from_checkpoint(checkpoint, merged.ckpt_path, merged.model)
        continue_run(merged, stored)
    return merged, checkpoint


def run_dir_chosen() -> bool:
    """Whether this command chose the dir it writes to: ``hydra.run.dir=...``, a sweep's job dir, or
    (outside the command line) the caller's ``paths.output_dir``."""
    if not HydraConfig.initialized():
        return True
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN or any(o.split("=")[0].lstrip("+~") == "hydra.run.dir"
                                                     for o in hydra_cfg.overrides.hydra)


def requeued_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint a train job of SLURM resumes from when it finds one in its own run dir: the job was
    started again (requeued after a preemption or time-out, by submitit or by Lightning) and continues where
    its first start stopped. Lightning's own ``hpc_ckpt_*.ckpt``, where it saved one, it loads by itself."""
    out = run_dir(cfg)
    last = out / "checkpoints" / "last.ckpt"
    if cfg.task.name != "train" or not os.environ.get("SLURM_JOB_ID") or any(out.glob("hpc_ckpt_*.ckpt")):
        return None
    if last.is_file():
        log.info("SLURM job %s resumes from %s, its run dir's last checkpoint", os.environ["SLURM_JOB_ID"], last)
        return str(last)
    return None


def resumed_in_place(cfg: DictConfig) -> bool:
    """Whether this train run continues the run dir of its checkpoint (see ``continue_run``)."""
    ckpt = Path(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    return ckpt is not None and cfg.task.name == "train" and ckpt.parent.parent == run_dir(cfg)


def continue_run(cfg: DictConfig, stored: dict[str, Any]) -> None:
    """Training resumed from a run's ``checkpoints/last.ckpt`` (or its run dir) continues in that run dir,
    and in the same wandb run, unless this command chose a run dir of its own; from any other
    checkpoint (``best.ckpt``) it writes a run of its own, which leaves that run's last.ckpt as it is."""
    ckpt = Path(cfg.ckpt_path)
    if ckpt.name != "last.ckpt" or ckpt.parent.name != "checkpoints" or run_dir_chosen():
        return
    log.info("resuming in the checkpoint's run dir %s (this command's own log is in %s)", ckpt.parent.parent, run_dir(cfg))
    cfg.paths.output_dir = str(ckpt.parent.parent)
    stored_logger = stored.get("logger") or {}
    if (cfg.get("logger") is not None and "id" in cfg.logger and cfg.logger.id is None
            and stored_logger.get("_target_") == cfg.logger.get("_target_")):
        cfg.logger.id = stored_logger.get("id")


def name_logger_run(cfg: DictConfig) -> None:
    """Fix the wandb run id now (``logger.id``), so that the run's checkpoints carry it and resuming
    continues that wandb run. (Not from ``random``: that would move the run's random streams.)"""
    if cfg.get("logger") is not None and "id" in cfg.logger and cfg.logger.id is None:
        cfg.logger.id = secrets.token_hex(4)


def make_loggers(cfg: DictConfig, resumed: bool = False) -> list[Any]:
    """The run's logger; ``resumed``: the run continues a run dir, and its logs the first part's."""
    if cfg.get("logger") is None:
        return []
    try:
        logger = instantiate(cfg.logger, _convert_="all")
        if resumed:
            continue_logs(logger)
        logger.log_hyperparams({**flatten(OmegaConf.to_container(cfg, resolve=True)),
                                "overrides": " ".join(command_line_overrides())})
    except Exception as e:  # a logging service must never stop training
        reason = e.__cause__ or e  # what failed inside Hydra's "Error in call to target ..." wrapper
        log.warning("logger %s failed to start (%s); continuing with CSV only", cfg.logger.get("_target_"), reason)
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(save_dir=str(run_dir(cfg)), name="csv", version="")
    return [logger]


def _prepare_ddp_relaunch() -> None:
    """Lightning starts ranks > 0 by re-running ``sys.argv`` with ``hydra.run.dir=<run.dir>`` added.

    Make that command reproduce this one job: its own overrides (not the whole sweep of a multirun)
    and its own output dir (in a multirun, run.dir is not where the job writes), with the extra ranks
    logging to the console only. The next job of a multirun starts afresh: without the earlier job's
    process group and distributed environment.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # an earlier job's, whose other ranks have exited
    for key, value in _LAUNCH_ENVIRONMENT.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if os.environ.get("LOCAL_RANK") or not HydraConfig.initialized():
        return  # we are an extra rank already, or not under the command line
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra/job_logging=stdout"]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def _share_cpu_threads(processes: int) -> None:
    """Several CPU ranks on one machine: give each its share of the cores (as torchrun does), since
    every rank's torch would otherwise start a thread per core and the ranks would thrash."""
    threads = max(1, (os.cpu_count() or 1) // max(1, processes))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the ranks Lightning starts


def make_trainer(cfg: DictConfig, callbacks: list[pl.Callback], resumed: bool = False, **overrides: Any) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` (with ``overrides``), and then its loggers (``make_loggers``): settings
    Lightning refuses are refused before a logger has written anything into the run dir."""
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(overrides)
    if "ddp" in str(trainer_cfg.get("strategy", "")):
        _prepare_ddp_relaunch()
        if trainer_cfg.get("accelerator") == "cpu":
            _share_cpu_threads(int(trainer_cfg.get("devices") or 1))
    speedups = {key: bool(trainer_cfg.pop(key, False)) for key in ("compile", "channels_last")}
    if any(speedups.values()):
        callbacks = [*callbacks, NetworkSpeedups(**speedups)]
    steps_per_execution = int(trainer_cfg.pop("steps_per_execution", 1))
    if steps_per_execution > 1:
        callbacks = [*callbacks, StepsPerExecution(steps_per_execution, trainer_cfg.pop("gradient_clip_val", None),
                                                     trainer_cfg.pop("gradient_clip_algorithm", None) or "norm")]
    if trainer_cfg.get("enable_progress_bar", True):
        callbacks = [*callbacks, progress_bar()]
    try:
        trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=False, default_root_dir=str(run_dir(cfg)),
                              plugins=[AtomicCheckpointIO()])
    except InstantiationException as e:  # Lightning's word on impossible trainer settings
        reason = str(e.__cause__ or e).strip().splitlines()[0]
        raise DgmrunError(f"trainer settings rejected by Lightning: {reason}") from None
    trainer.loggers = make_loggers(cfg, resumed)
    return trainer


def collect_test_metrics(trainer: pl.Trainer, model: Any, datamodule: Any, cfg: DictConfig, results: list[dict[str, Any]],
                 scorer: Any = None) -> dict[str, Any]:
    """What ``trainer.test`` returned, what ``test/nll`` is (its kind: exact, bound or estimate, and its
    estimator), and (on rank 0) the sample metrics."""
    metrics: dict[str, Any] = dict(results[0]) if results else {}
    if "test/nll" in metrics:
        metrics["test/nll_kind"], metrics["test/nll_estimator"] = model.likelihood_kind, model.nll_estimator
    if "test/nll_squared" in metrics:
        mean, n = float(metrics["test/nll"]), float(metrics.pop("test/examples"))
        variance = max(0.0, float(metrics.pop("test/nll_squared")) - mean**2) * n / max(1.0, n - 1)
        metrics["test/nll_sem"] = math.sqrt(variance / n)
    if trainer.is_global_zero:
        metrics.update(sample_metrics(model, datamodule, cfg.eval.num_samples, cfg.seed, cfg=cfg, scorer=scorer))
    return metrics


@rank_zero_only
def write_run_files(cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """metrics.json (flat name -> number or describing string), provenance.json and config.yaml (the config as
    checked and resolved: ``auto`` replaced by what it meant for this data; Hydra's .hydra/config.yaml is
    the config as composed), then a summary."""
    out = run_dir(cfg)
    clean = {k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v) for k, v in metrics.items() if v is not None}
    write_json(out / "metrics.json", clean)
    write_json(out / "provenance.json", provenance())
    with atomic_open(out / "config.yaml", "w") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    numbers = [f"{k}={v:.4g}" for k, v in sorted(clean.items()) if isinstance(v, float) and k.startswith("test/")]
    if numbers:
        print("metrics: " + "  ".join(numbers))
    print(f"run dir: {out}")


def pick_device(cfg: DictConfig) -> torch.device:
    """For tasks without a Trainer: the GPU unless the trainer config asks for the CPU."""
    wants_cpu = str(cfg.trainer.get("accelerator", "auto")) == "cpu"
    return torch.device("cuda" if torch.cuda.is_available() and not wants_cpu else "cpu")
