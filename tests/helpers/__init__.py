"""Helpers shared by the tests: dlrun through its installed entry point, configs composed in-process,
and the skips for machines without a GPU or an optional extra."""

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DLRUN = shutil.which("dlrun", path=str(Path(sys.executable).parent)) or "dlrun"


def run_dlrun(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300, check: bool = True):
    """Run `dlrun ARGS...` in `cwd` with output piped (so plain lines), and return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([DLRUN, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dlrun {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@functools.lru_cache
def _composed(*choices: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module("dlrun.configs", version_base="1.3"):
        return compose("train", overrides=list(choices))


def compose_config(*overrides: str):
    """The composed train config, in-process. Composition is slow (~0.2 s), so it runs once per set of
    group choices (`model=cnn`); dotted keys (`model.dropout=0.5`, YAML values) are set on a copy."""
    import yaml
    from omegaconf import OmegaConf

    dotted = [o.split("=", 1) for o in overrides if "." in o.split("=", 1)[0]]
    cfg = copy.deepcopy(_composed(*[o for o in overrides if "." not in o.split("=", 1)[0]]))
    for key, value in dotted:
        OmegaConf.update(cfg, key, yaml.safe_load(value))
    return cfg


# A short completed run, shared by the fault tests (the uninterrupted run that a resumed one must
# equal) and the safe-loading tests (the run `dlrun eval` evaluates again). Tests must not change it.
REFERENCE_ARGS = (
    "trainer.epochs=3",
    "model.hidden_sizes=[400]",
    "trainer.precision=32",
    "trainer.log_every_n_steps=5",
    "logging.graph=false",
    "logging.confusion_matrix_every=0",
    "logging.misclassified=0",
)

# Skips that say why: a check that needs hardware or an extra this machine lacks is skipped, never faked.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl across processes needs at least 2 CUDA GPUs")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def needs_module(name: str, extra: str):
    """Skip unless `name` imports: it comes with `pip install 'dlrun[EXTRA]'`."""
    try:
        __import__(name)
        missing = False
    except ImportError:
        missing = True
    return pytest.mark.skipif(missing, reason=f"needs {name} (pip install 'dlrun[{extra}]')")
