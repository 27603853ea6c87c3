"""The task Hydra runs for `dlrun train`: one run, or one job of a sweep.

Here Hydra's runtime meets the engine: the job's directory, overrides and mode are read from
HydraConfig once and handed to the engine as a RunContext. In a sweep a finished job is skipped
(its objective is read back from metrics.json), and a failing job is recorded and returns NaN, so
that the others go on; the summary then reports it and the sweep exits non-zero."""

import contextlib
import logging
import math
import os
import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from dlrun.app.explain import describe
from dlrun.app.launch import run_on_devices
from dlrun.core.errors import DlrunError
from dlrun.core.io import read_json, write_json
from dlrun.core.lock import LOCK_NAME, DirLock
from dlrun.core.ranks import started_as_rank, world_size
from dlrun.engine import faults
from dlrun.engine.run import RunContext
from dlrun.observe.console import Console
from dlrun.results.summary import FINISHED

log = logging.getLogger(__name__)


def context() -> RunContext:
    """The RunContext of the job Hydra is running now."""
    hc = HydraConfig.get()
    return RunContext(Path(hc.runtime.output_dir), list(hc.overrides.task), hc.mode == RunMode.MULTIRUN)


def run_job(cfg, ctx: RunContext, verbose: bool = False) -> float:
    """The run's monitored best value; in a sweep, NaN for a job that failed."""
    if not ctx.is_sweep:
        return run_on_devices(cfg, ctx, verbose)
    console = Console()
    name = os.path.relpath(ctx.run_dir, HydraConfig.get().sweep.dir)
    monitor = cfg.trainer.monitor
    if sweep_stopping():
        console.print(f"{name}: not started: the sweep was stopped (the same command runs it)")
        return math.nan
    previous = read_json(ctx.run_dir / "metrics.json")
    status = previous.get("status")
    if status in FINISHED and previous.get("monitor", monitor) == monitor:
        console.print(f"{name}: skipped, already {status} in {ctx.run_dir}")
        return float(previous.get("best", {}).get(monitor, math.nan))
    # Stopped (SIGTERM) or killed (status still running): its last.pt continues it. The sweep's lock
    # on its directory means no other process is running it now.
    if status in ("interrupted", "running") and (ctx.run_dir / "last.pt").is_file():
        console.print(f"{name}: resuming (previous attempt: {status})")
        with open_dict(cfg):
            cfg.resume = str(ctx.run_dir)
    elif status is not None:
        console.print(f"{name}: rerunning (previous attempt: {status})")
        clear_attempt(ctx.run_dir)
    try:
        return run_on_devices(cfg, ctx, verbose)
    except faults.Interrupted as err:  # metrics.json says interrupted; the sweep stops, the job resumes next time
        console.print(f"{name}: {err.message}")
        return math.nan
    except Exception as err:  # noqa: BLE001 - any job error is reported in the summary, not raised
        reason = failure_reason(err)
        log.error("job failed: %s", reason, exc_info=err)
        record_failure(ctx.run_dir, reason)
        console.print(f"{name}: failed: {reason}")
        return math.nan


# Set by `dlrun train` to a file that exists once the sweep was told to stop (SIGTERM): a job that a
# launcher's worker takes up after that does not start.
STOP_ENV = "DLRUN_SWEEP_STOP"


def sweep_stopping() -> bool:
    path = os.environ.get(STOP_ENV)
    return bool(path) and Path(path).exists()


def failure_reason(err: BaseException) -> str:
    if isinstance(err, DlrunError):
        return str(err)
    message, code = describe(err, [])
    if code == 1:  # an unexpected error: its type and message here, its traceback in the job's log
        text = str(err).strip().splitlines()
        message = f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
    return message


def record_failure(job_dir: Path, reason: str) -> None:
    metrics = read_json(job_dir / "metrics.json")
    metrics.update(status="failed", error=reason)
    write_json(job_dir / "metrics.json", metrics)


def run_dir_lock(run_dir: Path, locked: set[Path]):
    """The lock of a run directory Hydra chose (a timestamped one); a no-op where this process, or the
    launcher of this rank, holds it already."""
    if run_dir.resolve() in locked or (started_as_rank() and world_size() > 1):
        return contextlib.nullcontext()
    return DirLock(run_dir, "run", "hydra.run.dir").acquire()


def remove_if_never_started(run_dir: Path) -> None:
    """A single run that failed before writing a file of its own (a bad config value, a missing dataset)
    leaves no directory behind: Hydra's `.hydra/` and an empty log would only pile up as `not started`."""
    here = Path.cwd().resolve()
    if run_dir.resolve() in (here, *here.parents):  # hydra.run.dir=. : never the folder the user works in
        return
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log", LOCK_NAME}:
        shutil.rmtree(run_dir, ignore_errors=True)


def clear_attempt(job_dir: Path) -> None:
    """Drop a previous attempt's curves and records, so TensorBoard does not overlay two attempts in one run."""
    for path in job_dir.glob("events.out.tfevents.*"):
        path.unlink()
    for name in ("metrics.json", "history.csv"):
        (job_dir / name).unlink(missing_ok=True)
