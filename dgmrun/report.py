"""Sweep reports: one row per job (``summary.csv``, ``summary.md``) and a plot per metric and swept setting.

``SweepReport``, a Hydra callback (``conf/hydra/default.yaml``), records each job of a multirun in its run
dir (``job.json``: its overrides, status, the first line of its error, its wall time) and rewrites the
sweep dir's report as each job ends, so that an interrupted or partly failed sweep has one too.
``dgmrun task=report dir=...`` builds the same from finished run dirs and sweeps. Torch-free; the plots
need matplotlib (``pip install "dgmrun[plots]"``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dgmrun.files import atomic_open, write_json

log = logging.getLogger("dgmrun")

JOB_FILE = "job.json"
METRICS_FILE = "metrics.json"
OPTUNA_FILE = "optimization_results.yaml"  # the Optuna sweeper's best parameters and value
REPORT_FILES = ("summary.csv", "summary.md", "plots")
MAX_SERIES = 6  # more combinations of the other swept settings than this: the points of one series
# Inside a run dir: never searched for runs.
NOT_RUNS = {".hydra", "checkpoints", "samples", "wandb", "plots", "csv", "tensorboard", "lightning_logs"}


@dataclass
class Run:
    path: Path
    sweep: str  # the folder the report was asked for that holds this run
    job: int | None
    overrides: dict[str, str]
    status: str  # ok | failed (with error) | refused (bad input, nothing ran) | unfinished (killed, or running)
    error: str = ""
    wall_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- recording
class SweepReport(Callback):
    """Records every job of a multirun and rewrites its sweep's report when the job ends."""

    # Plots cost a second or more per sweep: as jobs end they are redrawn at most this often (and always at the
    # sweep's end), the table every time.
    plot_interval_s = 60.0
    _started = 0.0  # (monotonic clock) set by on_job_start, in the job's process

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.monotonic()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN or not Path(hydra.runtime.output_dir).is_dir():
            return
        run_dir = Path(hydra.runtime.output_dir)
        status, error = "ok", ""
        if job_return.status == JobStatus.FAILED:
            nothing_ran = all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir())
            status, error = ("refused" if nothing_ran else "failed"), first_line(job_return._return_value)
        write_json(run_dir / JOB_FILE, {
            "job": hydra.job.num, "overrides": list(hydra.overrides.task), "status": status, "error": error,
            "wall_s": round(time.monotonic() - self._started, 3)})
        sweep = Path(hydra.sweep.dir)
        plots = sweep / "plots"
        stale = not plots.is_dir() or time.time() - plots.stat().st_mtime > self.plot_interval_s
        write_report(sweep, read_runs([sweep]), plot=stale)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        runs = read_runs([sweep])
        write_report(sweep, runs)  # (with the Optuna sweeper's best, written by now)
        log.info("sweep report: %s", sweep / "summary.md")
        logger = config.get("logger")
        if logger is not None and logger.get("_target_") == "dgmrun.loggers.wandb_logger":
            from dgmrun.loggers import log_report_to_wandb

            settings = {k: logger.get(k) for k in ("project", "entity", "group", "tags", "mode")}
            try:
                log_report_to_wandb(settings, str(sweep), *table(runs))
            except Exception as error:  # a logging service never fails a sweep that has run
                log.warning("wandb: the sweep report was not logged (%s)", error)


def first_line(error: Any) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def is_refused_job(path: Path) -> bool:
    """A job dir of a multirun whose job was refused as bad input: Hydra's files, its log and its record."""
    try:
        record = json.loads((path / JOB_FILE).read_text())
    except (OSError, ValueError):
        return False
    return record.get("status") == "refused" and all(
        p.name in (".hydra", JOB_FILE) or p.suffix == ".log" for p in path.iterdir())


# --------------------------------------------------------------------------------------- reading
def read_runs(folders: Sequence[Path]) -> list[Run]:
    """Every run dir in ``folders`` (each a run dir, a sweep dir, or a folder of either), oldest first."""
    runs = []
    for folder in folders:
        for path in _run_dirs(folder):
            runs.append(_read_run(path, folder.name))
    return runs


def _run_dirs(folder: Path) -> list[Path]:
    if any((folder / name).exists() for name in (JOB_FILE, METRICS_FILE, ".hydra/overrides.yaml")):
        if not (folder / "multirun.yaml").exists():
            return [folder]
    children = [c for c in folder.iterdir() if c.is_dir() and c.name not in NOT_RUNS] if folder.is_dir() else []
    children.sort(key=lambda c: (0, int(c.name), "") if c.name.isdigit() else (1, 0, c.name))
    return [run for child in children for run in _run_dirs(child)]


def _read_run(path: Path, sweep: str) -> Run:
    record = _json(path / JOB_FILE)
    metrics = _json(path / METRICS_FILE)
    overrides = record.get("overrides")
    if overrides is None and (path / ".hydra" / "overrides.yaml").is_file():
        overrides = list(OmegaConf.load(path / ".hydra" / "overrides.yaml"))
    status = record.get("status") or ("ok" if metrics else "unfinished")
    return Run(path, sweep, record.get("job"), parse_overrides(overrides or []), status, record.get("error", ""),
               record.get("wall_s"), metrics)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or cut short by a kill: the run shows as unfinished
        return {}


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["model=vae", "+trainer.foo=1"]`` -> ``{"model": "vae", "trainer.foo": "1"}``."""
    parsed = {}
    for override in overrides:
        key, _, value = str(override).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


# ---------------------------------------------------------------------------------------- the table
def swept_keys(runs: Sequence[Run]) -> list[str]:
    """The override keys whose values differ between the runs (all of them for a single run)."""
    keys = sorted({k for run in runs for k in run.overrides})
    if len(runs) <= 1:
        return keys
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def metric_names(runs: Sequence[Run]) -> list[str]:
    names = {k for run in runs for k in run.metrics}
    order = {"test": 0, "val": 1, "train": 2}
    return sorted(names, key=lambda n: (order.get(n.split("/")[0], 3), n))


def table(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): sweep (for several), job, the swept settings, status, wall time, metrics, error."""
    several = len({run.sweep for run in runs}) > 1
    keys = swept_keys(runs)
    metrics = metric_names(runs) if metrics is None else metrics
    header = [*(["sweep"] if several else []), "job", *keys, "status", "wall_s", *metrics, "error"]
    rows = [[*([run.sweep] if several else []), run.job if run.job is not None else run.path.name,
             *(run.overrides.get(k, "") for k in keys), run.status, run.wall_s,
             *(run.metrics.get(m) for m in metrics), run.error] for run in runs]
    return header, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def optuna_best(folders: Iterable[Path]) -> list[str]:
    """The Optuna sweeper's result of each sweep that has one, one line each."""
    lines = []
    for folder in folders:
        for results in sorted(Path(folder).rglob(OPTUNA_FILE)):
            best = OmegaConf.to_container(OmegaConf.load(results))
            if "best_value" in best:
                params = ", ".join(f"{k}={v}" for k, v in best.get("best_params", {}).items())
                lines.append(f"Best trial of {results.parent.name} (Optuna): {best['best_value']:.6g} with {params}")
    return lines


def write_report(out: Path, runs: Sequence[Run], sources: Sequence[Path] | None = None, plot: bool = True) -> list[Path]:
    """summary.csv, summary.md and (``plot``; else the md shows those drawn before) the plots of ``runs``
    into ``out``; returns the plots."""
    header, rows = table(runs)
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    with atomic_open(out / "summary.csv", "w") as f:
        f.write(buffer.getvalue())
    counts = defaultdict(int)
    for run in runs:
        counts[run.status] += 1
    best = optuna_best(sources if sources is not None else [out])
    plots = write_plots(out / "plots", runs) if plot else sorted((out / "plots").glob("*.png"))
    text = [f"# Sweep report: {len(runs)} runs ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})", "",
            *[f"{line}\n" for line in best], markdown(header, rows)]
    text += [f"![{p.stem}](plots/{p.name})" for p in plots]
    with atomic_open(out / "summary.md", "w") as f:
        f.write("\n".join(text) + "\n")
    return plots


# ------------------------------------------------------------------------------------------ plots
def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def write_plots(folder: Path, runs: Sequence[Run]) -> list[Path]:
    """One PNG per numeric metric that differs between the runs, with a panel per swept setting (but the
    seed): the metric against the setting (a line for a numeric setting, points for a categorical one), one
    series per value of the other swept settings; the mean over seeds, with error bars (one standard
    deviation) when several seeds were run."""
    done = [run for run in runs if run.status == "ok"]
    swept = swept_keys(runs)
    keys = [k for k in swept if k != "seed"]
    metrics = [m for m in metric_names(done)
               if len({_number(run.metrics.get(m)) for run in done} - {None}) > 1]
    if not done or not keys or not metrics:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("sweep plots skipped: matplotlib is not installed (pip install \"dgmrun[plots]\")")
        return []
    written = []
    for metric in metrics:
        figure, panels = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), dpi=100, squeeze=False)
        for key, axes in zip(keys, panels[0]):
            shown = panel(key, metric, [k for k in keys if k != key], done)
            _draw(axes, key, metric, shown, "seed" in swept)
        figure.tight_layout()
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.png"
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        with atomic_open(path, "wb") as f:
            f.write(buffer.getvalue())
        written.append(path)
    return written


@dataclass
class Panel:
    """What one panel shows: per series (a value of the other swept settings), per value of the setting, the
    mean and standard deviation of the metric over its runs (seeds); or, for a search, every run's point."""

    numeric: bool
    categories: list[str]
    series: dict[str, dict[str, tuple[float, float, int]]]
    points: list[tuple[str, float]]


def panel(key: str, metric: str, others: Sequence[str], runs: Sequence[Run]) -> Panel:
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        value = _number(run.metrics.get(metric))
        if value is not None:
            label = ", ".join(f"{k}={run.overrides.get(k, '')}" for k in others)
            values[label][run.overrides.get(key, "")].append(value)
    numeric = all(_number(x) is not None for at in values.values() for x in at)
    categories = sorted({x for at in values.values() for x in at}, key=lambda x: (float(x), x) if numeric else (0.0, x))
    if len(values) > MAX_SERIES or all(len(at) == 1 for at in values.values()):  # a search rather than a grid
        return Panel(numeric, categories, {}, [(x, v) for at in values.values() for x, vs in at.items() for v in vs])
    series = {label: {x: (statistics.fmean(vs), statistics.stdev(vs) if len(vs) > 1 else 0.0, len(vs))
                      for x, vs in at.items()} for label, at in values.items()}
    return Panel(numeric, categories, series, [])


def _label_order(label: str) -> list[tuple[float, str]]:
    """``model.latent_dim=8`` before ``model.latent_dim=32``: numbers by value, the rest by name."""
    parts = [part.partition("=")[2] for part in label.split(", ")]
    return [(_number(p), "") if _number(p) is not None else (math.inf, p) for p in parts]


def _draw(axes: Any, key: str, metric: str, shown: Panel, seeds_swept: bool) -> None:
    position = {x: (float(x) if shown.numeric else i) for i, x in enumerate(shown.categories)}
    if shown.points:
        axes.scatter([position[x] for x, _ in shown.points], [v for _, v in shown.points])
    # Categorical settings: the series side by side at each category, as points (bars from 0 would flatten
    # differences of a few nats in an NLL of 80).
    width = 0.0 if shown.numeric else 0.5 / max(1, len(shown.series))
    for i, (label, at) in enumerate(sorted(shown.series.items(), key=lambda item: _label_order(item[0]))):
        xs = [x for x in shown.categories if x in at]
        offsets = [position[x] + (i - (len(shown.series) - 1) / 2) * width for x in xs]
        spreads = [at[x][1] for x in xs]
        axes.errorbar(offsets, [at[x][0] for x in xs], yerr=spreads if any(spreads) else None, marker="o",
                      capsize=3, label=label or None, linestyle="-" if shown.numeric else "none")
    if not shown.numeric:
        axes.set_xticks(range(len(shown.categories)), shown.categories)
        axes.set_xlim(-0.5, len(shown.categories) - 0.5)
    elif min(position.values()) > 0 and max(position.values()) >= 10 * min(position.values()):
        axes.set_xscale("log")  # widths and learning rates: a factor apart, not a sum
        axes.minorticks_off()
        axes.set_xticks([position[x] for x in shown.categories], shown.categories)
    repeats = max((n for at in shown.series.values() for _, _, n in at.values()), default=1)
    axes.set_xlabel(key)
    axes.set_ylabel(metric)
    over = "seeds" if seeds_swept else "runs"
    axes.set_title(f"{metric}: mean ± sd over {repeats} {over}" if repeats > 1 else metric, fontsize=9)
    if len(shown.series) > 1:
        axes.legend(fontsize=7)
