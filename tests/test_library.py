"""dlrun from Python, as a notebook uses it: `dlrun.train` and `dlrun.sweep` run in the calling process
and return what the run wrote; a mistake raises dlrun's own error with the line the command prints."""

import csv
import json
import subprocess
import sys

import pytest

import dlrun
from dlrun.core.errors import DlrunError

QUICK = [
    "trainer.epochs=2",
    "device=cpu",
    "trainer.precision=32",
    "logging.graph=false",
    "logging.misclassified=0",
    "logging.confusion_matrix_every=0",
]


def test_import_dlrun_loads_neither_torch_nor_hydra():
    code = "import sys, dlrun; print('torch' in sys.modules, 'hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    return [dlrun.train([*QUICK, f"hydra.run.dir={root / name}"]) for name in ("first", "second")]


def test_train_returns_the_run_as_its_files_hold_it(two_runs):
    run = two_runs[0]
    assert run.status == "completed"
    assert run.metrics == json.loads((run.run_dir / "metrics.json").read_text())
    with open(run.run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in run.history] == [1.0, 2.0] == [float(r["epoch"]) for r in rows]
    assert run.history[-1]["val/f1"] == pytest.approx(float(rows[-1]["val/f1"]))
    assert run.metrics["test"]["accuracy"] > 0.5, "two epochs of an MLP on digits learn something"
    assert (run.run_dir / "best.pt").is_file() and (run.run_dir / ".hydra" / "config.yaml").is_file()


def test_a_second_run_in_the_same_process_gives_the_same_numbers(two_runs):
    first, second = two_runs
    assert first.run_dir != second.run_dir
    untimed = [[{k: v for k, v in row.items() if k != "time_s"} for row in run.history] for run in two_runs]
    assert untimed[0] == untimed[1]
    assert first.metrics["test"] == second.metrics["test"]


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1: must be a number > 0"),
        (["model=mpl"], "model=mpl: no such option; did you mean 'mlp'?"),
        (["trainer.epoch=3"], "trainer.epoch: no such key; did you mean 'trainer.epochs'"),
    ],
)
def test_a_bad_override_raises_dlruns_error_with_the_commands_line(overrides, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DlrunError) as raised:
        dlrun.train(overrides)  # pytest would report a SystemExit as an error of its own, not this
    assert str(raised.value).startswith(line)
    assert "\n" not in str(raised.value)
    assert raised.value.exit_code == 2
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not list(runs.iterdir()), "a run that never started leaves no directory"


def test_config_dir_adds_a_users_own_option(tmp_path):
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "tiny.yaml").write_text("_target_: dlrun.model.MLP\nhidden_sizes: [7]\n")
    run = dlrun.train(["model=tiny", *QUICK, f"hydra.run.dir={tmp_path / 'run'}"], config_dir=tmp_path / "configs")
    assert run.status == "completed"
    assert run.metrics["parameters"]["total"] == 64 * 7 + 7 + 7 * 10 + 10


def test_sweep_returns_the_summary_rows_best_first(tmp_path):
    rows = dlrun.sweep(["optimizer.momentum=0,0.9", *QUICK, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert sorted(r["optimizer.momentum"] for r in rows) == ["0", "0.9"]
    assert all(r["status"] == "completed" for r in rows)
    assert rows[0]["best_val/f1"] >= rows[1]["best_val/f1"]
    with open(tmp_path / "sweep" / "summary.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["run"] for r in written] == [r["run"] for r in rows]
