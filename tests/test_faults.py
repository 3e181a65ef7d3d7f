"""Faults: SIGTERM and Ctrl-C, a diverging model, a full or read-only disk, wandb out of reach.

Each ends in one line and a non-zero exit, with the checkpoints written before left as they were."""

from __future__ import annotations

import base64
import csv
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.conftest import dgmrun_command, run_dgmrun

pytestmark = pytest.mark.slow
QUICK = ["trainer.max_epochs=1", "task.test=false"]


def dgmrun_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dgmrun:")]


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch run: its checkpoints are what a failing second run in the same dir must not touch."""
    cwd = tmp_path_factory.mktemp("trained")
    out = run_dgmrun(*QUICK, "hydra.run.dir=r", cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    return cwd / "r"


def second_run_in(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "r"
    shutil.copytree(trained, run)
    return run


def start_training(cwd: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(dgmrun_command() + ["trainer.max_epochs=1000", "sample.every_n_epochs=1", *overrides],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_reached_says_how_to_resume_and_exits_128_plus_its_number(tmp_path, signum):
    process = start_training(tmp_path, "hydra.run.dir=r")
    wait_for(tmp_path / "r" / "samples" / "epoch_0001.png", process)  # one epoch trained
    process.send_signal(signum)
    if signum == signal.SIGINT:
        process.send_signal(signum)  # Ctrl-C pressed twice: the second must not cut the stop short
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    [line] = dgmrun_lines(stderr)
    match = re.fullmatch(rf"dgmrun: stopped by {name} at epoch (\d+), step (\d+); checkpoint saved\. "
                         rf"Resume with: dgmrun task=train ckpt_path=(.+)", line)
    assert match, line
    epoch, step, run_dir = int(match[1]), int(match[2]), Path(match[3])
    assert run_dir == tmp_path / "r" and not (run_dir / "metrics.json").exists()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (epoch, step) and step > 0
    assert not list(run_dir.rglob("*.tmp"))
    if signum == signal.SIGINT:
        return  # resuming is the same for both; once is enough

    out = run_dgmrun("task=train", f"ckpt_path={run_dir}", f"trainer.max_epochs={epoch + 1}",
                     "eval.num_importance_samples=2", "hydra.run.dir=resumed", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == epoch and resumed["global_step"] > step  # trained on from there to the end
    with open(tmp_path / "resumed" / "csv" / "metrics.csv") as f:
        logged_steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert logged_steps and min(logged_steps) >= step  # not from step 0


def test_a_diverging_vae_stops_at_its_first_non_finite_loss_and_keeps_the_checkpoints(trained, tmp_path):
    run = second_run_in(trained, tmp_path)
    before = file_bytes(run / "checkpoints") | {"metrics.json": (run / "metrics.json").read_bytes()}
    out = run_dgmrun("model.optimizer.lr=1e6", "hydra.run.dir=r", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    [line] = dgmrun_lines(out.stderr)
    # Step 0 starts from the finite initial weights; Adam's first step moves every weight by ~lr = 1e6, so
    # the activations of step 1 overflow float32 (64 inputs x 1e6, times 512 x 1e6, ...) and its KL is inf.
    assert re.match(r"dgmrun: error: train/loss is (nan|inf) at global step 1 \(epoch 0, batch 1\); training stopped",
                    line), line
    after = file_bytes(run / "checkpoints") | {"metrics.json": (run / "metrics.json").read_bytes()}
    assert after == before


def test_a_non_finite_validation_loss_stops_before_the_epoch_s_checkpoints_are_written(trained, tmp_path):
    run = second_run_in(trained, tmp_path)
    before = file_bytes(run / "checkpoints")
    # One training step per epoch: its loss is finite, the weights it leaves are not (see above).
    out = run_dgmrun("model.optimizer.lr=1e6", "trainer.limit_train_batches=1", "hydra.run.dir=r", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    [line] = dgmrun_lines(out.stderr)
    assert re.match(r"dgmrun: error: val/loss is (nan|inf) at global step 1 \(epoch 0\)", line), line
    assert file_bytes(run / "checkpoints") == before


def limit_file_size(max_bytes: int) -> None:
    """In the child: writes past ``max_bytes`` fail with EFBIG, as they do with ENOSPC on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def test_a_full_disk_is_one_line_and_the_older_checkpoints_stay(trained, tmp_path):
    run = second_run_in(trained, tmp_path)
    before = file_bytes(run / "checkpoints")
    out = subprocess.run(dgmrun_command() + [*QUICK, "hydra.run.dir=r"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, preexec_fn=lambda: limit_file_size(200_000))  # a checkpoint is ~2 MB
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    [line] = dgmrun_lines(out.stderr)
    assert re.fullmatch(rf"dgmrun: error: cannot write {run}/checkpoints/(last|best)\.ckpt: File too large", line), line
    assert file_bytes(run / "checkpoints") == before and not list(run.rglob("*.tmp"))


def chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_a_read_only_checkpoints_dir_is_one_line_and_its_files_stay(trained, tmp_path):
    run = second_run_in(trained, tmp_path)
    before = file_bytes(run / "checkpoints")
    if not chattr("+i", run / "checkpoints"):  # immutable: read-only even for root, unlike chmod
        pytest.skip("chattr +i is not available here")
    try:
        out = run_dgmrun(*QUICK, "hydra.run.dir=r", cwd=tmp_path)
    finally:
        chattr("-i", run / "checkpoints")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    [line] = dgmrun_lines(out.stderr)
    assert re.fullmatch(rf"dgmrun: error: cannot write {run}/checkpoints/(last|best)\.ckpt: Operation not permitted",
                        line), line
    assert file_bytes(run / "checkpoints") == before


def test_a_run_dir_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    out = run_dgmrun("hydra.run.dir=a_file/run", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == "dgmrun: error: cannot write the run dir a_file/run: Not a directory"


def test_a_run_dir_on_a_read_only_file_system_is_one_line(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a file system here")
    try:
        out = run_dgmrun(f"hydra.run.dir={mount}/run", cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert out.returncode == 1
    assert out.stderr.strip() == f"dgmrun: error: cannot write the run dir {mount}/run: Read-only file system"


def test_wandb_online_with_a_wrong_key_and_no_server_falls_back_to_csv_in_seconds(tmp_path):
    out = run_dgmrun("logger=wandb", "logger.mode=online", "trainer=debug", "eval.num_importance_samples=2",
                     "hydra.run.dir=w", cwd=tmp_path,
                     env={"WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_MODE": None})
    assert out.returncode == 0, out.stderr[-2000:]
    warnings = [line for line in (tmp_path / "w" / "dgmrun.log").read_text().splitlines() if "CSV only" in line]
    assert len(warnings) == 1 and "http://127.0.0.1:9: unreachable" in warnings[0], warnings
    assert (tmp_path / "w" / "csv" / "metrics.csv").is_file()
    # From the job's start (Hydra writes .hydra/ just before the task) to the fall-back: it was 91-107 s, the
    # time-out of wandb.init; now the time to import torch and load the data, and one refused connection.
    job_start = datetime.fromtimestamp((tmp_path / "w" / ".hydra" / "config.yaml").stat().st_mtime)
    fell_back = datetime.strptime(warnings[0][1:24], "%Y-%m-%d %H:%M:%S,%f")
    assert (fell_back - job_start).total_seconds() < 60  # 30 s on 2 cores shared by 8 test runs


def test_a_model_optimized_by_hand_is_guarded_too():
    """The RBM sets its CD gradient itself (no backward): its loss goes through the same check."""
    from torch.utils.data import DataLoader, TensorDataset

    from dgmrun.errors import DgmrunError
    from dgmrun.models.rbm import RBM

    model = RBM.build({"name": "t", "shape": [1, 1, 4], "num_classes": 0, "levels": 2}, hidden_dim=3)
    with torch.no_grad():
        model.W[0, 0] = float("nan")
    data = DataLoader(TensorDataset(torch.ones(8, 1, 1, 4), torch.zeros(8)), batch_size=4)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(DgmrunError, match=r"^train/loss is nan at global step 0 \(epoch 0, batch 0\)"):
        trainer.fit(model, train_dataloaders=data)


@pytest.mark.parametrize("status, refused", [(401, True), (200, False)])
def test_the_wandb_login_check_tells_a_refused_key_from_a_good_one(monkeypatch, status, refused):
    """Against a local stand-in for the wandb server: it sees the key, and its answer decides."""
    import http.server
    import threading

    from dgmrun.loggers import check_wandb_login

    seen = []

    class Server(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers["Authorization"])
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b'{"data": {"viewer": {"id": "x"}}}')

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    try:
        if refused:
            with pytest.raises(RuntimeError, match="the API key was refused"):
                check_wandb_login()
        else:
            check_wandb_login()
    finally:
        server.shutdown()
    assert seen == ["Basic " + base64.b64encode(b"api:" + b"k" * 40).decode()]
