"""Choices that keep a run fast, which a refactor could undo without any test failing otherwise."""

import json
import subprocess
import sys


def test_a_run_never_imports_torchmetrics_or_scipy_signal(tmp_path):
    """Their package imports add seconds to every run; dlrun computes its scores itself."""
    code = (
        "import json, sys, dlrun\n"
        f"dlrun.train(['device=cpu', 'trainer.epochs=1', 'hydra.run.dir={tmp_path / 'run'}'])\n"
        "print(json.dumps([m for m in ('torchmetrics', 'scipy.signal') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
