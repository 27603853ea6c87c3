"""Shared test helpers. End-to-end tests go through the installed `dlrun` entry point in a subprocess."""

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DLRUN = shutil.which("dlrun", path=str(Path(sys.executable).parent)) or "dlrun"


def run_dlrun(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300, check: bool = True):
    """Run `dlrun ARGS...` in `cwd` with output piped (so plain lines), and return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([DLRUN, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dlrun {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def workdir(tmp_path):
    """An empty working directory for one dlrun invocation; runs land in its outputs/."""
    return tmp_path


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
REFERENCE_ARGS = ("trainer.epochs=3", "model.hidden_sizes=[400]", "trainer.precision=32", "trainer.log_every_n_steps=5",
                  "logging.graph=false", "logging.confusion_matrix_every=0", "logging.misclassified=0")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("reference")
    run_dlrun("train", *REFERENCE_ARGS, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"
