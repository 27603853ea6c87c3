"""Fixtures shared by the tests; the helpers themselves live in tests/helpers/."""

from pathlib import Path

import pytest
from helpers import REFERENCE_ARGS, run_dlrun


@pytest.fixture
def workdir(tmp_path):
    """An empty working directory for one dlrun invocation; runs land in its outputs/."""
    return tmp_path


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("reference")
    run_dlrun("train", *REFERENCE_ARGS, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"
