"""Training on several devices: `dlrun train trainer.devices=N` starts N copies of `python -m dlrun train`
through torch.distributed's elastic launcher (the engine behind torchrun), each told to write into the
launching run's directory, and waits for them. dlrun has no process manager of its own.

A failed rank is named in one line (the one that failed first, not those stopped after it), with the
exit code to pass on."""

import logging
import math
import os
import re
import signal
import sys
import uuid
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from dlrun.config.check import check_rules, resolve
from dlrun.config.schema import DDP
from dlrun.core.errors import DlrunError
from dlrun.core.io import read_json, write_json
from dlrun.core.ranks import rank, started_as_rank
from dlrun.core.text import override_key, quote_override
from dlrun.engine import ddp
from dlrun.engine.build import check
from dlrun.engine.precision import resolve_device
from dlrun.engine.run import RunContext, run
from dlrun.observe.console import Console

log = logging.getLogger(__name__)

# Hydra overrides a launched rank inherits from the launching command (the rest describe the launcher's own job).
INHERITED_HYDRA_KEYS = (
    "hydra.searchpath",
    "hydra.job_logging",
    "hydra/job_logging",
    "hydra.hydra_logging",
    "hydra/hydra_logging",
    "hydra.verbose",
    "hydra.job.name",
    "hydra.job.env_set",
)
CONFIG_SOURCE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


class RankFailed(DlrunError):
    """A rank of a multi-process run failed; the launcher stopped the others."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def adopt_submitit_env() -> None:
    """A task of a submitit job with several tasks (hydra/launcher=slurm, tasks_per_node > 1) is one rank."""
    if started_as_rank() or os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return
    from submitit import JobEnvironment  # an extra (dlrun[cluster]): only where submitit started this process
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        # Every task sees all of the node's GPUs and takes the one of its local rank.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if rank() > 0:  # Hydra has opened train.log for every task: this rank logs beside it instead
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.FileHandler):
                    handler.close()  # reopened on the next record, under the new name
                    handler.baseFilename = re.sub(r"(\.log)?$", f".rank{rank()}.log", handler.baseFilename, count=1)


def run_on_devices(cfg, ctx: RunContext, verbose: bool = False, run_one=run) -> float:
    """The whole run: in the launching process, start the ranks; in a rank (or a single process), train."""
    adopt_submitit_env()
    check_rules({"trainer": resolve(cfg.trainer)}, DDP)  # before any rank starts (its keys are all trainer's)
    if cfg.trainer.get("devices", 1) > 1 and not started_as_rank():
        return launch(cfg, ctx, verbose)
    with ddp.rank_context():
        return run_one(cfg, ctx)


def launch(cfg, ctx: RunContext, verbose: bool) -> float:
    """Start `trainer.devices` ranks of this run with torch.distributed's elastic launcher and wait for them."""
    # torch.distributed's launcher only where ranks start: a single-process run does without its imports.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check(cfg)  # a bad value is reported once, here, and not by every rank
    n = cfg.trainer.devices
    device = resolve_device(cfg.device)
    ddp.check_device(cfg, device, n)
    hc = HydraConfig.get()
    run_dir = ctx.run_dir
    args = [
        "-m",
        "dlrun",
        "train",
        *_config_source_args(sys.argv[1:], hc.runtime.cwd),
        *[o for o in hc.overrides.hydra if override_key(o).startswith(INHERITED_HYDRA_KEYS)],
        *[_rank_override(o, cfg) for o in hc.overrides.task],
        f"hydra.run.dir={quote_override(str(run_dir))}",
        "hydra.output_subdir=null",  # this process has written .hydra/ already
        "hydra.mode=RUN",  # a job of a sweep (hparams_search=optuna sets MULTIRUN) is one run in each rank
    ]
    # Like torchrun: ranks sharing the CPU should not each start a thread per core.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    Console().print(f"dlrun: launching {n} processes ({backend} on {device.type}) with torch.distributed; run dir: {run_dir}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone
        max_restarts=0,
        monitor_interval=0.1,
        shutdown_timeout=10,
    )
    if verbose:
        args.append("--verbose")
    else:  # the elastic agent's own log lines repeat what the one-line error below says
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    cwd, full_error = os.getcwd(), os.environ.pop("HYDRA_FULL_ERROR", None)  # cli set it for this process only
    os.chdir(hc.runtime.cwd)  # relative paths in the overrides mean what they meant to the user
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as err:
        message, code = describe_failure(err.failures, run_dir, hc.job.name)
        _mark_failed(run_dir, message)
        raise RankFailed(message, code) from None
    finally:
        os.chdir(cwd)
        if full_error is not None:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    metrics = read_json(run_dir / "metrics.json")
    return float(metrics.get("best", {}).get(cfg.trainer.monitor, math.nan))


def describe_failure(failures: dict, run_dir: Path, job_name: str = "train") -> tuple[str, int]:
    """One line naming the rank(s) that failed on their own, and the exit code to pass on."""

    def collateral(f) -> bool:  # stopped by the launcher, or stopped because another rank was gone
        return f.exitcode in (-signal.SIGTERM, ddp.PEER_LOST_EXIT) or bool(f.error_file_data.get("peer_lost"))

    own = {r: f for r, f in failures.items() if not collateral(f)} or failures
    parts = []
    for r, f in sorted(own.items()):
        if f.exitcode < 0:
            parts.append(f"rank {r} was killed by {f.signal_name()} (pid {f.pid})")
        else:
            reason = f.message if f.error_file_data.get("dlrun") else ""
            parts.append(f"rank {r} exited with code {f.exitcode}" + (f": {reason}" if reason else ""))
    codes = {f.exitcode for f in own.values()}
    code = codes.pop() if len(codes) == 1 and min(codes) > 0 and ddp.PEER_LOST_EXIT not in codes else 1
    logs = ", ".join(f"{run_dir / rank_log_name(r, job_name)}" for r in sorted(own))
    return f"{'; '.join(parts)}; the other ranks were stopped (logs: {logs})", code


def rank_log_name(r: int, job_name: str) -> str:
    return f"{job_name}.log" if r == 0 else f"{job_name}.rank{r}.log"


def _mark_failed(run_dir: Path, message: str) -> None:
    """Rank 0 may have been stopped before it could record the failure in metrics.json."""
    path = run_dir / "metrics.json"
    metrics = read_json(path)
    if metrics:
        write_json(path, {**metrics, "status": "failed", "error": message})


def _rank_override(override: str, cfg) -> str:
    """The launcher's override as its ranks should get it."""
    if override_key(override) == "resume" and cfg.get("resume"):
        # This process has already turned resume=latest into the run's directory (cli.py);
        # `++resume=` keeps the ranks' cli from resolving it a second time.
        return f"++resume={quote_override(str(cfg.resume))}"
    return override


def _config_source_args(argv: list[str], cwd: str) -> list[str]:
    """--config-dir and friends from the launching command line, with a relative --config-dir made absolute."""
    out = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in CONFIG_SOURCE_FLAGS:
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            if flag in ("--config-dir", "-cd"):
                value = str(Path(cwd, value))
            out += [flag, value]
    return out
