"""Shared test helpers. End-to-end tests go through the installed `dlrun` entry point in a subprocess."""

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
