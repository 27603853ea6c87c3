"""One writer per run directory and per sweep directory: a second `dlrun train` into a directory that a
running dlrun holds stops at once with one line, and the first run is untouched."""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import DLRUN, run_dlrun

pytestmark = pytest.mark.slow

QUICK = ["dataset=spiral", "logging.graph=false", "logging.confusion_matrix_every=0", "logging.misclassified=0"]


def start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen([DLRUN, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def training(folder: Path) -> bool:
    """A run in `folder`, or in a job folder of it, has started training."""
    for metrics in [folder / "metrics.json", *folder.glob("*/metrics.json")]:
        try:
            if json.loads(metrics.read_text()).get("status") == "running":
                return True
        except (OSError, ValueError):
            pass
    return False


def wait_until_training(proc: subprocess.Popen, folder: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not training(folder):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the first run never started training"
        time.sleep(0.1)


def refused(proc, folder: Path, what: str, holder: subprocess.Popen) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        f"dlrun: error: {folder}: another dlrun is writing into this {what} directory "
        f"(pid {holder.pid} on {socket.gethostname()}, since "
    ), line
    assert f"choose another folder with hydra.{what}.dir=PATH" in line


def test_a_second_run_or_a_resume_into_a_running_runs_directory_stops_at_once(tmp_path):
    first = start("train", *QUICK, "trainer.epochs=50", "hydra.run.dir=run", cwd=tmp_path)
    run = tmp_path / "run"
    wait_until_training(first, run)
    overrides = (run / ".hydra" / "overrides.yaml").read_bytes()

    again = run_dlrun("train", *QUICK, "seed=7", "hydra.run.dir=run", cwd=tmp_path, check=False)
    refused(again, Path("run"), "run", first)
    resumed = run_dlrun("train", f"resume={run}", cwd=tmp_path, check=False)
    refused(resumed, run, "run", first)
    assert first.poll() is None, "the first run is still training"

    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 50
    assert (run / ".hydra" / "overrides.yaml").read_bytes() == overrides, "the second command wrote nothing there"
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 50


def test_a_second_sweep_into_a_running_sweeps_directory_stops_at_once(tmp_path):
    sweep = ["train", "-m", *QUICK, "trainer.epochs=25", "optimizer.momentum=0,0.5", "hydra.sweep.dir=sweep"]
    first = start(*sweep, cwd=tmp_path)
    wait_until_training(first, tmp_path / "sweep")
    again = run_dlrun(*sweep, cwd=tmp_path, check=False)
    refused(again, Path("sweep"), "sweep", first)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    rows = json.loads((tmp_path / "sweep" / "summary.json").read_text())["rows"]
    assert sorted(r["status"] for r in rows) == ["completed", "completed"]
