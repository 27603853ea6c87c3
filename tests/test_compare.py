"""`dlrun compare` over runs that already exist: the config values as they resolved, the device the run used,
no bookkeeping columns, the columns and ranking a user chooses, cells cut to the terminal, one-line errors.
The sweeps' own compare tests are in test_sweeps.py, beside the sweeps they read."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import run_dlrun
from test_train_run import finished_run

import dlrun

pytestmark = pytest.mark.slow

QUIET = ("logging.graph=false", "logging.confusion_matrix_every=0", "logging.misclassified=0", "logging.pr_curves=0")
LONG_NAME = "2024-05-01_10-00-00_a_run_directory_with_a_long_name_mlp_digits"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """One epoch set through dataset.epochs, so that its saved config keeps trainer.epochs as
    `${oc.select:dataset.epochs,20}`; device=auto, and resume=null, a key that tells runs nothing."""
    root = tmp_path_factory.mktemp("tiny")
    overrides = ["dataset.epochs=1", "model.hidden_sizes=[16]", "device=auto", "resume=null", *QUIET]
    return dlrun.train([*overrides, f"hydra.run.dir={root / LONG_NAME}"]).run_dir


def rows_of(out_dir: Path) -> list[dict]:
    with open(out_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def last(run_dir: Path, key: str) -> float:
    with open(run_dir / "history.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1][key])


def test_compare_shows_resolved_values_the_device_used_and_no_bookkeeping(tiny, tmp_path_factory, tmp_path):
    saved = yaml.safe_load((tiny / ".hydra" / "config.yaml").read_text())
    assert saved["trainer"]["epochs"] == "${oc.select:dataset.epochs,20}"  # as the run saved it

    mlp = finished_run("mlp", tmp_path_factory).dir  # trainer.epochs=3 device=cpu, from test_train_run
    proc = run_dlrun("compare", str(tiny), str(mlp), "--out", "two", cwd=tmp_path, env={"COLUMNS": "250"})
    rows = {Path(r["path"]).name: r for r in rows_of(tmp_path / "two")}
    assert (rows[LONG_NAME]["trainer.epochs"], rows["mlp"]["trainer.epochs"]) == ("1", "3")
    assert (rows[LONG_NAME]["dataset.epochs"], rows["mlp"]["dataset.epochs"]) == ("1", "20")
    written = proc.stdout + (tmp_path / "two" / "summary.md").read_text() + (tmp_path / "two" / "summary.csv").read_text()
    assert "${" not in written
    # device=auto that ran on the CPU and device=cpu: the same device, no column. Logging keys, resume, paths
    # and Hydra's own keys tell nothing about what was learned.
    assert ("device" in rows["mlp"]) == (metrics(tiny)["device"] != "cpu")
    for key in ("resume", "logging.graph", "hydra.run.dir", "paths.data_dir", "paths.output_dir"):
        assert key not in rows["mlp"], key

    # One run alone: its overrides, with the device it used where it said auto.
    proc = run_dlrun("compare", str(tiny), "--out", "one", cwd=tmp_path, env={"COLUMNS": "250"})
    (row,) = rows_of(tmp_path / "one")
    assert row["device"] == metrics(tiny)["device"] != "auto"
    assert "resume" not in row and "logging.graph" not in row
    assert " auto " not in proc.stdout


def test_compare_ranks_by_and_shows_the_columns_asked_for(tiny, tmp_path_factory, tmp_path):
    mlp = finished_run("mlp", tmp_path_factory).dir
    columns = "train/loss@last,val/auroc,test/f1_micro,test/average_precision,verdict"
    args = ("compare", str(tiny), str(mlp), "--out", "cmp", "--rank-by", "train/loss@last", "--columns", columns)
    proc = run_dlrun(*args, cwd=tmp_path, env={"COLUMNS": "100"})
    rows = rows_of(tmp_path / "cmp")
    assert [float(r["train/loss (last)"]) for r in rows] == pytest.approx(sorted(last(d, "train/loss") for d in (tiny, mlp)))
    for row in rows:
        run_dir = tiny if row["path"].endswith(LONG_NAME) else mlp
        m = metrics(run_dir)
        assert float(row["train/loss (last)"]) == pytest.approx(last(run_dir, "train/loss"), abs=1e-6)
        assert float(row["val/auroc (best epoch)"]) == pytest.approx(m["best"]["val/auroc"], abs=1e-6)
        assert float(row["test/f1_micro"]) == pytest.approx(m["test"]["f1_micro"], abs=1e-6)
        assert float(row["test/average_precision"]) == pytest.approx(m["test"]["average_precision"], abs=1e-6)
        assert row["verdict"] == m["diagnosis"]["verdict"]
        assert float(row["best_val/f1"]) == pytest.approx(m["best"]["val/f1"], abs=1e-6), "summary.csv keeps the defaults"

    # The console table: the chosen columns in order; the long run name cut to fit, its numbers whole.
    lines = proc.stdout.splitlines()
    assert lines[0] == "2 runs in 2 folders, ranked by train/loss (last), lowest first"  # summary.md names them
    header = " ".join(lines[1:3])  # two lines of headers: train/loss over (last)
    for name in ("train/loss", "(last)", "val/auroc", "(best epoch)", "f1_micro", "average_precision", "verdict", "status"):
        assert name in header, name
    assert "val/f1" not in header
    tiny_line = next(line for line in lines[3:] if "completed" in line and "…" in line)
    assert LONG_NAME not in tiny_line and LONG_NAME.endswith(tiny_line.split("…")[1].split()[0])
    assert f"{last(tiny, 'train/loss'):.4f}" in tiny_line and metrics(tiny)["diagnosis"]["verdict"] in tiny_line


def test_compare_errors_are_one_line(tiny, tmp_path):
    proc = run_dlrun("compare", "no/such/dir", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "dlrun: error: no/such/dir: no such directory (give a run or sweep directory)"
    (tmp_path / "empty").mkdir()
    proc = run_dlrun("compare", "empty", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "empty: no runs in it" in proc.stderr and "Traceback" not in proc.stderr

    # A column no run has, or one that is not a column: one line, nothing written.
    proc = run_dlrun("compare", str(tiny), "--out", "typo", "--columns", "train/los@last", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("dlrun: error: no run has train/los; did you mean 'train/loss'")
    assert not (tmp_path / "typo").exists()
    proc = run_dlrun("compare", str(tiny), "--rank-by", "val/loss@median", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "val/loss@median: not a column" in proc.stderr


def test_compare_leaves_out_never_started_run_directories_unless_asked(tiny, tmp_path):
    """A leftover holding only Hydra's .hydra/ (a run killed before its first write) is not a row by default."""
    folder = tmp_path / "runs"
    folder.mkdir()
    shutil.copytree(tiny, folder / "done")
    (folder / "leftover" / ".hydra").mkdir(parents=True)
    shutil.copy(tiny / ".hydra" / "config.yaml", folder / "leftover" / ".hydra" / "config.yaml")
    out = run_dlrun("compare", str(folder), "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert "1 never-started run directory left out; --all shows them" in out.stdout
    assert [Path(r["path"]).name for r in rows_of(tmp_path / "a")] == ["done"]
    run_dlrun("compare", str(folder), "--all", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert sorted(Path(r["path"]).name for r in rows_of(tmp_path / "b")) == ["done", "leftover"]
