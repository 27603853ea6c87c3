"""Faults during a run: a NaN loss, Ctrl-C and SIGTERM, kill -9 at random moments, a full disk, CUDA out
of memory. No run is lost: each stops with a clear line and a status, and `resume=` continues it to
exactly what an uninterrupted run with the same seed gives (on CPU)."""

import csv
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import DLRUN, REFERENCE_ARGS, needs_cuda, run_dlrun
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlrun.engine import checkpoint

pytestmark = pytest.mark.slow
STEPS_PER_EPOCH = 21  # ceil(1294 training digits / batch 64)


def start(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen(
        [DLRUN, *args],
        cwd=cwd,
        env={**env, "PYTHONHASHSEED": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
    watchdog = threading.Timer(300, proc.kill)  # never hang the suite
    watchdog.daemon = True
    watchdog.start()
    return proc


def wait_for_line(proc: subprocess.Popen, prefix: str) -> bool:
    """Read the run's output until a line starts with `prefix`; False when the run ended first."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return True
    return False


def wait_for_file(proc: subprocess.Popen, path: Path) -> None:
    while not path.exists() and proc.poll() is None:
        time.sleep(0.01)


def read_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def read_history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(f)]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_artefacts_readable(run: Path) -> None:
    """Whatever moment a kill came at, every file is an old or a new version, never a broken one."""
    assert read_metrics(run)["status"] in ("running", "completed", "interrupted", "failed")
    if (run / "history.csv").exists():
        read_history(run)
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            checkpoint.load(run / name)


def assert_same_as(run: Path, reference: Path) -> None:
    """The numbers a user sees: history, test metrics and every TensorBoard curve, step for step."""
    assert read_history(run) == read_history(reference)
    got, want = read_metrics(run), read_metrics(reference)
    assert got["status"] == "completed"
    assert got["test"] == want["test"]
    assert got["best"] == want["best"]
    got_curves, want_curves = scalars(run), scalars(reference)
    assert sorted(got_curves) == sorted(want_curves)
    for tag, points in got_curves.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice"
        assert steps == [s for s, _ in want_curves[tag]], tag
        assert [v for _, v in points] == pytest.approx([v for _, v in want_curves[tag]], rel=1e-6), tag


def test_sigterm_saves_the_run_and_resume_equals_an_uninterrupted_run(reference_run, tmp_path):
    proc = start("train", *REFERENCE_ARGS, "hydra.run.dir=run", cwd=tmp_path)
    assert wait_for_line(proc, "epoch 1/3")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    run = tmp_path / "run"

    assert proc.returncode == 143, err
    (line,) = err.strip().splitlines()
    match = re.fullmatch(
        r"dlrun: error: interrupted by SIGTERM at step (\d+) \(epoch (\d+)\); last\.pt holds epoch "
        rf"(\d+): continue with `dlrun train resume={re.escape(str(run))}`",
        line,
    )
    assert match, line
    step, last_epoch = int(match[1]), int(match[3])
    metrics = read_metrics(run)
    assert metrics["status"] == "interrupted"
    assert metrics["interrupted"] == {"signal": "SIGTERM", "step": step, "epoch": int(match[2]), "last_pt_epoch": last_epoch}
    assert checkpoint.load(run / "last.pt")["epoch"] == last_epoch >= 1
    # The event files were flushed: the step curve reaches the step the run stopped at.
    assert scalars(run)["train/loss_step"][-1][0] == step

    run_dlrun("train", "resume=run", cwd=tmp_path)
    assert_same_as(run, reference_run)
    assert read_metrics(run)["resumed_from"]["epoch"] == last_epoch


def test_ctrl_c_exits_130_with_the_state_kept(tmp_path):
    proc = start("train", *REFERENCE_ARGS, "hydra.run.dir=run", cwd=tmp_path)
    assert wait_for_line(proc, "epoch 1/3")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert err.startswith("dlrun: error: interrupted by SIGINT at step ")
    assert "Traceback" not in err
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "interrupted"
    assert checkpoint.load(tmp_path / "run" / "last.pt")["epoch"] == metrics["interrupted"]["last_pt_epoch"]


# Where a run can be killed (dlrun.core.faultpoints): mid-epoch at a step, once best.pt or last.pt is
# written, once an epoch is in the event file but not yet in history.csv, once the test is logged, and
# between writing any file's new version and renaming it over the old one (checkpoints, metrics.json, figures).
KILL_ARGS = (
    "trainer.epochs=3",
    "trainer.log_every_n_steps=5",
    "logging.graph=false",
    "logging.pr_curves=1",
    "logging.histograms_every=1",
)
KILL_POINTS = [("step", n) for n in range(1, 3 * STEPS_PER_EPOCH + 1)] + [
    (name, n) for name in ("best_saved", "last_saved", "epoch_flushed") for n in (1, 2, 3)
]
KILL_POINTS += [("test_logged", 1)] + [("file_written", n) for n in range(1, 21)]  # between a file's write and rename
# All 20 with DLRUN_KILL_TESTS=20; CI runs the first five, the moments most likely to break first.
FIRST = [("epoch_flushed", 2), ("last_saved", 1), ("test_logged", 1), ("step", 30), ("file_written", 9)]
KILLS = FIRST + random.Random(20).sample([p for p in KILL_POINTS if p not in FIRST], 20 - len(FIRST))
SOME_KILLS = KILLS if os.environ.get("DLRUN_KILL_TESTS") == "20" else FIRST


def run_in_python(*overrides: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    code = f"import dlrun; dlrun.train({list(overrides)!r})"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("kill_reference") / "run"
    done = run_in_python(*KILL_ARGS, f"hydra.run.dir={run}", cwd=run.parent)
    assert done.returncode == 0, done.stderr
    return run


def every_entry(run: Path) -> dict[str, list[int]]:
    """Each tag's steps as TensorBoard reads the directory whole: scalars, images, PR curves and texts."""
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    read = {"scalars": acc.Scalars, "images": acc.Images, "tensors": acc.Tensors, "histograms": acc.Histograms}
    return {f"{kind}:{tag}": [e.step for e in read[kind](tag)] for kind in read for tag in tags[kind]}


@pytest.mark.parametrize("point", SOME_KILLS, ids=[f"{name}-{n}" for name, n in SOME_KILLS])
def test_a_kill_at_any_moment_then_resume_shows_every_point_once(kill_reference, tmp_path, point):
    run = tmp_path / "run"
    killed = run_in_python(*KILL_ARGS, f"hydra.run.dir={run}", cwd=tmp_path, env={"DLRUN_KILL_POINT": f"{point[0]}:{point[1]}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if (run / "metrics.json").exists():
        assert_artefacts_readable(run)
    # Killed before its first checkpoint there is nothing to resume: the user starts it again, into the same folder.
    again = [f"resume={run}"] if (run / "last.pt").exists() else [*KILL_ARGS, f"hydra.run.dir={run}"]
    done = run_in_python(*again, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_same_as(run, kill_reference)
    got, want = every_entry(run), every_entry(kill_reference)
    assert set(got) == set(want), f"after the kill at {point}: {set(got) ^ set(want)}"
    for tag, steps in got.items():
        assert steps == want[tag], f"{tag}: {steps} after the kill at {point}, {want[tag]} without"


def test_a_nan_loss_stops_the_run_at_that_step(tmp_path):
    # The lr grows ten-thousandfold each epoch; losses are read only once an epoch (log_every_n_steps=1000),
    # yet the step reported is the first one whose loss is not finite.
    args = [a for a in REFERENCE_ARGS if not a.startswith(("trainer.epochs", "trainer.log_every"))]
    proc = run_dlrun(
        "train",
        *args,
        "trainer.epochs=8",
        "trainer.log_every_n_steps=1000",
        "scheduler=exponential",
        "scheduler.fn.gamma=10000",
        "hydra.run.dir=run",
        cwd=tmp_path,
        check=False,
    )
    run = tmp_path / "run"
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    match = re.match(
        r"dlrun: error: diverged: train loss is (nan|inf) at step (\d+) \(epoch (\d+)\); "
        r"last finite train loss \S+ at step (\d+)\.",
        line,
    )
    assert match, line
    step, epoch = int(match[2]), int(match[3])
    assert int(match[4]) == step - 1
    assert step != epoch * STEPS_PER_EPOCH, "the step where losses were read, not where the loss went bad"

    metrics = read_metrics(run)
    assert metrics["status"] == "diverged"
    assert metrics["diverged"]["step"] == step and metrics["diverged"]["epoch"] == epoch
    assert metrics["diverged"]["last_finite"]["step"] == step - 1
    assert metrics["diverged"]["last_epoch"]["epoch"] == epoch - 1
    # What came before is kept: the history, the curves up to that step, the checkpoints, the figure.
    assert [int(r["epoch"]) for r in read_history(run)] == list(range(1, epoch))
    losses = scalars(run)["train/loss_step"]
    assert [s for s, _ in losses] == list(range(1, step + 1))
    assert all(math.isfinite(v) for _, v in losses[:-1]) and not math.isfinite(losses[-1][1])
    last = checkpoint.load(run / "last.pt")
    assert last["epoch"] == epoch - 1
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert checkpoint.load(run / "best.pt")["epoch"] == metrics["best"]["epoch"]
    assert (run / "curves.png").is_file()


def test_a_diverging_job_does_not_stop_the_sweep(tmp_path):
    args = [a for a in REFERENCE_ARGS if not a.startswith("trainer.epochs")]
    proc = run_dlrun(
        "train",
        "-m",
        *args,
        "trainer.epochs=4",
        "scheduler=exponential",
        "scheduler.fn.gamma=1,10000",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        check=False,
    )
    statuses = {
        re.search(r"scheduler\.fn\.gamma=(\d+)", p.parent.name)[1]: json.loads(p.read_text())["status"]
        for p in (tmp_path / "sweep").glob("*/metrics.json")
    }
    assert statuses == {"1": "completed", "10000": "diverged"}, proc.stderr
    assert proc.returncode == 0, proc.stderr  # a diverged job is an answer, not a failure


def test_a_full_disk_is_one_line_and_keeps_what_was_written(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("eval"))
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}
    assert min(len(b) for b in before.values()) > 100_000

    def small_disk():  # no file may grow past 100 kB: the next checkpoint cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run(
        [DLRUN, "train", "resume=run", "trainer.epochs=4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_disk,
        env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
    )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert re.match(
        rf"dlrun: error: cannot write {re.escape(str(run))}/(best|last)\.pt: File too large\. Files "
        r"written before are intact",
        line,
    ), line
    for name, data in before.items():
        assert (run / name).read_bytes() == data, f"{name} changed"
    assert not list(run.glob(".*.tmp")), "a half-written file was left behind"
    assert read_metrics(run)["status"] == "failed"
    assert len(read_history(run)) == 3


def test_a_full_disk_during_an_event_file_write_names_it_and_the_run_resumes(tmp_path):
    """Checkpoints of a small MLP fit under the limit; the event file, with an image an epoch, outgrows it."""
    run = tmp_path / "run"

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    args = ["trainer.epochs=10", "logging.graph=false", "logging.misclassified=0"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [DLRUN, "train", *args, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_disk,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert re.match(rf"dlrun: error: cannot write {re.escape(str(run))}/events\.out\.tfevents\.\S+: File too large\. ", line), (
        line
    )
    assert read_metrics(run)["status"] == "failed"
    assert "File too large" in read_metrics(run)["error"] and "run failed: OSError" in (run / "train.log").read_text()
    stopped_at = len(read_history(run))
    assert 1 <= stopped_at < 10
    run_dlrun("train", f"resume={run}", cwd=tmp_path)
    reference = tmp_path / "reference"
    run_dlrun("train", *args, f"hydra.run.dir={reference}", cwd=tmp_path)
    assert_same_as(run, reference)
    images = {tag: steps for tag, steps in every_entry(run).items() if tag.startswith("images:")}
    assert images == {tag: steps for tag, steps in every_entry(reference).items() if tag.startswith("images:")}


@needs_cuda
def test_cuda_out_of_memory_names_the_batch_size(tmp_path):
    # 256 images of 512x512 through 4096 channels need about a terabyte of activations.
    proc = run_dlrun(
        "train",
        "device=cuda",
        "model=cnn",
        "model.channels=[4096]",
        "dataset.resize=512",
        "trainer.batch_size=256",
        "trainer.epochs=1",
        "hydra.run.dir=run",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("dlrun: error: CUDA out of memory on cuda")
    assert "trainer.batch_size=256" in line and "try trainer.batch_size=128" in line
    assert read_metrics(tmp_path / "run")["status"] == "failed"


@pytest.mark.parametrize("name", ["last.pt", "pr_curve.png", "curves.png", "summary.md"])
def test_a_full_disk_at_any_write_is_one_line_naming_the_file(tmp_path, name):
    """The disk fills (ENOSPC) exactly when `name` is written: a checkpoint, a figure of the test, the curves
    at the end, the sweep's summary. One line names it, and what was written before stays readable."""
    args = ["trainer.epochs=2", "logging.graph=false", "logging.misclassified=0"]
    sweep = name == "summary.md"
    target = tmp_path / ("S" if sweep else "run")
    where = ["-m", f"hydra.sweep.dir={target}", "optimizer.momentum=0,0.5"] if sweep else [f"hydra.run.dir={target}"]
    proc = run_dlrun("train", *where, *args, cwd=tmp_path, check=False, env={"DLRUN_FULL_DISK": name})
    assert proc.returncode in (1, 2), proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert re.match(
        rf"dlrun: error: cannot write {re.escape(str(target))}/(\S+/)?{re.escape(name)}: No space left on device", line
    ), line
    assert "Traceback" not in proc.stderr
    runs = [target] if not sweep else [d for d in target.iterdir() if d.is_dir() and not d.name.startswith(".")]
    for run in runs:
        assert_artefacts_readable(run)
    if name == "last.pt":  # its first checkpoint, before epoch 1 (a later one: test_a_full_disk_is_one_line...)
        assert read_metrics(target)["status"] == "failed" and "No space left" in read_metrics(target)["error"]
        assert not (target / "last.pt").exists() and not list(target.glob(".*.tmp"))
    elif not sweep:
        assert read_metrics(target)["status"] in ("completed", "failed") and (target / "best.pt").is_file()
