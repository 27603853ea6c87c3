"""Training on several devices with DistributedDataParallel: launching, the process group, rank-0 guards.

dlrun uses torch.distributed's own machinery and no process manager of its own. `dlrun train
trainer.devices=N` starts N copies of `python -m dlrun train` through torch.distributed's elastic
launcher (the engine behind torchrun), each told to write into the launching run's directory. A
copy started that way, by `torchrun`, or as a task of a SLURM job (submitit) finds its rank in the
environment (RANK, WORLD_SIZE, LOCAL_RANK), joins the process group (nccl on CUDA, gloo on CPU),
and trains its shard of every epoch. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from hydra.experimental.callback import Callback

from dlrun.errors import ConfigError, DeviceError, DlrunError

# torch is imported inside the functions that need it: the console and the tracker ask
# is_main() here, and commands that never train should not pay for importing torch.

log = logging.getLogger(__name__)

# A rank that stops only because another rank vanished exits with this code, so that the
# launcher blames the rank that failed first and not the ones it took down with it.
PEER_LOST_EXIT = 3
# Test-only fault injection: "RANK:STEP" makes that rank kill itself (SIGKILL) at that training step.
KILL_ENV = "DLRUN_KILL_RANK_AT_STEP"
# Hydra overrides a launched rank inherits from the launching command (the rest describe the launcher's own job).
INHERITED_HYDRA_KEYS = ("hydra.searchpath", "hydra.job_logging", "hydra/job_logging", "hydra.hydra_logging",
                        "hydra/hydra_logging", "hydra.verbose", "hydra.job.name", "hydra.job.env_set")
CONFIG_SOURCE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


class RankFailed(DlrunError):
    """A rank of a multi-process run failed; the launcher stopped the others."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class PeerLost(DlrunError):
    """This rank stopped because another rank died or stopped answering."""

    exit_code = PEER_LOST_EXIT


# Where this process stands. Read from the environment that torchrun, dlrun's launcher or
# `adopt_submitit_env` set, so that cheap modules (console, tracking) can ask without a process group.
def rank() -> int:
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def started_as_rank() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def adopt_submitit_env() -> None:
    """A task of a submitit job with several tasks (hydra/launcher=slurm, tasks_per_node > 1) is one rank."""
    if started_as_rank() or os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        # Every task sees all of the node's GPUs and takes the one of its local rank.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if rank() > 0:  # Hydra has opened train.log for every task: this rank logs beside it instead
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.FileHandler):
                    handler.close()  # reopened on the next record, under the new name
                    handler.baseFilename = re.sub(r"(\.log)?$", f".rank{rank()}.log", handler.baseFilename, count=1)


def run(cfg, run_in_process):
    """The whole run: in the launching process, start the ranks; in a rank (or a single process), train."""
    adopt_submitit_env()
    trainer = cfg.trainer
    devices = trainer.get("devices", 1)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError("trainer.devices", devices, "must be an integer >= 1 (processes to train on)")
    if not isinstance(trainer.get("scale_lr", False), bool):
        raise ConfigError("trainer.scale_lr", trainer.scale_lr, "must be true or false")
    timeout = trainer.get("dist_timeout_s", 300)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError("trainer.dist_timeout_s", timeout, "must be a number of seconds > 0")
    if devices > 1 and not started_as_rank():
        return launch(cfg)
    with rank_context():
        return run_in_process(cfg)


# ---------------------------------------------------------------- launching


def launch(cfg) -> float:
    """Start `trainer.devices` ranks of this run with torch.distributed's elastic launcher and wait for them."""
    from hydra.core.hydra_config import HydraConfig
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from dlrun.config_checks import check_config
    from dlrun.console import Console
    from dlrun.train import resolve_device

    check_config(cfg)  # a bad value is reported once, here, and not by every rank
    n = cfg.trainer.devices
    device = resolve_device(cfg.device)
    check_device(cfg, device, n)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    args = [
        "-m", "dlrun", "train",
        *_config_source_args(sys.argv[1:], hc.runtime.cwd),
        *[o for o in hc.overrides.hydra if _override_key(o).startswith(INHERITED_HYDRA_KEYS)],
        *[_rank_override(o, cfg) for o in hc.overrides.task],
        f"hydra.run.dir={_quote(str(run_dir))}",
        "hydra.output_subdir=null",  # this process has written .hydra/ already
    ]
    # Like torchrun: ranks sharing the CPU should not each start a thread per core.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    Console().print(f"dlrun: launching {n} processes ({backend} on {device.type}) with torch.distributed; "
                    f"run dir: {run_dir}")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # torchrun --standalone
        max_restarts=0, monitor_interval=0.1, shutdown_timeout=10,
    )
    from dlrun import cli

    if cli.VERBOSE:
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
    metrics = _read_json(run_dir / "metrics.json")
    return float(metrics.get("best", {}).get(cfg.trainer.monitor, math.nan))


def check_device(cfg, device: torch.device, n: int) -> None:
    import torch

    if n > 1 and device.type not in ("cuda", "cpu"):
        raise ConfigError("trainer.devices", n, f"several processes train on cuda (nccl) or cpu (gloo), not "
                          f"{device.type}; use device=cpu")
    if n > 1 and cfg.device.get("index") is not None:
        raise ConfigError("device.index", cfg.device.index, "must be null when trainer.devices > 1: each rank "
                          "takes the GPU of its local rank (choose GPUs with CUDA_VISIBLE_DEVICES)")
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise DeviceError(f"trainer.devices={n}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def describe_failure(failures: dict, run_dir: Path, job_name: str = "train") -> tuple[str, int]:
    """One line naming the rank(s) that failed on their own, and the exit code to pass on."""

    def collateral(f) -> bool:  # stopped by the launcher, or stopped because another rank was gone
        return f.exitcode in (-signal.SIGTERM, PEER_LOST_EXIT) or bool(f.error_file_data.get("peer_lost"))

    own = {r: f for r, f in failures.items() if not collateral(f)} or failures
    parts = []
    for r, f in sorted(own.items()):
        if f.exitcode < 0:
            parts.append(f"rank {r} was killed by {f.signal_name()} (pid {f.pid})")
        else:
            reason = f.message if f.error_file_data.get("dlrun") else ""
            parts.append(f"rank {r} exited with code {f.exitcode}" + (f": {reason}" if reason else ""))
    codes = {f.exitcode for f in own.values()}
    code = codes.pop() if len(codes) == 1 and min(codes) > 0 and PEER_LOST_EXIT not in codes else 1
    logs = ", ".join(f"{run_dir / rank_log_name(r, job_name)}" for r in sorted(own))
    return f"{'; '.join(parts)}; the other ranks were stopped (logs: {logs})", code


def rank_log_name(r: int, job_name: str) -> str:
    return f"{job_name}.log" if r == 0 else f"{job_name}.rank{r}.log"


def _mark_failed(run_dir: Path, message: str) -> None:
    """Rank 0 may have been stopped before it could record the failure in metrics.json."""
    from dlrun import report

    path = run_dir / "metrics.json"
    metrics = _read_json(path)
    if metrics:
        report.write_json(path, {**metrics, "status": "failed", "error": message})


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _rank_override(override: str, cfg) -> str:
    """The launcher's override as its ranks should get it."""
    if _override_key(override) == "resume" and cfg.get("resume"):
        # This process has already turned resume=latest into the run's directory (cli.py);
        # `++resume=` keeps the ranks' cli from resolving it a second time.
        return f"++resume={_quote(str(cfg.resume))}"
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


def _quote(value: str) -> str:
    """A Hydra override value that stays one string whatever characters a path holds."""
    if re.fullmatch(r"[\w/.\-:]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ShareRunDir(Callback):
    """Makes every rank of a torchrun job write into one run directory.

    Each rank composes its own config, so `${now:...}` in hydra.run.dir could differ by a second
    between ranks. Rank 0 publishes its clock in torchrun's store and every rank resolves `now` with
    it. Ranks other than 0 keep their own log (train.rank<N>.log) and leave .hydra/ to rank 0.
    """

    def on_run_start(self, config, **kwargs) -> None:
        if not started_as_rank() or world_size() == 1:
            return
        from omegaconf import OmegaConf, open_dict, read_write

        moment = datetime.fromtimestamp(_shared_time())
        OmegaConf.register_new_resolver("now", lambda pattern: moment.strftime(pattern), use_cache=True, replace=True)
        OmegaConf.clear_cache(config)
        if rank() != 0:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None
                handler = OmegaConf.select(config, "hydra.job_logging.handlers.file")
                if handler is not None and "filename" in handler:
                    name = OmegaConf.to_container(handler, resolve=False)["filename"]  # still ${...}, resolved later
                    handler.filename = re.sub(r"(\.log)?$", f".rank{rank()}.log", name, count=1)


def _shared_time() -> float:
    """Rank 0's clock, through the store of torchrun's agent; this process's own clock without one."""
    import torch.distributed as dist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return time.time()
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=120))
    key = f"dlrun/run_time/{os.environ.get('TORCHELASTIC_RUN_ID')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
    if is_main():
        store.set(key, repr(time.time()))
    return float(store.get(key).decode())


# ---------------------------------------------------------------- inside a rank


@contextlib.contextmanager
def rank_context():
    """Around a rank's run: a failure caused by a lost peer is named as such, and the group is always closed."""
    try:
        yield
    except Exception as err:
        if world_size() > 1 and _is_peer_loss(err):
            err = PeerLost(f"stopped: lost contact with another rank ({_short(str(err))}); "
                           "the launcher names the rank that failed")
            _record_error(str(err), peer_lost=True)
            raise err from None
        _record_error(str(err) if isinstance(err, DlrunError) else f"{type(err).__name__}: {_first_line(str(err))}")
        raise
    finally:
        teardown()


def setup(cfg, device: torch.device) -> torch.device:
    """Join the process group when this process is one of several ranks; return the device this rank trains on."""
    import torch
    import torch.distributed as dist

    if world_size() == 1:
        return device
    check_device(cfg, device, world_size())
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise DeviceError(f"local rank {local_rank()} has no GPU: this machine has {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=cfg.trainer.get("dist_timeout_s", 300))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    return device


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard() -> dict:
    """Keyword arguments that give a DeviceLoader this rank's shard."""
    return {"rank": rank(), "world_size": world_size()}


@contextlib.contextmanager
def local_main_first():
    """Local rank 0 runs the block first (e.g. unpacking a dataset), the other ranks after it."""
    import torch.distributed as dist

    if world_size() > 1 and local_rank() != 0:
        dist.barrier()
    yield
    if world_size() > 1 and local_rank() == 0:
        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device, seed: int):
    """The model that trains: DistributedDataParallel around `model` with several ranks, `model` itself otherwise.

    Keep using `model` for evaluation and checkpoints: its state_dict has no `module.` prefix and
    its forward runs no collective, so ranks can evaluate shards of different lengths."""
    import torch

    if world_size() == 1:
        return model
    # Every rank started from the same seed, so the weights agree; from here dropout should not.
    torch.manual_seed(seed + rank())
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    _install_fault(ddp)
    return ddp


def scale_lr(optimizer, enabled: bool) -> None:
    """The linear scaling rule: with a global batch of devices x batch_size, lr x devices."""
    if enabled and world_size() > 1:
        for group in optimizer.param_groups:
            group["lr"] *= world_size()


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if world_size() == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / world_size()


def broadcast_from_main(model: torch.nn.Module) -> None:
    """Give every rank rank 0's weights (e.g. those rank 0 read back from best.pt)."""
    import torch.distributed as dist

    if world_size() == 1:
        return
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def _install_fault(model: torch.nn.Module) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    victim, at_step = (int(v) for v in spec.split(":"))
    if victim != rank():
        return
    steps = 0

    def count(module, inputs):
        nonlocal steps
        if module.training:
            steps += 1
            if steps == at_step:
                log.warning("%s: rank %d kills itself at step %d", KILL_ENV, victim, at_step)
                os.kill(os.getpid(), signal.SIGKILL)

    model.register_forward_pre_hook(count)


def _is_peer_loss(err: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer", "Broken pipe"))


def _record_error(message: str, peer_lost: bool = False) -> None:
    """Tell the launcher why this rank failed, in the error file torchelastic reads back."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path and world_size() > 1:
        data = {"message": message, "timestamp": int(time.time()), "dlrun": True, "peer_lost": peer_lost}
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps(data))


def _short(text: str) -> str:
    """gloo's '[path/pair.cc:545] Read error ...: Connection reset by peer. This is typically...' -> the middle."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", _first_line(text))
    return text.split(". ")[0][:200]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def rank_label() -> str:
    """'rank 1: ' in a rank of a multi-process run, for error lines; '' otherwise."""
    return f"rank {rank()}: " if started_as_rank() and world_size() > 1 else ""
