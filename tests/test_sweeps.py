"""Sweep reports (dgmrun/report.py): the table and plots written as a multirun's jobs end, ``task=report``
over finished sweeps, and sweeps through Hydra's real launchers and the Optuna sweeper."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from dgmrun.errors import DgmrunError
from dgmrun.report import panel, read_runs, swept_keys, table, write_report
from dgmrun.schema import validate
from tests.conftest import run_dgmrun

SLOW = pytest.mark.slow
NLL = {("vae", 0): 90.5, ("vae", 1): 91.5, ("vae", 2): 92.0, ("iwae", 0): 88.0, ("iwae", 1): 88.5, ("iwae", 2): 87.25}


def fake_sweep(root: Path, failed: bool = True) -> Path:
    """A finished sweep's job dirs as SweepReport leaves them: model=vae,iwae x seed=0,1,2 (+ a failed job)."""
    jobs = [(m, s) for m in ("vae", "iwae") for s in (0, 1, 2)]
    for num, (model, seed) in enumerate(jobs):
        job = root / str(num)
        job.mkdir(parents=True)
        (job / "job.json").write_text(json.dumps({"job": num, "overrides": [f"model={model}", f"seed={seed}"],
                                                  "status": "ok", "error": "", "wall_s": 1.5}))
        (job / "metrics.json").write_text(json.dumps({"test/nll": NLL[model, seed], "test/nll_estimator": "importance-k100"}))
    if failed:
        job = root / str(len(jobs))
        job.mkdir()
        (job / "job.json").write_text(json.dumps({"job": len(jobs), "overrides": ["model=vae", "seed=3"],
                                                  "status": "failed", "error": "train/loss is nan at global step 7",
                                                  "wall_s": 0.5}))
    return root


def test_the_report_of_a_seed_sweep_has_one_row_per_job_and_error_bars(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep")
    runs = read_runs([sweep])
    assert [run.job for run in runs] == list(range(7)) and swept_keys(runs) == ["model", "seed"]
    header, rows = table(runs)
    assert header[:4] == ["job", "model", "seed", "status"] and "test/nll_estimator" in header
    assert rows[-1][3] == "failed" and rows[-1][-1] == "train/loss is nan at global step 7"
    shown = panel("model", "test/nll", [], [r for r in runs if r.status == "ok"])
    for model in ("vae", "iwae"):
        values = [NLL[model, s] for s in (0, 1, 2)]
        assert shown.series[""][model] == pytest.approx((statistics.fmean(values), statistics.stdev(values), 3))
    plots = write_report(sweep, runs)
    assert [p.name for p in plots] == ["test_nll.png"] and plots[0].read_bytes()[:4] == b"\x89PNG"
    with open(sweep / "summary.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 7
    md = (sweep / "summary.md").read_text()
    assert "7 runs (1 failed, 6 ok)" in md and "![test_nll](plots/test_nll.png)" in md


def test_a_search_plots_one_point_per_run(tmp_path):
    sweep = tmp_path / "search"
    for num, (lr, beta, nll) in enumerate([(1e-3, 0.5, 90.0), (2e-3, 1.5, 89.0), (5e-4, 1.0, 95.0)]):
        (sweep / str(num)).mkdir(parents=True)
        (sweep / str(num) / "job.json").write_text(json.dumps(
            {"job": num, "overrides": [f"model.optimizer.lr={lr}", f"model.beta={beta}"], "status": "ok"}))
        (sweep / str(num) / "metrics.json").write_text(json.dumps({"val/loss": nll}))
    runs = read_runs([sweep])
    shown = panel("model.optimizer.lr", "val/loss", ["model.beta"], runs)
    assert shown.numeric and not shown.series
    assert sorted(shown.points) == sorted([("0.001", 90.0), ("0.002", 89.0), ("0.0005", 95.0)])
    assert len(write_report(sweep, runs)) == 1


def test_task_report_over_two_sweep_dirs(cfg_factory, tmp_path, capsys):
    from dgmrun.tasks.report import report

    a, b = fake_sweep(tmp_path / "monday"), fake_sweep(tmp_path / "tuesday", failed=False)
    cfg = cfg_factory("task=report", f"dir=[{a},{b}]")
    validate(cfg)
    report(cfg)
    out = Path(cfg.paths.output_dir)
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["sweep"] for r in rows] == ["monday"] * 7 + ["tuesday"] * 6
    assert (out / "plots" / "test_nll.png").is_file()
    printed = capsys.readouterr().out
    assert "| sweep | job | model | seed | status |" in printed and "summary.md" in printed


def test_task_report_of_a_missing_dir_is_one_line(cfg_factory, tmp_path):
    from dgmrun.tasks.report import report

    cfg = cfg_factory("task=report", f"dir={tmp_path / 'nope'}")
    with pytest.raises(DgmrunError, match="dir: no such folder"):
        report(cfg)
    with pytest.raises(DgmrunError, match=r"task=report needs dir=<a sweep dir, run dir or folder of either>"):
        validate(cfg_factory("task=report"))


def test_a_sweep_with_a_refused_job_reports_it(tmp_path):
    """Four jobs through Hydra's basic launcher, one refused as bad input: the report, written as the jobs end,
    shows three ok and the refusal's reason; the sweep still ends with the error."""
    out = run_dgmrun("-m", "trainer=debug", "model.latent_dim=2,4,8,-1", "eval.num_importance_samples=5",
                     "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=300)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("dgmrun: error: model.latent_dim")
    with open(tmp_path / "sweep" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model.latent_dim"], r["status"]) for r in rows] == [("2", "ok"), ("4", "ok"), ("8", "ok"),
                                                                     ("-1", "refused")]
    assert rows[3]["error"] == "model.latent_dim must be > 0, got -1"
    assert all(float(r["test/nll"]) > 0 for r in rows[:3])
    assert (tmp_path / "sweep" / "plots" / "test_nll.png").is_file()


def _sweep_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


@SLOW
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_sweep_through_hydras_launchers(tmp_path, launcher):
    out = run_dgmrun("-m", f"hydra/launcher={launcher}", "trainer=debug", "model.latent_dim=2,4",
                     "eval.num_importance_samples=5", "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _sweep_rows(tmp_path / "sweep")
    assert sorted((r["model.latent_dim"], r["status"]) for r in rows) == [("2", "ok"), ("4", "ok")]


@SLOW
def test_an_optuna_search_continues_from_its_sqlite_study(tmp_path):
    import optuna

    first = run_dgmrun("hparams_search=vae_optuna", "trainer=debug", "hydra.sweeper.n_trials=3",
                       "eval.num_importance_samples=5", "hydra.sweep.dir=first", cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'first' / 'optuna.db'}"
    more = run_dgmrun("hparams_search=vae_optuna", "trainer=debug", "hydra.sweeper.n_trials=2",
                      f"hydra.sweeper.storage={storage}", "eval.num_importance_samples=5", "hydra.sweep.dir=more",
                      cwd=tmp_path, timeout=600)
    assert more.returncode == 0, more.stderr[-3000:]
    trials = optuna.load_study(study_name="vae", storage=storage).trials
    assert len(trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    best = min(t.value for t in trials)
    assert f"(Optuna): {best:.6g}" in (tmp_path / "more" / "summary.md").read_text()
    assert len(_sweep_rows(tmp_path / "first")) == 3 and len(_sweep_rows(tmp_path / "more")) == 2


@SLOW
def test_the_gan_search_preset_runs_on_a_metric_the_gan_logs(tmp_path):
    """GANs log no val/loss: the preset's objective is a sample metric (here toy2d's share of good samples)."""
    out = run_dgmrun("hparams_search=gan_optuna", "data=toy2d", "data.num_train=512", "trainer=debug",
                     "hydra.sweeper.n_trials=2", "optimized_metric=test/hq", "hydra.sweeper.direction=maximize",
                     "hydra.sweep.dir=gan", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _sweep_rows(tmp_path / "gan")
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(0 <= float(r["test/hq"]) <= 1 for r in rows)
    assert "(Optuna): " in (tmp_path / "gan" / "summary.md").read_text()


@SLOW
def test_ddp_on_cpu_inside_a_multirun_makes_one_run_dir_per_job(tmp_path):
    out = run_dgmrun("-m", "trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                     "trainer.limit_val_batches=1",
                     "eval.num_importance_samples=5", "model.latent_dim=2,4", "hydra.sweep.dir=sweep",
                     cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name != "plots")
    assert jobs == ["0", "1"]
    assert [r["status"] for r in _sweep_rows(tmp_path / "sweep")] == ["ok", "ok"]


@SLOW
def test_failed_trials_do_not_crash_a_search(tmp_path):
    """Trials without their objective fail one by one (the search goes on to its n_trials); a search whose
    every trial failed ends in one line that points to the report."""
    out = run_dgmrun("hparams_search=vae_optuna", "trainer=debug", "hydra.sweeper.n_trials=2",
                     "optimized_metric=test/nope", "hydra.sweep.dir=search", cwd=tmp_path, timeout=600)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == ("dgmrun: error: every trial of the search failed; their errors "
                                                   f"are in the sweep report {tmp_path / 'search' / 'summary.md'}")
    rows = _sweep_rows(tmp_path / "search")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["error"].startswith("optimized_metric=test/nope is not among its metrics") for r in rows)
