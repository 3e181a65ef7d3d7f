"""A real wandb run in offline mode: what the run file holds, and that wandb trouble never stops training."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_dgmrun

pytestmark = pytest.mark.slow
NO_CREDENTIALS = {"WANDB_API_KEY": None, "WANDB_MODE": None, "NETRC": "/nonexistent/netrc"}


def read_wandb_records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` run file: a LevelDB-style log (32 KiB blocks of checksum, length,
    type, payload) after a 7-byte header; FIRST/MIDDLE/LAST pieces join into one record."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # too little room for a record header: the block is padded
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return records


def test_offline_run_file_holds_config_metrics_and_images(tmp_path):
    from wandb.proto import wandb_internal_pb2

    out = run_dgmrun("logger=wandb", "trainer.max_epochs=2", "model.latent_dim=5", "hydra.run.dir=w", cwd=tmp_path,
                     env=NO_CREDENTIALS)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wandb sync" in out.stdout + out.stderr  # says how to upload later
    run_files = list((tmp_path / "w" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    config, history, files, names, exited = {}, set(), [], [], False
    for raw in read_wandb_records(run_files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "files":
            files += [f.path for f in record.files.files]
        elif kind == "run":
            names.append(record.run.display_name)
        elif kind == "exit":
            exited = True
    assert config["model.latent_dim"] == 5 and config["data.name"] == "digits"
    assert {"train/loss", "val/loss", "test/nll", "test/bpd"} <= history
    assert any(f.startswith("media/images/samples/final") and f.endswith(".png") for f in files)
    assert "model.latent_dim=5" in names[0]  # the run name comes from the command-line overrides
    assert exited  # the run was finished, so it can be synced


def test_a_broken_wandb_setup_falls_back_to_csv_and_training_goes_on(tmp_path):
    out = run_dgmrun("logger=wandb", "logger.mode=nonsense", "trainer=debug", "hydra.run.dir=w", cwd=tmp_path,
                     env=NO_CREDENTIALS)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "continuing with CSV only" in out.stdout + out.stderr
    assert (tmp_path / "w" / "csv" / "metrics.csv").is_file()
    assert "test/nll" in json.loads((tmp_path / "w" / "metrics.json").read_text())


def _run_records(run_file: Path) -> tuple[Any, set[str]]:
    """The run record and the keys logged (nested ones joined by /) of a ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    run, keys = None, set()
    for raw in read_wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return run, keys


def test_the_jobs_of_a_sweep_share_a_group_and_the_report_is_a_table(tmp_path):
    out = run_dgmrun("-m", "logger=wandb", "logger.tags=[mine]", "trainer=debug", "model.latent_dim=2,4",
                     "eval.num_importance_samples=5", "hydra.sweep.dir=sweep", cwd=tmp_path, env=NO_CREDENTIALS)
    assert out.returncode == 0, out.stderr[-3000:]
    for job in ("0", "1"):
        (run_file,) = (tmp_path / "sweep" / job / "wandb").glob("offline-run-*/run-*.wandb")
        run, _ = _run_records(run_file)
        assert (run.run_group, run.job_type, list(run.tags)) == ("sweep", "train", ["mine"])
    reports = list((tmp_path / "sweep" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(reports) == 1, out.stderr[-3000:]
    report_file = reports[0]
    run, keys = _run_records(report_file)
    assert (run.run_group, run.job_type) == ("sweep", "report") and "sweep_report/nrows" in keys
