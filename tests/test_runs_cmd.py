"""`dlrun runs`: every run under a folder, newest first, with the status a user can trust (a run whose process is
gone shows as crashed, by its lock; one on another host says it cannot be checked), filters, --json, --paths that
`dlrun compare` takes, damaged metrics.json files as rows that say why. The run directories are copies of one real
run, edited as each status leaves them."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import run_dlrun

import dlrun
from dlrun.app import cli, runs_cmd
from dlrun.core.errors import DlrunError
from dlrun.core.lock import DirLock

pytestmark = pytest.mark.slow

QUIET = ("logging.graph=false", "logging.confusion_matrix_every=0", "logging.misclassified=0", "logging.pr_curves=0")
HOUR = 3600
WIDE = {"COLUMNS": "300"}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    return dlrun.train(["trainer.epochs=1", "model.hidden_sizes=[16]", *QUIET, f"hydra.run.dir={root / 'run'}"]).run_dir


def make_run(real: Path, dest: Path, hours_ago: float, **metrics) -> Path:
    """A copy of the real run's files, its metrics.json changed by `metrics` (None removes a key)."""
    dest.mkdir(parents=True)
    shutil.copytree(real / ".hydra", dest / ".hydra")
    for name in ("history.csv", ".dlrun.lock", "train.log"):
        shutil.copy(real / name, dest / name)
    data = json.loads((real / "metrics.json").read_text())
    data["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - hours_ago * HOUR))
    data.update(metrics)
    (dest / "metrics.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return dest


def choose(run_dir: Path, model: str, dataset_name: str) -> None:
    """What `model=<model> dataset.name=<name>` would have saved: the group's choice and the composed value."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    saved = yaml.safe_load(hydra_file.read_text())
    saved["hydra"]["runtime"]["choices"]["model"] = model
    hydra_file.write_text(yaml.safe_dump(saved))
    config_file = run_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["dataset"]["name"] = dataset_name
    config_file.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def outputs(real_run, tmp_path_factory):
    """outputs/ with a run of every status, single runs and a sweep's jobs; one run's lock held by this process."""
    root = tmp_path_factory.mktemp("listing")
    out = root / "outputs"
    runs, sweep = out / "runs", out / "sweeps" / "2026-01-01_00-00-00"
    test = json.loads((real_run / "metrics.json").read_text())["test"]
    made = {
        "completed": make_run(real_run, runs / "completed", 1),
        "cnn": make_run(real_run, runs / "cnn", 30, test={**test, "accuracy": 0.99}, dataset="mnist"),
        "live": make_run(real_run, runs / "live", 0.5, status="running", host=socket.gethostname(), best=None, test=None),
        "stale": make_run(real_run, runs / "stale", 2, status="running", host=socket.gethostname(), best=None, test=None),
        "elsewhere": make_run(real_run, runs / "elsewhere", 3, status="running", host="gpu-node-7", best=None, test=None),
        "failed": make_run(real_run, sweep / "0", 4, status="failed", error="CUDA out of memory", test=None),
        "diverged": make_run(real_run, sweep / "1", 5, status="diverged", test=None),
        "interrupted": make_run(real_run, sweep / "2", 6, status="interrupted", test=None),
        "pruned": make_run(real_run, sweep / "3", 7, status="pruned", test=None),
        "regression": make_run(real_run, runs / "regression", 80, test={"rmse": 0.25, "r2": 0.875}, diagnosis=None),
        "not_json": make_run(real_run, runs / "not_json", 9),
        "wrong_types": make_run(real_run, runs / "wrong_types", 10),
        "far_fetched": make_run(
            real_run, runs / "far_fetched", 0, started="0001-01-01T00:00:00+14:00", epochs_completed=1e400, test=None
        ),
    }
    choose(made["cnn"], "cnn", "mnist")
    (made["not_json"] / "metrics.json").write_text('{"status": "completed", "best": ')
    (made["wrong_types"] / "metrics.json").write_text(json.dumps({"status": "completed", "best": [0.9]}))
    for name, hours_ago in (
        ("not_json", 50),
        ("wrong_types", 60),
        ("far_fetched", 70),
    ):  # dated by their config's file, as Hydra wrote it
        when = time.time() - hours_ago * HOUR
        os.utime(made[name] / ".hydra" / "config.yaml", (when, when))
    never = runs / "never"
    shutil.copytree(real_run / ".hydra", never / ".hydra")
    (never / "train.log").write_text("")
    made["never"] = never
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    lock = DirLock(made["live"], "run", "hydra.run.dir").acquire()  # what a live `dlrun train` holds
    yield root, made
    lock.release()


def listed(capsys, root: Path, *args: str) -> list[dict]:
    return json.loads(run_main(capsys, root, "--json", *args))


def names_of(rows: list[dict], made: dict, root: Path) -> list[str]:
    """The fixture's names of the runs listed, in their order."""
    names = {str(path.resolve()): name for name, path in made.items()}
    return [names[str((root / row["path"]).resolve())] for row in rows]


def test_every_status_in_one_table_newest_first(outputs):
    root, made = outputs
    proc = run_dlrun("runs", cwd=root, env=WIDE)  # ./outputs by default, piped: plain columns
    lines = proc.stdout.splitlines()
    assert lines[0] == "13 runs in outputs, newest first" and "│" not in proc.stdout
    header = lines[1].split()
    assert header[:5] == ["date", "status", "model", "dataset", "epochs"]
    assert {"val/f1", "acc", "f1", "rmse", "r2", "verdict", "time", "path"} <= set(header)
    by_path = {line.split()[-1]: line for line in lines[2:-1]}
    rows = {name: by_path[str(path.relative_to(root))] for name, path in made.items() if name != "never"}
    assert " running " in rows["live"] and "crashed" in rows["stale"]
    assert "running on gpu-node-7?" in rows["elsewhere"]
    assert "failed: CUDA out of memory" in rows["failed"]
    assert "unreadable: " in rows["not_json"] and "not JSON" in rows["not_json"]
    assert "unreadable: " in rows["wrong_types"] and '"best" is a list, not an object' in rows["wrong_types"]
    assert "never" not in proc.stdout.replace("never-started", "")
    assert lines[-1] == "(1 never-started run directory left out; --all shows them)"
    completed = rows["completed"].split()
    metrics = json.loads((made["completed"] / "metrics.json").read_text())
    assert completed[2:5] == ["completed", "mlp", "digits"] and completed[5] == "1/1"
    assert completed[6:9] == [
        f"{metrics['best']['val/f1']:.4f}",
        f"{metrics['test']['accuracy']:.4f}",
        f"{metrics['test']['f1']:.4f}",
    ]
    assert metrics["diagnosis"]["verdict"] in completed
    regression = rows["regression"].split()
    assert "0.2500" in regression and "0.8750" in regression  # its rmse and r2; no accuracy, no f1


def got_epochs(rows: list[dict], names: list[str], name: str):
    return rows[names.index(name)]["epochs"]


def test_json_holds_the_same_fields_and_all_shows_never_started(outputs, capsys):
    root, made = outputs
    rows = listed(capsys, root, "--all")
    names = names_of(rows, made, root)
    # newest first, as the fixture dated them; the unreadable ones by their config file's date
    order = ["never", "live", "completed", "stale", "elsewhere", "failed", "diverged", "interrupted", "pruned", "cnn"]
    assert names == [*order, "not_json", "wrong_types", "far_fetched", "regression"]
    assert got_epochs(rows, names, "far_fetched") == 1  # not 1e400 (infinite, once read): history.csv's one row
    got = dict(zip(names, rows))
    assert {k: got[k]["status"] for k in made} == {
        "completed": "completed",
        "cnn": "completed",
        "live": "running",
        "stale": "crashed",
        "elsewhere": "running",
        "failed": "failed",
        "diverged": "diverged",
        "interrupted": "interrupted",
        "pruned": "pruned",
        "regression": "completed",
        "not_json": "unreadable",
        "wrong_types": "unreadable",
        "far_fetched": "completed",
        "never": "not started",
    }
    assert "gpu-node-7" in got["elsewhere"]["note"] and got["elsewhere"]["host"] == "gpu-node-7"
    assert got["failed"]["note"] == "CUDA out of memory"
    assert got["cnn"]["model"] == "cnn" and got["cnn"]["dataset"] == "mnist"
    assert got["regression"]["test/rmse"] == 0.25 and got["regression"]["test/accuracy"] is None
    with open(made["completed"] / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert got["stale"]["epochs"] == len(history) and got["stale"]["best"] == pytest.approx(float(history[-1]["val/f1"]))
    assert got["completed"]["epochs_planned"] == 1 and got["completed"]["wall_time_s"] > 0


def test_the_real_run_says_who_runs_it(real_run):
    metrics = json.loads((real_run / "metrics.json").read_text())
    assert metrics["host"] == socket.gethostname() and metrics["pid"] == os.getpid()  # in-process: this one
    assert (
        metrics["epochs_planned"] == 1
        and abs(time.time() - time.mktime(time.strptime(metrics["started"][:19], "%Y-%m-%dT%H:%M:%S"))) < 600
    )


def run_main(capsys, root: Path, *args: str) -> str:
    cwd = Path.cwd()
    os.chdir(root)
    try:
        runs_cmd.main(["outputs", *args])
    finally:
        os.chdir(cwd)
    return capsys.readouterr().out


def paths_of(capsys, root: Path, made: dict, *args: str) -> list[str]:
    return names_of([{"path": p} for p in run_main(capsys, root, "--paths", *args).splitlines()], made, root)


def test_filters_sort_and_limit(outputs, capsys, monkeypatch):
    root, made = outputs
    monkeypatch.setenv("DLRUN_DATA_DIR", "/data/here")  # dataset.root: ${paths.data_dir}, ${oc.env:DLRUN_DATA_DIR,./data}
    assert len(paths_of(capsys, root, made, "--where", "dataset.root=/data/here")) == 13
    assert paths_of(capsys, root, made, "--where", "trainer.epochs=1", "--where", "resume=null", "--status", "crashed") == [
        "stale"
    ]
    assert set(paths_of(capsys, root, made, "--status", "crashed,failed")) == {"stale", "failed"}
    assert set(paths_of(capsys, root, made, "--status", "pruned", "--status", "diverged")) == {"pruned", "diverged"}
    assert paths_of(capsys, root, made, "--status", "not-started") == ["never"]
    assert paths_of(capsys, root, made, "--where", "model=cnn") == ["cnn"]  # the config group's choice
    assert paths_of(capsys, root, made, "--where", "dataset.name=mnist") == ["cnn"]  # the composed config
    assert set(paths_of(capsys, root, made, "--where", "model=cnn,mlp", "--where", "dataset.name=digits")) == set(made) - {
        "cnn",
        "never",
    }
    assert "regression" not in paths_of(capsys, root, made, "--since", "2d") and "cnn" in paths_of(
        capsys, root, made, "--since", "2d"
    )
    assert paths_of(capsys, root, made, "--since", "150m") == ["live", "completed", "stale"]
    by_acc = paths_of(capsys, root, made, "--sort", "test/accuracy")
    assert by_acc[0] == "cnn"  # best first: 0.99
    worst_first = paths_of(capsys, root, made, "--sort", "-test/accuracy")
    assert worst_first[-1] != "cnn" and worst_first.index("cnn") == 1  # both completed copies have accuracy
    assert paths_of(capsys, root, made, "--sort", "test/accuracy", "--reverse") == worst_first
    assert paths_of(capsys, root, made, "--sort", "date", "--reverse", "--limit", "2") == ["regression", "far_fetched"]
    assert paths_of(capsys, root, made, "--limit", "1") == ["live"]
    table = run_main(capsys, root, "--status", "crashed", "--limit", "1")
    assert table.splitlines()[0] == "1 run in outputs, newest first"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--status", "crashd"], "--status crashd: not a status; did you mean 'crashed'?"),
        (["--where", "modle=cnn"], "--where modle=cnn: no run has modle; did you mean 'model'?"),
        (["--where", "model"], "--where model: not KEY=VALUE"),
        (["--since", "2y"], "--since 2y: not a duration"),
        (["--limit", "0"], "--limit 0: must be 1 or more"),
        (["--sort", "test/acuracy"], "--sort test/acuracy: no run has test/acuracy; did you mean 'test/accuracy'"),
        (["--json", "--paths"], "not allowed with argument --json"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(outputs, capsys, args, named):
    root, _ = outputs
    with pytest.raises(DlrunError, match=None) as err:
        run_main(capsys, root, *args)
    assert named in str(err.value) and err.value.exit_code == 2 and "\n" not in str(err.value)


def test_bad_flag_from_the_command_exits_2_without_traceback(outputs):
    root, _ = outputs
    proc = run_dlrun("runs", "--since", "soon", cwd=root, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "dlrun: error: --since soon: not a duration; a number and m, h, d or w (30m, 12h, 2d, 1w)\n"


def test_help_and_the_command_list_name_it(capsys):
    with pytest.raises(SystemExit) as done:
        runs_cmd.main(["--help"])
    assert done.value.code == 0 and "usage: dlrun runs" in capsys.readouterr().out
    cli.print_help()
    assert "  runs      list the runs" in capsys.readouterr().out


def test_paths_feed_dlrun_compare(outputs, capsys):
    root, made = outputs
    chosen = run_main(capsys, root, "--status", "completed", "--paths").split()
    assert {Path(p).name for p in chosen} == {"completed", "cnn", "regression", "far_fetched"}
    run_dlrun("compare", *chosen, "--out", "picked", cwd=root, env=WIDE)
    with open(root / "picked" / "summary.csv", newline="") as f:
        compared = {str((root / "picked" / row["path"]).resolve()) for row in csv.DictReader(f)}
    assert compared == {str((root / p).resolve()) for p in chosen}


HOLD_LOCK = """
import sys, time
from pathlib import Path
from dlrun.core.lock import DirLock
DirLock(Path(sys.argv[1]), "run", "hydra.run.dir").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_writer_leaves_its_run_crashed(real_run, tmp_path, capsys):
    """The lock `dlrun train` holds (test_locks.py shows it does), taken by a child process that is then killed -9."""
    run_dir = tmp_path / "outputs" / "runs" / "long"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        make_run(real_run, run_dir.parent / "copy", 0, status="running", host=socket.gethostname(), pid=holder.pid)
        shutil.copytree(run_dir.parent / "copy", run_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".dlrun.lock"))
        shutil.rmtree(run_dir.parent / "copy")
        assert listed(capsys, tmp_path)[0]["status"] == "running"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    (row,) = listed(capsys, tmp_path)
    assert row["status"] == "crashed" and row["path"] == "outputs/runs/long"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"  # as it was left
