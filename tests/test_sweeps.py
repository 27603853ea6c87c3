"""Sweeps as a user runs them: `dlrun train -m` over a grid, a failing job, a resumed sweep, the joblib,
submitit launchers, a course experiment, and `dlrun compare` over sweeps. Every job trains one or two
epochs of a small MLP on digits or the spiral set."""

import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import DLRUN, needs_module, run_dlrun
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train_run import finished_run

import dlrun
from dlrun.app.callbacks import SweepSummary
from dlrun.app.compare_cmd import main as compare
from dlrun.observe.dashboards import SWEEP_EXPERIMENT_SUFFIX
from dlrun.results.summary import parse_column, summarize

# A user's own experiment bundle (`--config-dir`): `experiment` is left out of job directory names,
# so a job's directory is named by the swept values alone.
FAST = """\
# @package _global_
trainer: {epochs: 1}
model: {hidden_sizes: [16]}
logging: {confusion_matrix_every: 0, misclassified: 0, graph: false}
"""


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("configs")
    (root / "experiment").mkdir()
    (root / "experiment" / "fast.yaml").write_text(FAST)
    return root


# A terminal wide enough for every column on one line; test_compare checks the table in 80 columns.
WIDE = {"COLUMNS": "250"}


def dlrun_sweep(configs: Path, cwd: Path, sweep_dir: Path, *overrides: str, check: bool = True):
    return run_dlrun(
        "train",
        "-m",
        "--config-dir",
        str(configs),
        "experiment=fast",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=cwd,
        check=check,
        env=WIDE,
    )


def job_dirs(sweep_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}


def metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def summary_rows(out_dir: Path) -> list[dict]:
    with open(out_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def table_lines(stdout: str, title_start: str) -> list[str]:
    """The plain summary table printed at the end: header and one line per row."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith(title_start))
    after = ("summary: ", "not finished", "optuna best", "note: ")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(after))
    return lines[start + 1 : end]


def assert_png(path: Path):
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 600, image.shape
    assert image[..., :3].std() > 0.05, "the plot is blank"


# ----------------------------------------------------------------------------------------------------
# A 2x2 grid


@pytest.fixture(scope="module")
def grid(configs, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("grid")
    sweep_dir = cwd / "outputs" / "sweeps" / "grid"
    # optimizer.lr is the same in every job: the swept values alone name the jobs
    proc = dlrun_sweep(configs, cwd, sweep_dir, "optimizer.momentum=0,0.5", "optimizer.lr=0.05", "model.dropout=0,0.2")
    return sweep_dir, proc


GRID_JOBS = {f"model.dropout={d},optimizer.momentum={m}" for d in ("0", "0.2") for m in ("0", "0.5")}


@pytest.mark.slow
def test_grid_runs_one_job_per_combination_named_by_its_values(grid):
    sweep_dir, _ = grid
    jobs = job_dirs(sweep_dir)
    assert set(jobs) == GRID_JOBS
    for name, job in jobs.items():
        assert metrics(job)["status"] == "completed", name
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        values = dict(item.split("=") for item in name.split(","))
        assert config["model"]["dropout"] == float(values["model.dropout"])
        assert config["optimizer"]["momentum"] == float(values["optimizer.momentum"])
        assert config["optimizer"]["lr"] == 0.05


@pytest.mark.slow
def test_grid_summary_table_files_and_plot(grid):
    sweep_dir, proc = grid
    jobs = job_dirs(sweep_dir)
    objective = {name: metrics(job)["best"]["val/f1"] for name, job in jobs.items()}

    rows = summary_rows(sweep_dir)
    assert len(rows) == 4
    assert [float(r["best_val/f1"]) for r in rows] == sorted(objective.values(), reverse=True)
    for row in rows:
        job = jobs[Path(row["path"]).name]
        m = metrics(job)
        assert float(row["best_val/f1"]) == pytest.approx(m["best"]["val/f1"], abs=1e-6)
        assert float(row["test/accuracy"]) == pytest.approx(m["test"]["accuracy"], abs=1e-6)
        assert float(row["test/f1"]) == pytest.approx(m["test"]["f1"], abs=1e-6)
        values = dict(item.split("=") for item in Path(row["path"]).name.split(","))
        assert float(row["optimizer.momentum"]) == float(values["optimizer.momentum"])
        assert float(row["model.dropout"]) == float(values["model.dropout"])
        assert row["status"] == "completed"
        assert row["verdict"] == m["diagnosis"]["verdict"]
        assert "optimizer.lr" not in row, "a value every job shares is no column"

    # The console table: swept values, objective, the best epoch of the epochs run, test metrics, the verdict,
    # time, status; best marked.
    header, *body = table_lines(proc.stdout, "4 jobs in")
    for column in ("optimizer.momentum", "model.dropout", "best val/f1", "best epoch", "test acc", "test f1", "verdict"):
        assert column in header
    assert header.split()[-2:] == ["time", "status"]
    assert len(body) == 4
    assert body[0].startswith("*") and not any(line.startswith("*") for line in body[1:])
    best = rows[0]
    assert f"{float(best['best_val/f1']):.4f}" in body[0] and f"{float(best['test/accuracy']):.4f}" in body[0]
    assert f" {int(float(best['best_epoch']))}/1 " in body[0] and f" {best['verdict']} " in body[0]

    markdown = (sweep_dir / "summary.md").read_text()
    assert markdown.count("| completed |") == 4 and "| * |" in markdown
    assert_png(sweep_dir / "curves.png")


@pytest.mark.slow
def test_tensorboard_overlays_the_jobs_and_lists_them_with_hparams(grid):
    """What `tensorboard --logdir <sweep dir>` shows, read with TensorBoard's own hparams plugin."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    sweep_dir, _ = grid
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(sweep_dir))
    multiplexer.Reload()
    assert set(multiplexer.Runs()) == GRID_JOBS
    for run in GRID_JOBS:
        # TensorBoard keeps scalars as tensors
        assert "val/accuracy" in multiplexer.GetAccumulator(run).Tags()["tensors"]

    provider = data_provider.MultiplexerDataProvider(multiplexer, str(sweep_dir))
    hparams = backend_context.Context(
        base_plugin.TBContext(data_provider=provider, logdir=str(sweep_dir), multiplexer=multiplexer)
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=100,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING],
    )
    groups = list_session_groups.Handler(context.RequestContext(), hparams, "", request).run().session_groups
    assert {g.name for g in groups} == GRID_JOBS
    for group in groups:
        m = metrics(sweep_dir / group.name)
        values = dict(item.split("=") for item in group.name.split(","))
        assert group.hparams["optimizer.momentum"].number_value == float(values["optimizer.momentum"])
        assert group.hparams["model.dropout"].number_value == float(values["model.dropout"])
        final = {mv.name.tag: mv.value for mv in group.metric_values}
        assert final["test/accuracy"] == pytest.approx(m["test"]["accuracy"], abs=1e-5)
        assert final["best/val/f1"] == pytest.approx(m["best"]["val/f1"], abs=1e-5)  # the best epoch's, not the last's
    experiment = get_experiment.Handler(context.RequestContext(), hparams, "", api_pb2.GetExperimentRequest()).run()
    ticked = [h.name for h in experiment.hparam_infos][:2]
    assert sorted(ticked) == ["model.dropout", "optimizer.momentum"], "the swept keys come first"


# ----------------------------------------------------------------------------------------------------
# Robust sweeps: a failing job, then the same sweep again


@pytest.fixture(scope="module")
def failed_sweep(configs, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("failing")
    sweep_dir = cwd / "S"
    proc = dlrun_sweep(configs, cwd, sweep_dir, "model.dropout=0,0.2,1.5", check=False)
    return cwd, sweep_dir, proc


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others(failed_sweep):
    _, sweep_dir, proc = failed_sweep
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("dlrun: error: 1 of 3 jobs did not finish (model.dropout=1.5)")

    jobs = job_dirs(sweep_dir)
    assert metrics(jobs["model.dropout=0"])["status"] == "completed"
    assert metrics(jobs["model.dropout=0.2"])["status"] == "completed"
    failed = metrics(jobs["model.dropout=1.5"])
    assert failed["status"] == "failed" and failed["error"].startswith("model.dropout=1.5: must be")

    rows = {r["model.dropout"]: r for r in summary_rows(sweep_dir)}
    assert rows["1.5"]["status"] == "failed" and rows["1.5"]["error"] == failed["error"]
    assert list(rows)[-1] == "1.5", "the failed job sorts last"
    failed_line = next(line for line in table_lines(proc.stdout, "3 jobs in") if line.split()[0] == "1.5")
    assert failed_line.endswith(f"failed: {failed['error']}")
    assert " - " in failed_line and "completed" not in failed_line, "no metric, no verdict"


def own_events(job: Path) -> list[str]:
    """A job's own event files: not the HParams experiment the sweep keeps in its first job's folder."""
    return sorted(p.name for p in job.glob("events.out.tfevents.*") if not p.name.endswith(SWEEP_EXPERIMENT_SUFFIX))


@pytest.mark.slow
def test_rerunning_a_sweep_skips_finished_jobs_and_reruns_the_rest(configs, failed_sweep, tmp_path):
    _, original, _ = failed_sweep
    sweep_dir = tmp_path / "S"
    shutil.copytree(original, sweep_dir)
    jobs = job_dirs(sweep_dir)
    done_events = own_events(jobs["model.dropout=0"])
    done_mtime = (jobs["model.dropout=0"] / "metrics.json").stat().st_mtime_ns
    # A job killed mid-run (kill -9, a lost node) leaves status "running" behind.
    killed = metrics(jobs["model.dropout=0.2"])
    killed["status"] = "running"
    (jobs["model.dropout=0.2"] / "metrics.json").write_text(json.dumps(killed))
    old_events = own_events(jobs["model.dropout=0.2"])

    proc = dlrun_sweep(configs, tmp_path, sweep_dir, "model.dropout=0,0.2,1.5", check=False)
    assert proc.returncode == 1
    assert "model.dropout=0: skipped, already completed" in proc.stdout
    assert "model.dropout=0.2: resuming (previous attempt: running)" in proc.stdout, "its last.pt continues it"
    assert "model.dropout=1.5: rerunning (previous attempt: failed)" in proc.stdout
    assert own_events(jobs["model.dropout=0"]) == done_events
    assert (jobs["model.dropout=0"] / "metrics.json").stat().st_mtime_ns == done_mtime
    assert set(old_events) < set(own_events(jobs["model.dropout=0.2"])), "the attempt's curves kept, the resume's added"
    acc = EventAccumulator(str(jobs["model.dropout=0.2"]), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("val/loss")]
    assert steps == sorted(set(steps)) and len(acc.Scalars("test/loss")) == 1, "each point once"
    assert metrics(jobs["model.dropout=0.2"])["status"] == "completed"
    assert metrics(jobs["model.dropout=1.5"])["status"] == "failed"
    assert len(summary_rows(sweep_dir)) == 3


# ----------------------------------------------------------------------------------------------------
# Beyond one process


@pytest.mark.slow
@needs_module("hydra_plugins.hydra_joblib_launcher", "cluster")
def test_joblib_runs_two_jobs_in_parallel_and_seeds_are_grouped(configs, tmp_path):
    sweep_dir = tmp_path / "S"
    overrides = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2", "optimizer.lr=0.05")
    proc = dlrun_sweep(configs, tmp_path, sweep_dir, *overrides)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout
    jobs = job_dirs(sweep_dir)
    assert set(jobs) == {"seed=1", "seed=2"}, "named in the worker processes by the swept value alone"
    # The event file's name ends with the writer's process id: two worker processes, neither this one.
    pids = {re.search(r"\.(\d+)\.\d+$", own_events(j)[0]).group(1) for j in jobs.values()}
    assert len(pids) == 2

    values = [metrics(j)["best"]["val/f1"] for j in jobs.values()]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    header, row = table_lines(proc.stdout, "2 jobs in")
    assert "seeds" in header and "seed " not in header
    assert f"{mean:.4f} ± {std:.4f}" in row and "2 completed" in row
    markdown = (sweep_dir / "summary.md").read_text()
    assert "mean ± std over seeds" in markdown and f"{mean:.4f} ± {std:.4f}" in markdown


@pytest.mark.slow
@needs_module("hydra_plugins.hydra_joblib_launcher", "cluster")
def test_sigterm_stops_a_joblib_sweep_and_the_same_command_finishes_it(tmp_path):
    """Two workers, three jobs: SIGTERM to the command once both workers train. The running jobs stop as
    interrupted, the third never starts; the same command resumes the two and runs the third, and each job
    ends with the numbers of a run never stopped."""
    sweep_dir = tmp_path / "S"
    args = [DLRUN, "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.momentum=0,0.5,0.9"]
    args += ["trainer.epochs=200", "logging.confusion_matrix_every=0", "logging.graph=false", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, **WIDE}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while sum((d / "history.csv").is_file() for d in sweep_dir.glob("optimizer.*")) < 2:  # both workers in an epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("dlrun: error: stopped by SIGTERM: each running job saved its state")
    assert "Traceback" not in err
    statuses = {name: metrics(d)["status"] if (d / "metrics.json").is_file() else None for name, d in job_dirs(sweep_dir).items()}
    assert sorted(s for s in statuses.values() if s) == ["interrupted", "interrupted"], statuses
    assert "not started: the sweep was stopped" in out

    again = run_dlrun(*args[1:], cwd=tmp_path, env=WIDE)
    assert again.stdout.count("resuming (previous attempt: interrupted)") == 2
    jobs = job_dirs(sweep_dir)
    assert {metrics(d)["status"] for d in jobs.values()} == {"completed"} and len(jobs) == 3
    stopped = next(n for n, s in statuses.items() if s == "interrupted")
    reference = dlrun.train([*args[6:9], stopped, f"hydra.run.dir={tmp_path / 'reference'}"])
    assert metrics(jobs[stopped])["test"] == reference.metrics["test"]


@pytest.mark.slow
@needs_module("hydra_plugins.hydra_submitit_launcher", "cluster")
def test_submitit_local_executor(configs, tmp_path):
    sweep_dir = tmp_path / "S"
    proc = dlrun_sweep(configs, tmp_path, sweep_dir, "hydra/launcher=submitit_local", "model.dropout=0,0.2", "optimizer.lr=0.05")
    assert "Submitit 'local'" in proc.stdout
    assert set(job_dirs(sweep_dir)) == {"model.dropout=0", "model.dropout=0.2"}
    assert all(metrics(j)["status"] == "completed" for j in job_dirs(sweep_dir).values())
    assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 2, "one submitit job per sweep job"
    assert len(summary_rows(sweep_dir)) == 2


# ----------------------------------------------------------------------------------------------------
# A course experiment: its summary ranks by the number its lesson is about


def last_train_loss(job: Path) -> float:
    with open(job / "history.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1]["train/loss"])


@pytest.mark.slow
def test_the_momentum_experiment_ranks_by_the_final_train_loss(tmp_path, capsys, monkeypatch):
    sweep_dir = tmp_path / "S"
    monkeypatch.setenv("COLUMNS", "80")  # a terminal of 80 columns, the size of a pipe's
    quiet = ("logging.confusion_matrix_every=0", "logging.graph=false", "logging.pr_curves=0")
    rows = dlrun.sweep(
        ["experiment=momentum", "optimizer.momentum=0,0.9", "trainer.epochs=2", *quiet, f"hydra.sweep.dir={sweep_dir}"]
    )
    jobs = job_dirs(sweep_dir)
    assert set(jobs) == {"optimizer.momentum=0", "optimizer.momentum=0.9"}, "trainer.epochs=2 is every job's"

    # Ranked by the last epoch's train loss, lowest first, as history.csv has it; the verdict beside it.
    losses = [r["train/loss (last)"] for r in rows]
    assert losses == sorted(losses)
    for row in rows:
        job = jobs[Path(row["path"]).name]
        assert row["train/loss (last)"] == pytest.approx(last_train_loss(job), abs=1e-6)
        assert row["verdict"] == metrics(job)["diagnosis"]["verdict"]
    out = capsys.readouterr().out
    assert "ranked by train/loss (last), lowest first" in out
    table = table_lines(out, "2 jobs in")
    assert all(len(line) <= 80 for line in table), "\n".join(table)
    header, header2, *body = table  # long headers on two lines: optimizer. over momentum, train/loss over (last)
    assert header.split()[:3] == ["optimizer.", "train/loss", "test"] and header2.split()[:3] == ["momentum", "(last)", "acc"]
    assert body[0].startswith("*") and f"{losses[0]:.4f}" in body[0]

    # `dlrun compare` over the sweep keeps the experiment's ranking, unless told another.
    compare([str(sweep_dir)])
    assert "ranked by train/loss (last), lowest first" in capsys.readouterr().out
    compare([str(sweep_dir), "--rank-by", "val/loss@min", "--columns", "val/loss@min,test/f1_micro"])
    again = summary_rows(sweep_dir)
    minima = [float(r["val/loss (min)"]) for r in again]
    assert minima == sorted(minima) and "train/loss (last)" not in again[0]
    for row in again:
        assert float(row["test/f1_micro"]) == pytest.approx(metrics(jobs[Path(row["path"]).name])["test"]["f1_micro"], abs=1e-6)


# ----------------------------------------------------------------------------------------------------
# dlrun compare


@pytest.mark.slow
def test_compare_two_single_runs_and_a_sweep(grid, tmp_path_factory, tmp_path):
    # The session's single runs of test_train_run: an MLP and a CNN, trained separately.
    mlp, cnn = (finished_run(name, tmp_path_factory).dir for name in ("mlp", "cnn"))
    proc = run_dlrun("compare", str(mlp), str(cnn), "--out", "cmp", cwd=tmp_path, env=WIDE)
    rows = {r["model"]: r for r in summary_rows(tmp_path / "cmp")}
    assert set(rows) == {"mlp", "cnn"}
    for run_dir in (mlp, cnn):
        row = rows[run_dir.name]
        assert row["path"].endswith(run_dir.name) and row["status"] == "completed"
        assert float(row["test/accuracy"]) == pytest.approx(metrics(run_dir)["test"]["accuracy"], abs=1e-6)
        assert float(row["epochs"]) == metrics(run_dir)["epochs_completed"]
    header, *body = table_lines(proc.stdout, "2 runs in")
    assert header.split()[:2] == ["run", "model"] and len(body) == 2
    best = max(rows.values(), key=lambda r: float(r["best_val/f1"]))
    assert body[0].startswith("*") and best["model"] in body[0]
    assert_png(tmp_path / "cmp" / "curves.png")

    # Single runs and a sweep's jobs in one table.
    sweep_dir, _ = grid
    run_dlrun("compare", str(mlp), str(cnn), str(sweep_dir), "--out", "mixed", cwd=tmp_path, env=WIDE)
    rows = summary_rows(tmp_path / "mixed")
    assert len(rows) == 6
    assert {"model", "optimizer.momentum", "model.dropout"} <= set(rows[0])
    assert sorted(float(r["best_val/f1"]) for r in rows) == sorted(
        metrics(Path(tmp_path / "mixed" / r["path"]))["best"]["val/f1"] for r in rows
    )


# ----------------------------------------------------------------------------------------------------
# Configs, without training


def compose_with_hydra(*overrides: str):
    with initialize_config_module("dlrun.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


COURSE = {
    "activation": {"model.activation": "sigmoid,tanh,relu", "model.hidden_sizes": "[100],[50,50]"},
    "dropout": {"model.dropout": "0,0.1,0.2,0.3,0.4,0.5"},
    "initializer": {"initializer": "default,uniform,xavier_uniform,kaiming_uniform", "model.activation": "tanh,relu"},
    "momentum": {"optimizer.momentum": "0,0.1,0.2,0.4,0.5"},
    "momentum_mnist": {"optimizer.momentum": "0,0.1,0.2,0.4,0.5"},
    "batchnorm": {"model.batch_norm": "false,true"},
    "width": {"model.hidden_sizes": "[5],[10],[50],[100],[200],[500]"},
}


@pytest.mark.parametrize("name", sorted(COURSE))
def test_course_experiments_are_whole_sweeps(name):
    cfg = compose_with_hydra(f"experiment={name}")
    assert cfg.hydra.mode.name == "MULTIRUN", "`dlrun train experiment=NAME` runs the whole sweep"
    assert dict(cfg.hydra.sweeper.params) == COURSE[name]
    assert cfg.hydra.sweep.dir.endswith(f"_{name}")
    expected_dataset = "spiral" if name == "momentum" else "mnist"
    assert cfg.dataset.name == expected_dataset
    for key in COURSE[name]:  # every swept key exists in the composed config (or is a group)
        assert key in cfg.hydra.runtime.choices or OmegaConf.select(cfg, key, default="missing") != "missing"
    # The labs replicate the course at a constant lr, where `dlrun train` alone anneals it.
    assert cfg.hydra.runtime.choices.scheduler == "none" and cfg.scheduler.fn is None
    assert compose_with_hydra().hydra.runtime.choices.scheduler == "cosine"


# What each course experiment's summary ranks by: the number its lesson is about.
LESSON_RANK = {
    "activation": "train/loss@last",
    "batchnorm": "test/accuracy",
    "dropout": "val/loss@last",
    "initializer": "train/loss@last",
    "momentum": "train/loss@last",
    "momentum_mnist": "train/loss@last",
    "width": "test/accuracy",
}


@pytest.mark.parametrize("name", sorted(COURSE))
def test_course_experiments_rank_by_their_lessons_number(name):
    summary = compose_with_hydra(f"experiment={name}").hydra.callbacks.sweep_summary
    assert summary.rank_by == LESSON_RANK[name]
    columns = [parse_column(c, "val/f1") for c in summary.columns]  # every column is one a summary can show
    assert summary.rank_by in summary.columns
    if name == "dropout":  # val against train loss: the val loss's minimum and its last value, and the verdict
        assert {c.header for c in columns} >= {"val/loss (last)", "val/loss (min)", "train/loss (last)", "verdict"}


def job_name(sweep_dir: Path, *overrides: str) -> str:
    """The directory one job of the sweep in `sweep_dir` gets, for its own overrides."""
    cfg = compose_with_hydra(*overrides, f"hydra.sweep.dir={sweep_dir}")
    with open_dict(cfg):
        cfg.hydra.job.num = 0
    return OmegaConf.select(cfg, "hydra.sweep.subdir")


def start_sweep(sweep_dir: Path, *overrides: str) -> None:
    """What Hydra hands the sweep's callback: the command line's overrides, sweep syntax and all."""
    master = compose_with_hydra("experiment=momentum", f"hydra.sweep.dir={sweep_dir}")
    with open_dict(master):
        master.hydra.overrides.task = list(overrides)
    SweepSummary().on_multirun_start(config=master)


def test_job_directories_are_named_by_the_swept_values_only(tmp_path):
    # The experiment sweeps optimizer.momentum (hydra.sweeper.params), the command line the seed.
    job = ("optimizer.momentum=0.5", "experiment=momentum", "trainer.epochs=15", "seed=2")
    start_sweep(tmp_path, "experiment=momentum", "trainer.epochs=15", "seed=1,2")
    assert job_name(tmp_path, *job) == "optimizer.momentum=0.5,seed=2"
    start_sweep(tmp_path, "experiment=momentum", "trainer.epochs=15", "seed=range(1,3)")
    assert job_name(tmp_path, *job) == "optimizer.momentum=0.5,seed=2"

    # The same sweep again with another shared value, or without it: that names its jobs too, so that a job
    # finished with trainer.epochs=15 is not skipped as one of this sweep's; with the first value, the short names.
    start_sweep(tmp_path, "experiment=momentum", "trainer.epochs=30", "seed=1,2")
    job30 = ("optimizer.momentum=0.5", "experiment=momentum", "trainer.epochs=30", "seed=2")
    assert job_name(tmp_path, *job30) == "optimizer.momentum=0.5,seed=2,trainer.epochs=30"
    start_sweep(tmp_path, "experiment=momentum", "seed=1,2")
    assert job_name(tmp_path, *job[:2], "seed=2") == "optimizer.momentum=0.5,seed=2,~trainer.epochs"
    start_sweep(tmp_path, "experiment=momentum", "trainer.epochs=15", "seed=1,2")
    assert job_name(tmp_path, *job) == "optimizer.momentum=0.5,seed=2"

    # Outside a sweep that recorded its keys: every override, as Hydra names it.
    assert job_name(tmp_path / "elsewhere", *job) == "optimizer.momentum=0.5,seed=2,trainer.epochs=15"


def test_slurm_launcher_config():
    launcher = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    assert launcher.submitit_folder.endswith("/.submitit/%j")


def test_a_job_without_overrides_gets_its_own_directory():
    cfg = compose_with_hydra("device=cpu")  # device is left out of directory names
    with open_dict(cfg):
        cfg.hydra.job.num = 3
    assert cfg.hydra.job.override_dirname == ""
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == "job3"
    cfg = compose_with_hydra("optimizer.lr=0.5", "device=cpu")
    with open_dict(cfg):
        cfg.hydra.job.num = 0
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == "optimizer.lr=0.5"


def write_run(path: Path, seed: int, width: int, status: str, value: float | None):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.hidden_sizes=[{width}]", f"seed={seed}"]))
    config = {"seed": seed, "model": {"hidden_sizes": [width]}, "trainer": {"monitor": "val/f1", "mode": "max"}}
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    m = {"status": status, "monitor": "val/f1", "epochs_completed": 2, "wall_time_s": 1.0}
    if value is not None:
        m.update(best={"epoch": 2, "val/f1": value}, test={"accuracy": value, "f1": value})
    (path / "metrics.json").write_text(json.dumps(m))


def test_a_summary_shows_an_interpolated_value_resolved_and_resolves_only_runs_that_need_it(tmp_path, capsys):
    """A sweep's summary reads each job's saved config: a key whose value is an interpolation shows resolved, and
    only the values it reads are resolved (resolving all of them is most of reading a config)."""
    from dlrun.results.runs import Run

    for epochs in (3, 7):
        job = tmp_path / f"dataset.epochs={epochs}"
        write_run(job, 1, 8, "completed", 0.5 + epochs / 100)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"dataset.epochs={epochs}"]))
        config = {"dataset": {"epochs": epochs}, "trainer": {"epochs": "${dataset.epochs}", "monitor": "val/f1"}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    summarize([tmp_path], tmp_path)
    assert {row["dataset.epochs"] for row in summary_rows(tmp_path)} == {"3", "7"}
    run = Run.load(tmp_path / "dataset.epochs=7", resolve_when_needed=True)
    assert run.value("dataset.epochs") == "7" and run.monitor == "val/f1" and run._conf is None
    assert run.value("trainer.epochs") == "7" and run.find("trainer") == (True, {"epochs": 7, "monitor": "val/f1"})
    assert run.find("trainer.no_such_key") == (False, None)
    assert Run.load(tmp_path / "dataset.epochs=3").config["trainer"]["epochs"] == 3  # eager, as dlrun.train returns it


def test_seed_groups_show_mean_and_std_over_finished_seeds(tmp_path, capsys):
    runs = [
        (1, 8, "completed", 0.5),
        (2, 8, "completed", 0.7),
        (3, 8, "failed", None),
        (1, 32, "completed", 0.9),
        (2, 32, "completed", 0.9),
    ]
    for seed, width, status, value in runs:
        write_run(tmp_path / f"model.hidden_sizes=[{width}],seed={seed}", seed, width, status, value)
    summary = summarize([tmp_path], tmp_path)
    assert [g.name for g in summary.groups] == ["model.hidden_sizes=[32]", "model.hidden_sizes=[8]"]
    narrow = summary.groups[1]
    assert narrow.status == "2 completed, 1 failed"
    out = capsys.readouterr().out
    assert f"0.6000 ± {statistics.stdev([0.5, 0.7]):.4f}" in out
    assert "0.9000 ± 0.0000" in out
    assert "model.hidden_sizes=[8],seed=3: failed" in out
    assert len(summary_rows(tmp_path)) == 5


COUNT_COMPOSITIONS = """
import sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
merged = []
original = ConfigLoaderImpl._compose_config_from_defaults_list
def counted(self, defaults, repo):
    merged.append(1)
    return original(self, defaults=defaults, repo=repo)
ConfigLoaderImpl._compose_config_from_defaults_list = counted
import dlrun
try:
    dlrun.sweep(sys.argv[2:], config_dir=sys.argv[1])
finally:
    print("merged", len(merged))
"""


def count_merges(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", COUNT_COMPOSITIONS, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_grid_sweep_merges_its_defaults_once_and_checks_a_bad_job_before_any_runs(configs, tmp_path):
    """Hydra's basic sweeper composes every job before the first runs, then again as each starts; dlrun's hands the
    first composition to the job, and a job that differs from the first in values only starts from the first's
    merged defaults. Each job still gets its own values, a sweep over a group merges each job's own defaults, and a
    job that cannot be composed stops the sweep before any job has run."""

    def merges(*overrides: str) -> int:
        proc = count_merges(tmp_path, str(configs), "experiment=fast", *overrides)
        assert proc.returncode == 0, proc.stderr
        return int(re.search(r"^merged (\d+)$", proc.stdout, re.M).group(1))

    one_job = merges("optimizer.lr=0.05", f"hydra.sweep.dir={tmp_path / 'one'}")  # the sweep's own config, then the job's
    sweep_dir = tmp_path / "sweep"
    assert merges("optimizer.lr=0.05,0.1,0.2", f"hydra.sweep.dir={sweep_dir}") == one_job
    for lr in ("0.05", "0.1", "0.2"):
        saved = yaml.safe_load((sweep_dir / f"optimizer.lr={lr}" / ".hydra" / "config.yaml").read_text())
        assert saved["optimizer"]["lr"] == float(lr)
    nums = {
        yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"] for job in job_dirs(sweep_dir).values()
    }
    assert nums == {0, 1, 2}
    groups = tmp_path / "groups"
    assert merges("initializer=default,xavier_uniform", f"hydra.sweep.dir={groups}") == one_job + 1
    chosen = {
        yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]["initializer"]
        for job in job_dirs(groups).values()
    }
    assert chosen == {"default", "xavier_uniform"}
    bad = tmp_path / "bad"
    proc = run_dlrun(
        "train", "-m", "model=mlp,no_such_model", "trainer.epochs=1", f"hydra.sweep.dir={bad}", cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    assert "no_such_model" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(bad.rglob("metrics.json")), "a job ran before the sweep's configs were checked"
    bad_value = tmp_path / "bad_value"
    proc = run_dlrun(
        "train",
        "-m",
        "trainer.epochs=1",
        "optimizer.lr=0.1,0.2",
        "+optimizer.lr=0.3",
        f"hydra.sweep.dir={bad_value}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert not list(bad_value.rglob("metrics.json"))


# Sweeps whose jobs the composer of the basic launcher composes: by values only, over groups, an experiment bundle,
# keys added with +, lists, and a sweep whose jobs set different keys.
SWEEPS = [
    [
        ["optimizer.lr=0.1", "trainer.epochs=3"],
        ["optimizer.lr=0.2", "trainer.epochs=3"],
        ["optimizer.lr=0.3", "trainer.epochs=3"],
    ],
    [["model=mlp"], ["model=cnn"], ["model=mlp"]],
    [["experiment=momentum", "optimizer.momentum=0"], ["experiment=momentum", "optimizer.momentum=0.5"]],
    [["+foo=1"], ["+foo=2"], ["++trainer.epochs=4"]],
    [["model.hidden_sizes=[8,8]", "seed=1"], ["model.hidden_sizes=[16]", "seed=2"], ["model.hidden_sizes=[4]", "seed=3"]],
    [["dataset=spiral", "optimizer.lr=0.1"], ["dataset=spiral", "optimizer.lr=0.5"], ["dataset=digits", "optimizer.lr=0.5"]],
]


@pytest.mark.parametrize("jobs", SWEEPS, ids=lambda jobs: jobs[0][0])
def test_each_job_config_is_what_hydras_own_composition_gives(jobs):
    """The oracle is Hydra's own loader: each job's config, its `hydra` node and its flags are what Hydra composes."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hydra_plugins.dlrun_sweeper.sweeper import DefaultsOnce

    with initialize_config_module("dlrun.configs", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", ["hydra.sweep.dir=/tmp/sweep"], RunMode.MULTIRUN)
        composer = DefaultsOnce(loader)
        for job in jobs:
            hydras, ours = loader.load_sweep_config(master, job), composer.load_sweep_config(master, job)
            assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydras), job
            assert OmegaConf.is_struct(ours) and not OmegaConf.is_readonly(ours.hydra)
            assert OmegaConf.to_container(ours.optimizer, resolve=True) == OmegaConf.to_container(hydras.optimizer, resolve=True)


def test_another_hydra_app_keeps_hydras_own_basic_sweeper():
    """dlrun's sweeper replaces `hydra/sweeper=basic` in dlrun's own commands only, although Hydra's plugin scan runs
    its module for any Hydra app in the environment."""
    code = (
        "import sys\n{}\nfrom hydra.core.plugins import Plugins\nfrom hydra.core.config_store import ConfigStore\n"
        "Plugins.instance()\nprint(ConfigStore.instance().load('hydra/sweeper/basic.yaml').node._target_)\n"
    )
    hydras = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    for first, target in (("", hydras), ("import dlrun.app.train_cmd", "hydra_plugins.dlrun_sweeper.sweeper.ComposeOnceSweeper")):
        proc = subprocess.run([sys.executable, "-c", code.format(first)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == target
