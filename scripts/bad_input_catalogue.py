"""A catalogue of bad inputs and faults, each run through the installed ``dgmrun`` console script.

Run it from a checkout whose venv has dgmrun installed::

    OMP_NUM_THREADS=1 python scripts/bad_input_catalogue.py [--jobs 2] [--only SUBSTRING ...] [--keep DIR]

It first makes a few shared inputs (a VAE and a CGAN run on digits, ``trainer=debug``), then runs every
case in a workspace of its own (the working directory of the command) and prints a table: case, exit
code, clean yes/no (with the reasons when not), and the first 100 characters of the message. The last
line is "N of M clean". Exit status: 0 when every case is clean, 1 otherwise.

A case is CLEAN when
  - the exit code is non-zero (or the one the case expects: 143 after SIGTERM, 130 after SIGINT,
    0 for a wandb server that cannot be reached, since the run must go on with CSV logs);
  - stderr has exactly one ``dgmrun: error:`` line (``dgmrun: stopped by ...`` after a signal), among its last three non-empty lines, and no
    ``Traceback`` (cases that must succeed need neither);
  - nothing already written is lost: the files the case protects (an existing run's checkpoints, ...)
    are byte-for-byte unchanged;
  - a configuration error leaves no run dir behind (no new ``.hydra`` folder under the workspace);
  - nothing read from a file ran code (the malicious CIFAR-10 pickle must not create its marker);
  - and whatever else the case asks (a checkpoint after SIGTERM, the loss and step named when a run
    diverges, CSV logs and success within 30 s of a normal run when wandb cannot connect).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
MNIST_SMALL = (REPO / ".." / "shared" / "data" / "mnist-small").resolve()
DGMRUN = shutil.which("dgmrun") or sys.exit("the dgmrun console script is not on PATH: pip install -e .")
FAST = ["trainer=debug", "sample.num=4"]  # before the case's args unless it says otherwise (and task.test=false for train)
TIMEOUT = 180.0


@dataclass
class Case:
    name: str
    args: list[str]  # {ws}, {vae_run}, {cgan_run}, {mnist} are filled in
    setup: Optional[Callable[[Path], None]] = None  # makes the case's files in its workspace
    expect: Optional[int] = None  # the exit code; None: any non-zero
    config_error: bool = True  # refused before any work: no run dir may be left
    fast: bool = True  # append FAST
    send: Optional[tuple[int, str]] = None  # (signal, file): sent 1 s after the file (glob under ws) appears
    fsize: Optional[int] = None  # RLIMIT_FSIZE of the child (a full disk), SIGXFSZ ignored
    env: dict[str, str] = field(default_factory=dict)
    check: Optional[Callable[[Path, subprocess.CompletedProcess, float], list[str]]] = None  # extra problems
    skip: Optional[str] = None


# ----------------------------------------------------------------------------------- setup steps
def random_bytes(rel: str, size: int = 4096) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(os.urandom(size))
    return make


def mkdir(rel: str) -> Callable[[Path], None]:
    return lambda ws: (ws / rel).mkdir(parents=True, exist_ok=True)


def write(rel: str, text: str) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    return make


def image_folder(corrupt: bool) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        from PIL import Image  # noqa: PLC0415 (pillow is a dgmrun dependency)

        folder = ws / "images"
        folder.mkdir()
        for i in range(24):
            Image.frombytes("RGB", (12, 12), os.urandom(12 * 12 * 3)).save(folder / f"{i:02d}.png")
        if corrupt:
            (folder / "13_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    return make


class Marker:
    """Unpickling this touches ``path``: code run from a data file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_cifar(ws: Path) -> None:
    import pickle  # noqa: PLC0415

    folder = ws / "cifar10"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Marker(str(ws / "MARKER")), b"labels": [0]}))


def random_cifar(ws: Path) -> None:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        random_bytes(f"cifar10/{name}")(ws)


def truncated_mnist(ws: Path) -> None:
    folder = ws / "mnist"
    folder.mkdir()
    for f in MNIST_SMALL.glob("*.gz"):
        (folder / f.name).write_bytes(f.read_bytes()[:1000])


def no_optuna(ws: Path) -> None:
    write("shadow/optuna/__init__.py", "raise ModuleNotFoundError(\"No module named 'optuna'\")\n")(ws)


def not_a_dgmrun_checkpoint(ws: Path) -> None:
    with zipfile.ZipFile(ws / "other.ckpt", "w") as z:  # a zip, like torch's files, but not one of them
        z.writestr("archive/data.pkl", b"junk")


# ------------------------------------------------------------------------------------ extra checks
def has_checkpoint(ws: Path, result: subprocess.CompletedProcess, elapsed: float) -> list[str]:
    found = [p for p in ws.rglob("last.ckpt") if "vae_run" not in p.parts]
    return [] if found and all(zipfile.is_zipfile(p) for p in found) else ["no readable last.ckpt after the signal"]


def names_loss_and_step(ws: Path, result: subprocess.CompletedProcess, elapsed: float) -> list[str]:
    message = error_line(result.stderr) or ""
    return [] if "loss" in message and "step" in message else ["the message names no loss and step"]


def no_marker(ws: Path, result: subprocess.CompletedProcess, elapsed: float) -> list[str]:
    return ["the pickle's code ran (marker file created)"] if (ws / "MARKER").exists() else []


def error_in_run_log(ws: Path, result: subprocess.CompletedProcess, elapsed: float) -> list[str]:
    message = error_line(result.stderr) or "no error line"
    logs = [p for d in run_dirs(ws) for p in d.glob("*.log")]
    return [] if any(message in p.read_text() for p in logs) else ["the run dir's log lacks the error"]


def csv_within_30s(ws: Path, result: subprocess.CompletedProcess, elapsed: float) -> list[str]:
    problems = [] if list(ws.rglob("csv/metrics.csv")) else ["no csv/metrics.csv"]
    if elapsed > BASELINE_S + 30:
        problems.append(f"took {elapsed:.0f} s, {elapsed - BASELINE_S:.0f} s more than a plain run")
    return problems


BASELINE_S = 0.0  # seconds of a plain `dgmrun trainer=debug` run, measured at start


# ------------------------------------------------------------------------------------------ cases
def cases() -> list[Case]:
    vq = "model=vqvae_prior"
    c = [
        # model group
        Case("model=nope", ["model=nope"]),
        Case("misspelled key model.latnt_dim", ["model.latnt_dim=3"]),
        Case("model.latent_dim=0", ["model.latent_dim=0"]),
        Case("model.latent_dim=-3", ["model.latent_dim=-3"]),
        Case("model.latent_dim=abc", ["model.latent_dim=abc"]),
        Case("model.latent_dim=1.5", ["model.latent_dim=1.5"]),
        Case("model.hidden_dims=[]", ["model.hidden_dims=[]"]),
        Case("model.hidden_dims=abc", ["model.hidden_dims=abc"]),
        Case("model.arch=nope", ["model.arch=nope"]),
        Case("model.likelihood=nope", ["model.likelihood=nope"]),
        Case("model.beta=-1", ["model.beta=-1"]),
        Case("model.optimizer.lr=0", ["model.optimizer.lr=0"]),
        Case("model.optimizer.lr=nan", ["model.optimizer.lr=nan"]),
        Case("model.optimizer.name=adamw", ["model.optimizer.name=adamw"]),
        Case("model.optimizer.betas=[0.9]", ["model.optimizer.betas=[0.9]"]),
        Case("model.scheduler={name: nope}", ["model.scheduler={name: nope}"]),
        Case("iwae model.k=0", ["model=iwae", "model.k=0"]),
        Case("rbm model.cd_k=-1", ["model=rbm", "model.cd_k=-1"]),
        Case("gan model.ema_decay=2", ["model=gan", "data=toy2d", "model.ema_decay=2"]),
        Case("gan model.loss=nope", ["model=gan", "data=toy2d", "model.loss=nope"]),
        Case("pixelcnn model.kernel_size=4", ["model=pixelcnn", "model.kernel_size=4"]),
        Case("pixelcnn on toy2d points", ["model=pixelcnn", "data=toy2d"]),
        Case("nade on grey levels (binarize=none)", ["model=nade", "data.binarize=none"]),
        Case("cgan on unlabelled image_folder", ["model=cgan", "data=image_folder", "data.root={ws}/images",
                                                 "data.image_size=16", "data.num_workers=0"], image_folder(False)),
        Case("vqvae on toy2d points", ["model=vqvae", "data=toy2d"]),
        Case("vae model.arch=conv on toy2d", ["model.arch=conv", "data=toy2d"]),
        Case("dcgan on toy2d points", ["model=dcgan", "data=toy2d"]),
        Case("wgan_gp with d_batch_norm", ["model=wgan_gp", "model.d_batch_norm=true"]),
        Case("gan with gradient_clip_val", ["model=gan", "trainer.gradient_clip_val=1.0"]),
        Case("vqvae_prior without vqvae_ckpt", [vq]),
        Case("vqvae_prior vqvae_ckpt=<missing>", [vq, "model.vqvae_ckpt={ws}/missing.ckpt"]),
        Case("vqvae_prior vqvae_ckpt=<random bytes>", [vq, "model.vqvae_ckpt={ws}/random.ckpt"],
             random_bytes("random.ckpt")),
        Case("vqvae_prior vqvae_ckpt=<a VAE run>", [vq, "model.vqvae_ckpt={vae_run}"]),
        # data group
        Case("data=nope", ["data=nope"]),
        Case("data.batch_size=0", ["data.batch_size=0"]),
        Case("data.batch_size=-5", ["data.batch_size=-5"]),
        Case("data.batch_size=abc", ["data.batch_size=abc"]),
        Case("data.val_fraction=0.9 data.test_fraction=0.5", ["data.val_fraction=0.9", "data.test_fraction=0.5"]),
        Case("data.val_fraction=1.5", ["data.val_fraction=1.5"]),
        Case("data.val_fraction=nan", ["data.val_fraction=nan"]),
        Case("data.binarize=maybe", ["data.binarize=maybe"]),
        Case("mnist data.root=<missing>", ["data=mnist", "data.root={ws}/missing"]),
        Case("mnist data.root=<a file>", ["data=mnist", "data.root={ws}/file"], write("file", "x")),
        Case("mnist data.root=<empty dir>", ["data=mnist", "data.root={ws}/empty"], mkdir("empty")),
        Case("mnist truncated .gz files", ["data=mnist", "data.root={ws}/mnist"], truncated_mnist,
             skip=None if MNIST_SMALL.exists() else f"no {MNIST_SMALL}"),
        Case("fashion_mnist default root (absent)", ["data=fashion_mnist"]),
        Case("cifar10 data.root=<missing>", ["data=cifar10", "data.root={ws}/missing"]),
        Case("cifar10 malicious pickle", ["data=cifar10", "data.root={ws}/cifar10"], malicious_cifar, check=no_marker),
        Case("cifar10 random-bytes batches", ["data=cifar10", "data.root={ws}/cifar10"], random_cifar),
        Case("image_folder data.root=<missing>", ["data=image_folder", "data.root={ws}/missing"]),
        Case("image_folder data.root=<empty dir>", ["data=image_folder", "data.root={ws}/empty"], mkdir("empty")),
        # Found while training (reading every image first would cost a pass over the folder): the run
        # dir stays, with the error in its log.
        Case("image_folder corrupt image, num_workers=0",
             ["data=image_folder", "data.root={ws}/images", "data.image_size=16", "data.num_workers=0"],
             image_folder(True), config_error=False, check=error_in_run_log),
        Case("image_folder corrupt image, num_workers=2",
             ["data=image_folder", "data.root={ws}/images", "data.image_size=16", "data.num_workers=2"],
             image_folder(True), config_error=False, check=error_in_run_log),
        Case("image_folder data.channels=2", ["data=image_folder", "data.root={ws}/images", "data.channels=2"],
             image_folder(False)),
        Case("toy2d data.shape=nope", ["data=toy2d", "data.shape=nope"]),
        Case("toy2d data.num_train=0", ["data=toy2d", "data.num_train=0"]),
        # task group and checkpoints
        Case("task=nope", ["task=nope"]),
        Case("task=sample without ckpt_path", ["task=sample"]),
        Case("task=eval without ckpt_path", ["task=eval"]),
        Case("ckpt_path=<missing file>", ["task=sample", "ckpt_path={ws}/missing.ckpt"]),
        Case("ckpt_path=<dir without checkpoints>", ["task=sample", "ckpt_path={ws}/empty"], mkdir("empty")),
        Case("sample ckpt_path=<random bytes>", ["task=sample", "ckpt_path={ws}/random.ckpt"], random_bytes("random.ckpt")),
        Case("eval ckpt_path=<random bytes>", ["task=eval", "ckpt_path={ws}/random.ckpt"], random_bytes("random.ckpt")),
        Case("train resume from random bytes", ["ckpt_path={ws}/random.ckpt"], random_bytes("random.ckpt")),
        Case("sample ckpt_path=<empty file>", ["task=sample", "ckpt_path={ws}/empty.ckpt"], write("empty.ckpt", "")),
        Case("sample ckpt_path=<zip, not a dgmrun ckpt>", ["task=sample", "ckpt_path={ws}/other.ckpt"],
             not_a_dgmrun_checkpoint),
        Case("task=sample model=gan ckpt_path=<VAE run>", ["task=sample", "model=gan", "ckpt_path={vae_run}"]),
        Case("task=train model=gan ckpt_path=<VAE run>", ["task=train", "model=gan", "ckpt_path={vae_run}"]),
        Case("misspelled key of a checkpoint's model", ["task=sample", "ckpt_path={vae_run}", "model.latnt_dim=3"]),
        Case("data.root for a digits checkpoint", ["task=eval", "ckpt_path={vae_run}", "data.root={ws}"]),
        Case("eval digits ckpt with data=mnist", ["task=eval", "ckpt_path={vae_run}", "data=mnist", "data.root={mnist}"],
             skip=None if MNIST_SMALL.exists() else f"no {MNIST_SMALL}"),
        Case("sample.classes for an unconditional model", ["task=sample", "ckpt_path={vae_run}", "sample.classes=[1,2]"]),
        Case("sample.classes=[11] out of range (cgan)", ["task=sample", "ckpt_path={cgan_run}", "sample.classes=[11]"]),
        Case("sample.classes=[-1]", ["task=sample", "ckpt_path={cgan_run}", "sample.classes=[-1]"]),
        Case("sample.num=0", ["task=sample", "ckpt_path={vae_run}", "sample.num=0"], fast=False),
        Case("eval eval.samples=<missing>", ["task=eval", "eval.samples={ws}/missing.npz"]),
        Case("eval eval.samples=<junk .npz>", ["task=eval", "eval.samples={ws}/junk.npz"], random_bytes("junk.npz")),
        # trainer group
        Case("trainer=nope", ["trainer=nope"], fast=False),
        Case("trainer.devices=0", ["trainer.devices=0"]),
        Case("trainer.precision=nope", ["trainer.precision=nope"]),
        Case("trainer.accelerator=gpu without a GPU", ["trainer.accelerator=gpu"]),
        Case("trainer=gpu without a GPU", ["trainer=gpu"], fast=False),
        Case("trainer.max_epochs=-5", ["trainer.max_epochs=-5"]),
        Case("trainer.max_epochs=abc", ["trainer.max_epochs=abc"]),
        Case("trainer.limit_train_batches=-1", ["trainer.limit_train_batches=-1"]),
        Case("trainer.strategy=nope", ["trainer.strategy=nope"]),
        Case("unknown trainer key (+trainer.foo=3)", ["+trainer.foo=3"]),
        # logger, run-wide keys, sweeps
        Case("logger=nope", ["logger=nope"]),
        Case("wandb online, wrong key, unreachable server", ["logger=wandb", "logger.mode=online"], expect=0,
             config_error=False, env={"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"},
             check=csv_within_30s),
        Case("seed=[1,2]", ["seed=[1,2]"]),
        Case("seed=abc", ["seed=abc"]),
        Case("seed=-1", ["seed=-1"]),
        Case("unknown top-level key foo=1", ["foo=1"]),
        Case("sample.num=-1", ["sample.num=-1"]),
        Case("eval.batch_size=0", ["eval.batch_size=0"]),
        Case("experiment=nope", ["experiment=nope"]),
        Case("hparams_search without optuna installed", ["hparams_search=vae_optuna"], no_optuna,
             env={"PYTHONPATH": "{ws}/shadow"}),
        # faults
        Case("a config error leaves no run dir", ["model.latent_dim=0", "hydra.run.dir={ws}/run"]),
        Case("run dir whose parent is a regular file", ["hydra.run.dir={ws}/file/run"], write("file", "x")),
        Case("read-only run dir", ["hydra.run.dir={ws}/ro/run"], mkdir("ro"),
             skip="running as root, which may write anywhere" if os.geteuid() == 0 else None),
        Case("full disk (RLIMIT_FSIZE 64 KiB)", [], fsize=64 * 1024, config_error=False),
        Case("SIGTERM mid-training", ["trainer.max_epochs=100000"], expect=143, config_error=False, fast=False,
             send=(signal.SIGTERM, "**/checkpoints/last.ckpt"), check=has_checkpoint),
        Case("SIGINT mid-training", ["trainer.max_epochs=100000"], expect=130, config_error=False, fast=False,
             send=(signal.SIGINT, "**/checkpoints/last.ckpt"), check=has_checkpoint),
        Case("diverging VAE model.optimizer.lr=1e6", ["model.optimizer.lr=1e6", "trainer.max_epochs=5"],
             config_error=False, fast=False, check=names_loss_and_step),
    ]
    return c


# ----------------------------------------------------------------------------------------- running
def error_line(stderr: str) -> Optional[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dgmrun: error:")]
    return errors[0] if errors else None


def fill_in(text: str, values: dict[str, str]) -> str:
    """``{ws}`` etc. replaced (not str.format: overrides such as ``{name: step}`` hold braces of their own)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def run_dirs(ws: Path) -> set[Path]:
    return {p.parent for p in ws.rglob(".hydra")}


def run_case(case: Case, ws: Path, shared: dict[str, Path]) -> tuple[Optional[int], bool, str, list[str]]:
    """(exit code, clean, message, problems)."""
    ws.mkdir(parents=True)
    if case.setup:
        case.setup(ws)
    fill = {"ws": str(ws), "mnist": str(MNIST_SMALL)}
    for name, source in shared.items():  # each case gets its own copy, compared byte for byte afterwards
        if "{" + name + "}" in " ".join(case.args):
            shutil.copytree(source, ws / name)
            fill[name] = str(ws / name)
    protected = digest([p for p in ws.rglob("*") if p.is_file()])
    before = run_dirs(ws)
    args = [fill_in(a, fill) for a in case.args]
    if case.fast:  # first, so that the case's own values win
        train = not any(a.startswith("task=") and a != "task=train" for a in args)
        args = FAST + (["task.test=false"] if train else []) + args
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "", **{k: fill_in(v, fill) for k, v in case.env.items()}}
    env.pop("HYDRA_FULL_ERROR", None)
    if not env["WANDB_MODE"]:
        del env["WANDB_MODE"]

    def limits() -> None:
        if case.fsize:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize, case.fsize))

    start = time.monotonic()
    proc = subprocess.Popen([DGMRUN, *args], cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=limits, start_new_session=True)
    problems: list[str] = []
    if case.send:
        while proc.poll() is None and time.monotonic() - start < TIMEOUT and not list(ws.glob(case.send[1])):
            time.sleep(0.2)
        time.sleep(1)
        if proc.poll() is None:
            proc.send_signal(case.send[0])
        else:
            problems.append("ended before the signal")
    try:
        out, err = proc.communicate(timeout=max(1.0, TIMEOUT - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        problems.append(f"timed out after {TIMEOUT:.0f} s")
    elapsed = time.monotonic() - start
    (ws / "stderr.txt").write_text(f"dgmrun {' '.join(args)}\n{err}")  # for --keep
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode

    if case.expect is None and code == 0:
        problems.append("exit code 0")
    elif case.expect is not None and code != case.expect:
        problems.append(f"exit code {code}, expected {case.expect}")
    if "Traceback" in err:
        problems.append("traceback")
    lines = [line for line in err.splitlines() if line.strip()]
    # A stop by a signal is reported as "dgmrun: stopped by ...", not as an error.
    error_lines = [line for line in lines if line.startswith(("dgmrun: error:", "dgmrun: stopped by"))]
    if case.expect != 0:
        if len(error_lines) != 1:
            problems.append(f"{len(error_lines)} 'dgmrun: error:' lines")
        elif error_lines[0] not in lines[-3:]:
            problems.append("the error line is not at the end")
    changed = [str(p.relative_to(ws)) for p, h in protected.items() if digest([p]).get(p) != h]
    if changed:
        problems.append(f"changed or lost: {', '.join(changed[:3])}")
    if case.config_error and run_dirs(ws) - before:
        problems.append("run dir left")
    if case.check:
        problems += case.check(ws, result, elapsed)
    message = error_line(err) or (lines[-1] if lines else "")
    return code, not problems, message, problems


def make_shared(base: Path) -> dict[str, Path]:
    """Runs every case may point at: a VAE and a CGAN on digits (one debug epoch)."""
    global BASELINE_S
    shared = {}
    for name, args in {"vae_run": ["model=vae"], "cgan_run": ["model=cgan"]}.items():
        start = time.monotonic()
        subprocess.run([DGMRUN, *args, "trainer=debug", f"hydra.run.dir={base / name}"], cwd=base, check=True,
                       capture_output=True, timeout=TIMEOUT)
        BASELINE_S = max(BASELINE_S, time.monotonic() - start)
        shared[name] = base / name
    return shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", action="append", default=[],
                        help="run only the cases whose name contains this (case-insensitive; may be repeated)")
    parser.add_argument("--keep", type=Path, help="keep the workspaces under this folder (default: a temp dir, removed)")
    options = parser.parse_args()
    selected = [c for c in cases() if not options.only or any(o.lower() in c.name.lower() for o in options.only)]
    base = Path(tempfile.mkdtemp(prefix="dgmrun-catalogue-", dir=options.keep))
    try:
        shared = make_shared(base)
        print(f"{len(selected)} cases, {options.jobs} at a time; a plain debug run takes {BASELINE_S:.0f} s", flush=True)

        def one(indexed: tuple[int, Case]) -> tuple[Case, Optional[int], bool, str, list[str]]:
            i, case = indexed
            if case.skip:
                return case, None, None, f"skipped: {case.skip}", []
            try:
                return (case, *run_case(case, base / f"case{i:03d}", shared))
            except Exception as e:  # a broken case must not hide the others
                return case, None, False, f"harness error: {type(e).__name__}: {e}", ["harness error"]

        width = max(len(c.name) for c in selected)
        clean = skipped = 0
        with ThreadPoolExecutor(options.jobs) as pool:
            for case, code, ok, message, problems in pool.map(one, enumerate(selected)):
                clean, skipped = clean + bool(ok), skipped + (ok is None)
                verdict = "skip" if ok is None else "yes" if ok else "NO: " + "; ".join(problems)
                print(f"{case.name:<{width}}  {str(code):>4}  {verdict:<12}  {message[:100]}", flush=True)
        run = len(selected) - skipped
        print(f"{clean} of {run} clean" + (f" ({skipped} skipped)" if skipped else ""))
    finally:
        if options.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    sys.exit(0 if clean == run else 1)


if __name__ == "__main__":
    main()
