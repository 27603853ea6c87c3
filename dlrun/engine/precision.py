"""Where and in what precision a run computes: the device, autocast and loss scaling, and the seeds."""

import contextlib
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlrun.config.schema import PRECISIONS
from dlrun.config.schema import precision as precision_rule
from dlrun.core.errors import ConfigError, DeviceError


class Precision:
    """trainer.precision: 32, bf16, 16 (fp16, CUDA only), or auto: bf16 where the hardware runs it natively
    (on a CPU only for models with convolutions: small fully connected nets run faster in fp32 there).

    bf16 and fp16 autocast the forward pass; fp16 also scales the loss, so that small gradients survive."""

    def __init__(self, value, device: torch.device, model: nn.Module | None = None):
        choice = str(value)
        if choice not in PRECISIONS:
            raise ConfigError("trainer.precision", value, precision_rule(value))
        if choice == "auto":
            convolves = model is None or any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules())
            choice = "bf16" if native_bf16(device) and (device.type != "cpu" or convolves) else "32"
        if choice == "16" and device.type != "cuda":
            raise ConfigError("trainer.precision", value, f"fp16 needs device=cuda; on {device.type} use bf16 or 32")
        if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("trainer.precision", value, "this GPU has no bf16; use 16 or 32")
        self.name = {"32": "fp32", "bf16": "bf16", "16": "fp16"}[choice]
        self.dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(choice)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=choice == "16")

    def autocast(self):
        return contextlib.nullcontext() if self.dtype is None else torch.autocast(self.device_type, dtype=self.dtype)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # AMX only: with AVX512-BF16 alone (an AMD EPYC), bf16 autocast ran a conv net's training step 4x slower
        # than fp32; without either, bf16 is emulated and slower still
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " amx_bf16" in flags
    return False


def resolve_device(cfg) -> torch.device:
    kind, index = cfg.type, cfg.index
    available = ["cpu"]
    if torch.cuda.is_available():
        available += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        available.append("mps")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    elif kind not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device.type={kind}: must be auto, cpu, cuda or mps")
    name = kind if index is None or kind != "cuda" else f"cuda:{index}"
    if kind != "cpu" and not any(d == name or d.startswith(f"{name}:") for d in available):
        raise DeviceError(
            f"device={name}: not available on this machine; available devices: {', '.join(available)} "
            "(use device=auto or device=cpu)"
        )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
