"""Choices that keep a run fast, which a refactor could undo without any test failing otherwise."""

import json
import subprocess
import sys

import numpy as np

# Each costs about a second of import on every run that does not need it: torchmetrics (dlrun computes its
# scores itself), scipy.signal (through torchmetrics), torchvision (only its datasets and models need it) and
# scikit-learn (the bundled digits are read from its CSV file; only moons and circles are made by it).
NOT_FOR_DIGITS = ["torchmetrics", "scipy.signal", "torchvision", "sklearn"]


def test_a_default_run_does_not_import_what_it_does_not_use(tmp_path):
    code = (
        "import json, sys, dlrun\n"
        f"dlrun.train(['device=cpu', 'trainer.epochs=1', 'hydra.run.dir={tmp_path / 'run'}'])\n"
        f"print(json.dumps([m for m in {NOT_FOR_DIGITS!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_digits_read_from_the_csv_are_scikit_learns():
    from sklearn.datasets import load_digits

    from dlrun.data.sources import digits_arrays

    images, targets = digits_arrays()
    digits = load_digits()
    assert np.array_equal(images, digits.images) and np.array_equal(targets, digits.target)
