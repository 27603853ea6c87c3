"""The built wheel carries the configs: `python -m dlrun` works from any directory without the source tree."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_from_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("dlrun-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "dlrun" / "configs" / "train.yaml").is_file()
    assert (target / "dlrun" / "configs" / "model" / "cnn.yaml").is_file()
    source = ROOT / "dlrun" / "configs"
    shipped = {p.relative_to(target / "dlrun" / "configs") for p in (target / "dlrun" / "configs").rglob("*.yaml")}
    assert shipped == {p.relative_to(source) for p in source.rglob("*.yaml")}, "every config file of every group ships"
    plugin = target / "hydra_plugins" / "dlrun_optuna_sweeper"
    assert {"config.py", "sweeper.py", "_search.py"} <= {p.name for p in plugin.glob("*.py")}, "the Optuna sweeper ships"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def python(*args: str) -> subprocess.CompletedProcess:
        """Python from a folder outside the source tree, seeing only the installed files."""
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)

    for module in ("dlrun", "hydra_plugins.dlrun_optuna_sweeper"):  # the sweeper is found by Hydra's plugin discovery
        where = python("-c", f"import {module} as m, sys; sys.stdout.write(m.__file__)")
        assert where.stdout.startswith(str(target)), where.stdout + where.stderr

    proc = python("-m", "dlrun", "train", "--cfg", "job", "model=cnn", "optimizer=adam")
    assert proc.returncode == 0, proc.stderr
    assert "_target_: dlrun.model.CNN" in proc.stdout
    assert "_target_: torch.optim.Adam" in proc.stdout

    proc = python("-m", "dlrun", "train", "hparams_search=optuna", "--cfg", "hydra")
    assert proc.returncode == 0, proc.stderr
    assert "_target_: hydra_plugins.dlrun_optuna_sweeper.sweeper.DlrunOptunaSweeper" in proc.stdout
