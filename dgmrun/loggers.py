"""Logger set-up: wandb that goes offline by itself, and flat config keys for every logger."""

from __future__ import annotations

import base64
import csv
import json
import logging
import netrc
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from dgmrun import signals

log = logging.getLogger(__name__)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"latent_dim": 16}} -> {"model.latent_dim": 16}, so dashboards can filter on each key."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def wandb_api_key() -> str | None:
    """The key wandb would log in with: WANDB_API_KEY, else the netrc entry of the wandb host."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    host = urlparse(wandb_base_url()).hostname or "api.wandb.ai"
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None
    return entry[2] if entry else None


def check_wandb_login(timeout_s: float = 5.0) -> None:
    """Raise unless the wandb server answers within ``timeout_s`` and takes the API key: ``wandb.init``
    itself waits ~90 s for an unreachable server, or one that refuses the key, before it gives up."""
    url = wandb_base_url().rstrip("/") + "/graphql"
    token = base64.b64encode(f"api:{wandb_api_key() or ''}".encode()).decode()
    request = urllib.request.Request(url, data=json.dumps({"query": "{ viewer { id } }"}).encode(),
                                     headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as e:
        reason = "the API key was refused" if e.code in (401, 403) else f"HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError) as e:
        reason = f"unreachable ({getattr(e, 'reason', None) or e})"
    raise RuntimeError(f"wandb server {wandb_base_url()}: {reason}")


def run_name_from_overrides() -> str | None:
    """``model=vae,data.batch_size=64`` style name from the command line (None outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().job.override_dirname or "defaults"


def sweep_group() -> str | None:
    """The wandb group of a multirun's jobs: its sweep dir (None for a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().sweep.dir)


def wandb_mode(mode: str, save_dir: str) -> str:
    """``auto``: online when logged in, else offline (saying how to upload later)."""
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_api_key() else "offline")
        if mode == "offline":
            log.warning("wandb: no credentials found, logging offline; upload later with "
                        "`wandb sync %s/wandb/offline-run-*`", save_dir)
    if mode == "online":
        check_wandb_login()
    return mode


def wandb_logger(project: str, save_dir: str, job_type: str, entity: str | None = None, name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, mode: str = "auto",
                 id: str | None = None) -> Any:
    """A Lightning WandbLogger; ``mode=auto`` runs online when logged in, else offline. ``id``: the wandb
    run, continued if it exists (a resumed run passes the id its first part ran under). The jobs of a
    multirun share a ``group`` (default: the sweep dir), so that the dashboard compares them."""
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project=project, save_dir=save_dir, entity=entity, name=name or run_name_from_overrides(),
                       group=group or sweep_group(), job_type=job_type, tags=list(tags or []),
                       mode=wandb_mode(mode, save_dir), id=id, resume="allow" if id else None)


def log_report_to_wandb(logger_cfg: dict[str, Any], sweep_dir: str, header: list[str], rows: list[list[Any]]) -> None:
    """The sweep report's table as a wandb Table, in a run of job_type ``report`` in the sweep's group."""
    import wandb

    mode = wandb_mode(str(logger_cfg.get("mode", "auto")), sweep_dir)
    run = wandb.init(project=logger_cfg.get("project"), entity=logger_cfg.get("entity"), dir=sweep_dir, mode=mode,
                     group=logger_cfg.get("group") or sweep_dir, job_type="report", tags=list(logger_cfg.get("tags") or []),
                     name=f"report {sweep_dir}", reinit=True,
                     settings=wandb.Settings(init_timeout=300))  # (its service starts slowly on a busy machine)
    try:
        table = [[v if isinstance(v, (int, float)) or v is None else str(v) for v in row] for row in rows]
        run.log({"sweep_report": wandb.Table(columns=list(header), data=table)})
    finally:
        run.finish()


def continue_logs(logger: Any) -> None:
    """Let a run resumed in its own run dir continue the first part's logs. CSV: Lightning's writer
    would delete metrics.csv; this one keeps the rows before the step the resumed part starts at (later
    ones were logged after the checkpoint by the run that died) and appends. TensorBoard writes a new
    event file in the same dir, on the same step axis; wandb continues by its run id (``logger.id``)."""
    from lightning.pytorch.loggers import CSVLogger

    if isinstance(logger, CSVLogger):
        logger._experiment = _continued_csv_writer(logger.log_dir)


def _continued_csv_writer(log_dir: str) -> Any:
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class ContinuedWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:  # called by __init__, in place of deleting metrics.csv
            self.first_part = self._fs.isfile(self.metrics_file_path)

        def save(self) -> None:
            if self.first_part and self.metrics:
                self.first_part = False
                resumed_at = min(float(row["step"]) for row in self.metrics)
                with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                    reader = csv.DictReader(f)
                    self.metrics_keys = list(reader.fieldnames or [])
                    rows = [row for row in reader if float(row["step"]) < resumed_at]
                with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                    writer.writeheader()
                    writer.writerows(rows)
            super().save()

    return ContinuedWriter(log_dir)


def finish_loggers(loggers: list[Any], failed: bool) -> None:
    """Close every logger, also after an error (a wandb run left open hangs and never syncs)."""
    for logger in loggers:
        _close(type(logger).__name__, logger.finalize, "failed" if failed else "success")
    wandb = sys.modules.get("wandb")  # only if this run imported it
    if wandb is not None and wandb.run is not None:
        if signals.received() is not None:  # stopped by SIGTERM or Ctrl-C: shown as preempted, not as crashed
            _close("wandb", wandb.run.mark_preempting)
        _close("wandb", wandb.finish, 1 if failed else 0)


def _close(name: str, close: Any, *args: Any) -> None:
    try:
        close(*args)
    except Exception as e:  # a logger that cannot close must not hide the run's own outcome
        log.warning("could not close logger %s: %s", name, e)
