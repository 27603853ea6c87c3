"""Inside one rank of a multi-process run: the process group, this rank's shard, and rank-0 guards.

A rank (started by dlrun's launcher, by `torchrun`, or as a task of a SLURM job) finds its place in the
environment (RANK, WORLD_SIZE, LOCAL_RANK), joins the process group (nccl on CUDA, gloo on CPU) and
trains its shard of every epoch. Only rank 0 writes files and prints. With one process every helper
here does nothing.
"""

import contextlib
import json
import logging
import os
import re
import signal
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from dlrun.core.errors import ConfigError, DeviceError, DlrunError
from dlrun.core.ranks import local_rank, rank, world_size
from dlrun.core.text import first_line

log = logging.getLogger(__name__)

# A rank that stops only because another rank vanished exits with this code, so that the
# launcher blames the rank that failed first and not the ones it took down with it.
PEER_LOST_EXIT = 3
# Test-only fault injection: "RANK:STEP" makes that rank kill itself (SIGKILL) at that training step.
KILL_ENV = "DLRUN_KILL_RANK_AT_STEP"


class PeerLost(DlrunError):
    """This rank stopped because another rank died or stopped answering."""

    exit_code = PEER_LOST_EXIT


def check_device(cfg, device: torch.device, n: int) -> None:
    """Several processes need cuda or cpu, and no fixed GPU index; as many GPUs as processes."""
    if n > 1 and device.type not in ("cuda", "cpu"):
        raise ConfigError(
            "trainer.devices", n, f"several processes train on cuda (nccl) or cpu (gloo), not {device.type}; use device=cpu"
        )
    if n > 1 and cfg.device.get("index") is not None:
        raise ConfigError(
            "device.index",
            cfg.device.index,
            "must be null when trainer.devices > 1: each rank "
            "takes the GPU of its local rank (choose GPUs with CUDA_VISIBLE_DEVICES)",
        )
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise DeviceError(f"trainer.devices={n}: this machine has {torch.cuda.device_count()} CUDA device(s)")


@contextlib.contextmanager
def rank_context():
    """Around a rank's run: a failure caused by a lost peer is named as such, and the group is always closed."""
    try:
        yield
    except Exception as err:
        if world_size() > 1 and _is_peer_loss(err):
            err = PeerLost(
                f"stopped: lost contact with another rank ({_short(str(err))}); the launcher names the rank that failed"
            )
            _record_error(str(err), peer_lost=True)
            raise err from None
        _record_error(str(err) if isinstance(err, DlrunError) else f"{type(err).__name__}: {first_line(str(err))}")
        raise
    finally:
        teardown()


def setup(cfg, device: torch.device) -> torch.device:
    """Join the process group when this process is one of several ranks; return the device this rank trains on."""
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
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timeout, device_id=device if device.type == "cuda" else None
        )
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard() -> dict:
    """Keyword arguments that give a DeviceLoader this rank's shard."""
    return {"rank": rank(), "world_size": world_size()}


@contextlib.contextmanager
def local_main_first():
    """Local rank 0 runs the block first (e.g. unpacking a dataset), the other ranks after it."""
    if world_size() > 1 and local_rank() != 0:
        dist.barrier()
    yield
    if world_size() > 1 and local_rank() == 0:
        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device, seed: int):
    """The model that trains: DistributedDataParallel around `model` with several ranks, `model` itself otherwise.

    Keep using `model` for evaluation and checkpoints: its state_dict has no `module.` prefix and
    its forward runs no collective, so ranks can evaluate shards of different lengths."""
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
    if world_size() == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / world_size()


def broadcast_from_main(model: torch.nn.Module) -> None:
    """Give every rank rank 0's weights (e.g. those rank 0 read back from best.pt)."""
    if world_size() == 1:
        return
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


class _KillAtStep:
    """A forward pre-hook that counts training steps and kills this process (SIGKILL) at `at_step`."""

    def __init__(self, at_step: int):
        self.at_step, self.steps = at_step, 0

    def __call__(self, module, inputs) -> None:
        if module.training:
            self.steps += 1
            if self.steps == self.at_step:
                log.warning("%s: rank %d kills itself at step %d", KILL_ENV, rank(), self.at_step)
                os.kill(os.getpid(), signal.SIGKILL)


def _install_fault(model: torch.nn.Module) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    victim, at_step = (int(v) for v in spec.split(":"))
    if victim == rank():
        model.register_forward_pre_hook(_KillAtStep(at_step))


def _is_peer_loss(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer", "Broken pipe")
    )


def _record_error(message: str, peer_lost: bool = False) -> None:
    """Tell the launcher why this rank failed, in the error file torchelastic reads back."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path and world_size() > 1:
        data = {"message": message, "timestamp": int(time.time()), "dlrun": True, "peer_lost": peer_lost}
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps(data))


def _short(text: str) -> str:
    """gloo's '[path/pair.cc:545] Read error ...: Connection reset by peer. This is typically...' -> the middle."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(text))
    return text.split(". ")[0][:200]
