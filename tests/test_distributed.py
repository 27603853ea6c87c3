"""Several processes with DistributedDataParallel: gloo on CPU (2 processes on the digits), nccl when 2 GPUs exist.

What makes a 2-process run comparable to a single process: trainer.batch_size is per device and
scale_lr is off, so 2 ranks x 32 take, step for step, the same 64 samples as one process with
batch_size=64 and the same lr (DDP averages the two half-batch gradients, which is the gradient of
the 64-sample mean loss). The digits' 1294 training samples end in a batch of 14 = 2 x 7, so every
step splits evenly and the two runs should agree up to float rounding.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from helpers import needs_two_gpus, run_dlrun
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from dlrun.app import launch
from dlrun.core.errors import ConfigError
from dlrun.data import DeviceLoader, Split, load_data
from dlrun.engine import checkpoint, ddp
from dlrun.engine.run import RunContext

# fp32: the comparison is about DDP, not about bf16 rounding (precision=auto picks bf16 on some CPUs).
COMMON = [
    "model=mlp",
    "trainer.epochs=2",
    "trainer.precision=32",
    "logging.misclassified=0",
    "logging.graph=false",
    "logging.confusion_matrix_every=0",
    "seed=7",
]
# `python -m dlrun`, as torchrun -m runs it, with rank 1 starting late, as on a slower node:
# the ranks' Hydra clocks then differ and only the shared clock keeps them in one directory.
LATE_RANK_1 = """
import os, runpy, time
if os.environ.get("RANK") == "1":
    time.sleep(1.5)
runpy.run_module("dlrun", run_name="__main__", alter_sys=True)
"""


def only_run_dir(workdir: Path) -> Path:
    runs = sorted((workdir / "outputs" / "runs").iterdir())
    assert len(runs) == 1, f"expected one run directory, found {[r.name for r in runs]}"
    return runs[0]


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def step_losses(run_dir: Path) -> list[float]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss_step")]


def assert_same_metrics(ddp_dir: Path, single_dir: Path, tol: float) -> None:
    ddp, single = history(ddp_dir), history(single_dir)
    assert len(ddp) == len(single) == 2
    for a, b in zip(ddp, single):
        for key in a:
            if key.startswith(("train/", "val/")) or key == "lr":
                assert float(a[key]) == pytest.approx(float(b[key]), abs=tol), (a["epoch"], key)
    ddp_test = json.loads((ddp_dir / "metrics.json").read_text())["test"]
    single_test = json.loads((single_dir / "metrics.json").read_text())["test"]
    assert ddp_test == pytest.approx(single_test, abs=tol)
    # The step curve of the 2-rank run is the mean over ranks: the loss of the 64-sample batch.
    ddp_steps, single_steps = step_losses(ddp_dir), step_losses(single_dir)
    assert len(ddp_steps) == len(single_steps) == 2 * 21
    assert ddp_steps == pytest.approx(single_steps, abs=tol)


# ---------------------------------------------------------------- sharding (no processes)


def split_of(n: int) -> Split:
    return Split(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n))


@pytest.mark.parametrize("n,batch,world", [(1294, 32, 2), (13, 3, 2), (100, 8, 3), (7, 4, 4)])
def test_rank_shards_make_up_the_single_process_batches(n, batch, world):
    single = DeviceLoader(split_of(n), batch * world, "cpu", (0.0,), (1.0,), shuffle=True, seed=5)
    ranks = [
        DeviceLoader(split_of(n), batch, "cpu", (0.0,), (1.0,), shuffle=True, seed=5, rank=r, world_size=world)
        for r in range(world)
    ]
    assert len({len(loader) for loader in ranks}) == 1, "every rank must take as many steps, or DDP would hang"
    for _ in range(2):  # two epochs: the permutation changes, and stays shared
        one = [set(y.tolist()) for _, y in single]
        per_rank = [[y.tolist() for _, y in loader] for loader in ranks]
        steps = list(zip(*per_rank))
        served = set()
        for i, step in enumerate(steps):
            together = set().union(*map(set, step))
            served |= together
            if i < min(len(one), len(steps)) - 1:  # the last batches differ by padding and merging
                assert together == one[i]  # the same global batch as one process, step for step
        assert served == set(range(n))  # padding repeats a few samples; none is left out


@pytest.mark.parametrize("n,world", [(144, 2), (359, 3), (2, 4)])
def test_evaluation_shards_cover_each_sample_once(n, world):
    seen = [
        y.tolist()
        for r in range(world)
        for _, y in DeviceLoader(split_of(n), 50, "cpu", (0.0,), (1.0,), shuffle=False, rank=r, world_size=world)
    ]
    assert sorted(sum(seen, [])) == list(range(n))


def failure(rank: int, exitcode: int, tmp_path: Path, message: str | None = None) -> ProcessFailure:
    error_file = tmp_path / f"error{rank}.json"
    if message:
        error_file.write_text(json.dumps({"message": message, "timestamp": int(time.time()), "dlrun": True}))
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


def test_failure_names_the_rank_that_died_not_the_ones_stopped_after_it(tmp_path):
    message, code = launch.describe_failure(
        {0: failure(0, -signal.SIGTERM, tmp_path), 1: failure(1, -signal.SIGKILL, tmp_path)}, tmp_path / "run", "train"
    )
    assert message.startswith("rank 1 was killed by SIGKILL (pid 1001)")
    assert "rank 0" not in message and "train.rank1.log" in message
    assert code == 1

    message, code = launch.describe_failure(
        {
            0: failure(0, ddp.PEER_LOST_EXIT, tmp_path, "stopped: lost contact with another rank"),
            1: failure(1, 2, tmp_path, "dataset.root=/nowhere: MNIST files not found"),
        },
        tmp_path / "run",
        "train",
    )
    assert message.startswith("rank 1 exited with code 2: dataset.root=/nowhere: MNIST files not found")
    assert code == 2  # a config or data error keeps its exit code through the launcher


@pytest.mark.parametrize("key,value", [("devices", 0), ("devices", "two"), ("scale_lr", "yes"), ("dist_timeout_s", -1)])
def test_bad_distributed_settings_name_the_key(key, value):
    cfg = OmegaConf.create({"trainer": {"devices": 1, "scale_lr": False, "dist_timeout_s": 300, key: value}})
    with pytest.raises(ConfigError, match=rf"^trainer\.{key}="):
        launch.run_on_devices(cfg, RunContext(Path("unused")), run_one=lambda cfg, ctx: pytest.fail("must not train"))


@pytest.mark.parametrize("world,enabled,lr", [(2, True, 0.2), (2, False, 0.1), (1, True, 0.1)])
def test_scale_lr_multiplies_by_the_world_size(monkeypatch, world, enabled, lr):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ddp.scale_lr(optimizer, enabled)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr)


# ---------------------------------------------------------------- 2 processes, gloo on CPU


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ddp")
    proc = run_dlrun("train", "trainer.devices=2", "device=cpu", "trainer.batch_size=32", *COMMON, cwd=workdir, timeout=240)
    return proc, only_run_dir(workdir)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("single")
    run_dlrun("train", "device=cpu", "trainer.batch_size=64", *COMMON, cwd=workdir, timeout=240)
    return only_run_dir(workdir)


@pytest.mark.slow
def test_two_processes_write_one_run_directory_from_rank_0(ddp_run):
    proc, run_dir = ddp_run
    assert "launching 2 processes (gloo on cpu)" in proc.stdout
    assert proc.stdout.count("epoch 1/2") == 1 and proc.stdout.count("best epoch") == 1  # rank 0 alone prints
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").is_file() and (run_dir / "train.rank1.log").is_file()
    assert "epoch 2/2" in (run_dir / "train.rank1.log").read_text()  # rank 1 trained too, and logged apart


@pytest.mark.slow
def test_the_launching_process_starts_no_figure_helpers_and_rank_0_draws_the_figures(tmp_path):
    """The process that starts the ranks trains nothing: helpers of its own would take the cores from the ranks'
    start-up for figures nobody asks it for."""
    run_dir = tmp_path / "run"
    args = ["trainer.devices=2", "device=cpu", "trainer.batch_size=32", *COMMON, f"hydra.run.dir={run_dir}"]
    code = (
        f"import dlrun\nrun = dlrun.train({args!r})\nfrom dlrun.observe import drawing\n"
        "print('helpers', 0 if drawing._painter is None else len(drawing._painter.helpers), run.status)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "helpers 0 completed"
    assert {"curves.png", "confusion_matrix.png", "pr_curve.png", "roc_curve.png"} <= {p.name for p in run_dir.glob("*.png")}


@pytest.mark.slow
def test_two_processes_match_one_process_over_the_same_global_batch(ddp_run, single_run):
    # Synchronised by torchmetrics: without it rank 0 would report on half of the val set.
    assert_same_metrics(ddp_run[1], single_run, tol=1e-4)


@pytest.mark.slow
def test_checkpoint_of_two_processes_loads_in_one(ddp_run):
    from hydra.utils import instantiate

    run_dir = ddp_run[1]
    state = checkpoint.load(run_dir / "best.pt")
    assert not any(k.startswith("module.") for k in state["model"])
    cfg = OmegaConf.create(state["config"])
    data = load_data(cfg.dataset, cfg.seed, cfg.trainer.val_fraction)
    model = instantiate(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes)
    model.load_state_dict(state["model"])  # strict: every key matches a single-device model
    model.eval()
    loader = DeviceLoader(data.test, 1024, "cpu", data.mean, data.std, shuffle=False)
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert correct / len(data.test) == pytest.approx(test["accuracy"], abs=1e-6)
    # and `dlrun eval`, which rebuilds the model from the checkpoint alone, in one process
    run_dlrun("eval", str(run_dir), "device=cpu", cwd=run_dir.parent, timeout=120)
    evaluated = json.loads((run_dir / "eval" / "digits-test-best" / "metrics.json").read_text())
    assert evaluated["test"] == pytest.approx(test, abs=1e-5)


@pytest.mark.slow
def test_torchrun_ranks_share_one_run_directory(tmp_path):
    script = tmp_path / "late_rank_1.py"
    script.write_text(LATE_RANK_1)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            str(script),
            "train",
            "device=cpu",
            "trainer.epochs=1",
            "logging.misclassified=0",
            "logging.graph=false",
            "logging.confusion_matrix_every=0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = only_run_dir(tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["world_size"] == 2
    assert (run_dir / "train.rank1.log").is_file()


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """The 2-process run with rank 1 killed at its 5th step; what it left, read before anything resumes it."""
    workdir = tmp_path_factory.mktemp("killed")
    start = time.time()
    proc = run_dlrun(
        "train",
        "trainer.devices=2",
        "device=cpu",
        "trainer.batch_size=32",
        *COMMON,
        cwd=workdir,
        env={ddp.KILL_ENV: "1:5"},
        check=False,
        timeout=120,
    )
    ended = time.time()
    run_dir = only_run_dir(workdir)
    status = json.loads((run_dir / "metrics.json").read_text())["status"]
    return proc, run_dir, start, ended, status, (run_dir / "train.rank1.log").read_text()


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_within_seconds(killed_run):
    proc, run_dir, start, ended, status, rank1_log = killed_run
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"dlrun: error: rank 1 was killed by SIGKILL \(pid \d+\); the other ranks were stopped", last)
    assert "Traceback" not in proc.stderr
    assert status == "failed"
    # From the kill (logged by rank 1 just before) to the launcher's exit: seconds, not a hang.
    stamp = re.search(r"^\[([\d\- :,]+)\]\[WARNING\] " + ddp.KILL_ENV, rank1_log, re.M).group(1)
    killed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert start < killed < ended and ended - killed < 15


@pytest.mark.slow
def test_resume_after_a_rank_died_continues_as_if_never_stopped(killed_run, ddp_run):
    _, run_dir, *_ = killed_run
    proc = run_dlrun("train", f"resume={run_dir}", cwd=run_dir.parent.parent.parent, timeout=240)
    assert "launching 2 processes" in proc.stdout and "resuming from epoch 0" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
    # The same 2-process run that was never interrupted: same data order, same weights, same numbers.
    assert_same_metrics(run_dir, ddp_run[1], tol=1e-4)


# ---------------------------------------------------------------- 2 GPUs, nccl


@pytest.mark.slow
@needs_two_gpus
def test_two_gpus_with_nccl_match_one_gpu(tmp_path):
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    proc = run_dlrun(
        "train", "trainer.devices=2", "device=cuda", "trainer.batch_size=32", *COMMON, cwd=tmp_path / "ddp", timeout=240
    )
    assert "launching 2 processes (nccl on cuda)" in proc.stdout
    run_dlrun("train", "device=cuda", "trainer.batch_size=64", *COMMON, cwd=tmp_path / "one", timeout=240)
    # GPU kernels (and nccl's reduction order) differ from the CPU's: a looser tolerance.
    assert_same_metrics(only_run_dir(tmp_path / "ddp"), only_run_dir(tmp_path / "one"), tol=2e-3)
