"""`hparams_search=optuna` as a user runs it, through dlrun's own Hydra sweeper on a current Optuna. One search of 10
trials, in two joblib workers: over a wide lr range it prunes the hopeless trials after their first epoch, and a trial
whose sampled value is a config error fails without stopping it. Extending it (in this process) runs only the new
trials. The study is read back with Optuna itself; the jobs' files as a user would. Digits, a tiny MLP, 2 short epochs."""

import contextlib
import csv
import json
import os
from pathlib import Path

import pytest
import yaml
from helpers import compose_config

import dlrun
from dlrun.core.errors import DlrunError
from dlrun.observe.dashboards import SWEEP_EXPERIMENT_SUFFIX, read_session_hparams
from dlrun.results.listing import list_runs

optuna = pytest.importorskip("optuna", reason="needs optuna (pip install 'dlrun[search]')")
TrialState = optuna.trial.TrialState

# Only the lr is searched (a plain value on the command line fixes the other searched keys), over a range that
# holds hopeless trials at both ends. Every trial trains at least one epoch before the median pruner may stop it.
SEARCH = (
    "hparams_search=optuna",
    "optimizer.lr=tag(log, interval(1e-4, 50))",
    "optimizer.momentum=0.9",
    "model.dropout=0",
    "trainer.batch_size=128",
    "trainer.epochs=2",
    "trainer.limit_batches=2",
    "trainer.precision=32",
    "model.hidden_sizes=[16]",
    "hydra.sweeper.warmup_epochs=1",
    "hydra.sweeper.startup_trials=2",
    "hydra.sweeper.max_failures=10",
    "logging.confusion_matrix_every=0",
    "logging.misclassified=0",
    "logging.graph=false",
)


def load_study(sweep_dir: Path):
    return optuna.load_study(study_name="dlrun", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def jobs_by_trial(sweep_dir: Path) -> dict[int, Path]:
    """Each job directory by the trial number its composed config names (the `search` block the sweeper set)."""
    found = {}
    for config in sweep_dir.glob("*/.hydra/config.yaml"):
        found[yaml.safe_load(config.read_text())["search"]["trial"]] = config.parent.parent
    return found


def metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def history(job: Path) -> list[dict]:
    with open(job / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def files_of(jobs) -> dict[Path, tuple[int, bytes]]:
    """What each job wrote (the HParams experiment a sweep's summary writes anew beside one job left out)."""
    paths = [p for job in jobs for p in job.iterdir() if p.is_file() and not p.name.endswith(SWEEP_EXPERIMENT_SUFFIX)]
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


# Trials in worker processes: they report through the study's storage, not through the sweeping process's memory.
# Hidden size 0 is a config error in the job: half the trials fail.
JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
FAILING = "model.hidden_sizes=choice([16],[0])"
try:
    import hydra_plugins.hydra_joblib_launcher  # noqa: F401
except ImportError:
    JOBLIB = ()  # without dlrun[cluster], the same search in this process


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("search") / "S"
    with pytest.raises(DlrunError, match="did not finish") as failed:  # the failed trials make the command exit non-zero
        dlrun.sweep([*SEARCH, FAILING, *JOBLIB, "hydra.sweeper.n_trials=10", f"hydra.sweep.dir={sweep_dir}"])
    return sweep_dir, str(failed.value)


def summary_rows(sweep_dir: Path) -> list[dict]:
    return json.loads((sweep_dir / "summary.json").read_text())["rows"]


def test_a_wide_lr_search_prunes_hopeless_trials_after_their_warmup(search):
    sweep_dir, _ = search
    study = load_study(sweep_dir)
    assert len(study.trials) == 10
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned and complete, [t.state for t in study.trials]
    jobs = jobs_by_trial(sweep_dir)
    assert sorted(jobs) == list(range(10)), "one job directory per trial"

    for trial in pruned:
        job = jobs[trial.number]
        run = metrics(job)
        assert run["status"] == "pruned"
        stopped = run["pruned"]["epoch"]
        assert stopped == 1, "after its warm-up epoch, and never at its last (a trial that trained them all is complete)"
        assert run["epochs_completed"] == stopped and len(history(job)) == stopped
        # each epoch was reported to the study by the job itself, through the storage
        assert trial.intermediate_values == pytest.approx({e + 1: float(r["val/f1"]) for e, r in enumerate(history(job))})
        assert (job / "last.pt").is_file() and (job / "best.pt").is_file(), "resumable like any stopped run"
        assert "test" not in run, "a pruned trial is not tested"
    for trial in complete:
        run = metrics(jobs[trial.number])
        assert run["status"] == "completed" and trial.value == pytest.approx(run["best"]["val/f1"])

    # The summary: one row per trial, ranked best first, the pruned ones marked; the trial's identity stays out of it.
    rows = summary_rows(sweep_dir)
    assert sum(r["status"] == "pruned" for r in rows) == len(pruned)
    scores = [r["best_val/f1"] for r in rows if r["best_val/f1"] is not None]
    assert scores == sorted(scores, reverse=True) and rows[0]["status"] == "completed"
    assert not any(key.startswith("search") for key in rows[0]), rows[0].keys()
    hparams = read_session_hparams(jobs[complete[0].number])
    assert "optimizer.lr" in hparams and not any(key.startswith("search") for key in hparams), "nor in HParams"
    assert all(p.name.startswith("model.hidden_sizes=") for p in jobs.values()), "named by the searched values alone"
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(study.best_value) == pytest.approx(max(t.value for t in complete))
    assert results["best_params"]["optimizer.lr"] == pytest.approx(study.best_params["optimizer.lr"])
    assert results["trials"]["pruned"] == len(pruned) and results["trials"]["complete"] == len(complete)


def test_a_trial_that_fails_is_recorded_and_the_search_goes_on(search):
    sweep_dir, error = search
    study = load_study(sweep_dir)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and len(study.trials) == 10
    jobs = jobs_by_trial(sweep_dir)
    for trial in study.trials:
        bad = trial.params["model.hidden_sizes"] == "[0]"
        assert (trial.state == TrialState.FAIL) == bad, (trial.number, trial.state)
        if bad:
            run = metrics(jobs[trial.number])
            assert run["status"] == "failed" and run["error"].startswith("model.hidden_sizes=[0]: must be")
    assert f"{len(failed)} of 10 jobs did not finish" in error
    assert sum(r["status"].startswith("failed") for r in summary_rows(sweep_dir)) == len(failed)


def test_a_trial_whose_sampled_option_does_not_exist_is_a_failed_row_of_the_summary(tmp_path):
    """Its config never composes, so its job never starts: it still gets a job directory, and the summary names it."""
    sweep_dir = tmp_path / "S"
    with pytest.raises(DlrunError, match="did not finish") as failed:
        dlrun.sweep([*SEARCH, "model=choice(mlp,nosuch)", "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep_dir}"])
    study = load_study(sweep_dir)
    bad = [t for t in study.trials if t.params["model"] == "nosuch"]
    assert bad and all(t.state == TrialState.FAIL for t in bad)
    assert all(t.state != TrialState.FAIL for t in study.trials if t.params["model"] == "mlp")
    rows = summary_rows(sweep_dir)
    assert len(rows) == 4 and f"{len(bad)} of 4 jobs did not finish" in str(failed.value)
    failed_rows = [r for r in rows if r["model"] == "nosuch"]
    assert [float(r["optimizer.lr"]) for r in failed_rows] == pytest.approx([t.params["optimizer.lr"] for t in bad])
    for row in failed_rows:
        assert row["status"] == "failed" and row["error"].startswith("model=nosuch: no such option (options: cnn,")
    names = [set(k.split("=")[0] for k in (sweep_dir / r["path"]).name.split(",")) for r in rows]
    assert all(n == names[0] for n in names), "the failed trial's directory is named as the others are"
    entries, _ = list_runs([sweep_dir])
    assert sorted(str(e.field("model")) for e in entries) == sorted(["mlp"] * (4 - len(bad)) + ["nosuch"] * len(bad))


@pytest.mark.skipif(not JOBLIB, reason="needs hydra-joblib-launcher (pip install 'dlrun[cluster]')")
def test_the_trials_ran_in_joblib_workers(search):
    sweep_dir, _ = search
    saved = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())
    assert saved["hydra"]["runtime"]["choices"]["hydra/launcher"] == "joblib"
    jobs, study = jobs_by_trial(sweep_dir), load_study(sweep_dir)
    pruned_in = {metrics(jobs[t.number])["pid"] for t in study.trials if t.state == TrialState.PRUNED}
    assert pruned_in and os.getpid() not in pruned_in, "pruned in a worker, not in the sweeping process"


def test_extending_the_search_runs_only_the_new_trials(search):
    sweep_dir, _ = search
    before = jobs_by_trial(sweep_dir)
    files = files_of(before.values())
    first_points = {t.params["optimizer.lr"] for t in load_study(sweep_dir).trials}

    more = [*SEARCH, FAILING, "hydra.sweeper.n_trials=10", "hydra.sweeper.n_trials_more=2", f"hydra.sweep.dir={sweep_dir}"]
    with contextlib.suppress(DlrunError):  # another failed trial, as likely as not
        dlrun.sweep(more)

    study = load_study(sweep_dir)
    assert len(study.trials) == 12
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in study.trials)
    assert files_of(before.values()) == files, "no finished trial ran again"
    new = {t.params["optimizer.lr"] for t in study.trials[10:]}
    assert not new & first_points, "the seeded sampler continues: it does not propose its first points again"
    assert set(jobs_by_trial(sweep_dir)) == set(range(12))

    # n_trials is the study's total: the first command again has nothing left to run
    files = files_of(jobs_by_trial(sweep_dir).values())
    with contextlib.suppress(DlrunError):
        dlrun.sweep([*SEARCH, FAILING, "hydra.sweeper.n_trials=10", f"hydra.sweep.dir={sweep_dir}"])
    assert len(load_study(sweep_dir).trials) == 12 and files_of(jobs_by_trial(sweep_dir).values()) == files


def test_the_search_config(tmp_path):
    cfg = compose_config("hparams_search=optuna")
    assert cfg.search is None, "a run outside a search has no trial"
    for bad, line in (
        ("hydra.sweeper.pruner=sometimes", "hydra.sweeper.pruner=sometimes: must be one of none, median, hyperband"),
        ("optimizer.lr=glob(*)", "optimizer.lr=glob(*): an Optuna search takes interval(a, b)"),
    ):
        with pytest.raises(DlrunError) as raised:
            dlrun.sweep(["hparams_search=optuna", bad, f"hydra.sweep.dir={tmp_path}"])
        assert str(raised.value).startswith(line)


def test_the_shipped_search_and_its_distributions():
    from hydra import compose, initialize_config_module

    from hydra_plugins.dlrun_optuna_sweeper._search import search_space

    with initialize_config_module("dlrun.configs", version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", "trainer.mode=min"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.dlrun_optuna_sweeper.sweeper.DlrunOptunaSweeper"
    assert sweeper.direction == "minimize", "the search follows trainer.mode"
    assert sweeper.storage.startswith("sqlite:///") and sweeper.storage.endswith("/optuna.db")
    assert (sweeper.pruner, sweeper.sampler.seed) == ("median", cfg.seed)

    space, fixed = search_space([f"{k}={v}" for k, v in sweeper.params.items()] + ["optimizer.momentum=0.9"])
    dist = optuna.distributions
    assert space == {
        "optimizer.lr": dist.FloatDistribution(0.001, 0.5, log=True),
        "model.dropout": dist.FloatDistribution(0.0, 0.5),
        "trainer.batch_size": dist.CategoricalDistribution([32, 64, 128, 256]),
    }
    assert fixed == ["optimizer.momentum=0.9"], "a plain value on the command line fixes a searched key"
    space, _ = search_space(
        ["a=int(interval(1, 8))", "b=range(2, 10, 4)", "c=choice([16],[16,16])", "d=tag(log, int(interval(8, 64)))"]
    )
    assert space == {
        "a": dist.IntDistribution(1, 8),
        "b": dist.IntDistribution(2, 6, step=4),  # Hydra's range leaves its end out
        "c": dist.CategoricalDistribution(["[16]", "[16,16]"]),
        "d": dist.IntDistribution(8, 64, log=True),
    }


def test_parameter_importance_is_written_once_ten_trials_completed(tmp_path):
    from dlrun.results.summary import importance_lines
    from hydra_plugins.dlrun_optuna_sweeper._search import write_results

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"a": optuna.distributions.FloatDistribution(0, 1), "b": optuna.distributions.FloatDistribution(0, 1)}
    for n in range(10):
        trial = study.ask(space)
        study.tell(trial, 10 * trial.params["a"] + 0.1 * trial.params["b"])  # only `a` matters
        results = write_results(study, tmp_path, seed=0)
        assert ("importance" in results) == (n == 9)
    assert list(results["importance"]) == ["a", "b"] and results["importance"]["a"] > 0.7
    assert sum(results["importance"].values()) == pytest.approx(1, abs=1e-3)
    assert yaml.safe_load((tmp_path / "optimization_results.yaml").read_text()) == results
    lines = importance_lines(results)
    assert lines[0].startswith("parameter importance") and lines[1].split() == ["a", f"{results['importance']['a']:.3f}"]


def test_a_trial_left_running_runs_once_in_its_own_directory(search):
    sweep_dir, _ = search
    study = load_study(sweep_dir)
    held = len(study.trials)
    # what a sweep killed mid-trial leaves: a RUNNING trial of this sweep directory (dlrun.app.job resumes its files)
    space = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 50, log=True)}
    space["model.hidden_sizes"] = optuna.distributions.CategoricalDistribution(["[16]", "[0]"])
    left = optuna.trial.create_trial(
        state=TrialState.RUNNING,
        params={"optimizer.lr": 0.5, "model.hidden_sizes": "[16]"},
        distributions=space,
        user_attrs={"dlrun_sweep_dir": str(sweep_dir.resolve())},
    )
    study.add_trial(left)

    with contextlib.suppress(DlrunError):  # the study's earlier failed trials are rows of the summary still
        dlrun.sweep([*SEARCH, FAILING, f"hydra.sweeper.n_trials={held + 1}", f"hydra.sweep.dir={sweep_dir}"])

    study = load_study(sweep_dir)
    assert len(study.trials) == held + 1, "run, not duplicated"
    assert study.trials[held].state in (TrialState.COMPLETE, TrialState.PRUNED)
    job = jobs_by_trial(sweep_dir)[held]
    assert job.name == "model.hidden_sizes=[16],optimizer.lr=0.5"
    assert metrics(job)["status"] in ("completed", "pruned")
