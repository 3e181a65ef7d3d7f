"""``task=report``: the sweep report (``dgmrun.report``) of finished run dirs and sweeps, into this run's dir
and onto the terminal. Torch-free: it answers in about a second."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig

from dgmrun.errors import DgmrunError
from dgmrun.report import markdown, metric_names, optuna_best, read_runs, table, write_report
from dgmrun.schema import resolve_path

SHOWN_METRICS = 8  # test metrics on the terminal; summary.csv has every column


def report(cfg: DictConfig) -> None:
    folders = [Path(resolve_path(str(d))) for d in (cfg.dir if isinstance(cfg.dir, ListConfig) else [cfg.dir])]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise DgmrunError(f"dir: no such folder: {', '.join(missing)}")
    runs = read_runs(folders)
    if not runs:
        raise DgmrunError(f"dir: no run dirs (with metrics.json, job.json or .hydra/) under {', '.join(map(str, folders))}")
    out = Path(cfg.paths.output_dir).absolute()
    plots = write_report(out, runs, folders)
    done = [run for run in runs if run.status == "ok"]
    shown = [m for m in metric_names(done) if m.startswith("test/")
             and any(isinstance(run.metrics.get(m), (int, float)) for run in done)][:SHOWN_METRICS]
    header, rows = table(runs, shown)
    print(markdown(header, rows), end="")
    for line in optuna_best(folders):
        print(line)
    print(f"report: {out / 'summary.md'} (every metric in summary.csv, {len(plots)} plots in {out / 'plots'})")
