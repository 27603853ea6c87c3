"""A run's figures are drawn in a helper process (dlrun.observe.drawing): the same pictures as drawn in the run's
own process, written by the run, and drawn in the run's process again when the helper is gone."""

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlrun.observe import drawing, figures

CLASSES = [str(i) for i in range(10)]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def confusion(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 40, (10, 10))


def test_the_helper_draws_what_figures_draws_and_imports_no_torch():
    painter = drawing.Painter()
    assert painter.proc is not None, "the helper did not start"
    try:
        cm = confusion(0)
        picture = painter.submit("confusion_pixels", cm, CLASSES, "val epoch 3", normalized_too=False).result(timeout=60)
        assert np.array_equal(pixels(picture.png), figures.confusion_pixels(cm, CLASSES, "val epoch 3", normalized_too=False))
        assert (picture.height, picture.width) == pixels(picture.png).shape[:2]
        maps = open(f"/proc/{painter.pid}/maps").read()
        assert "ft2font" in maps  # matplotlib is loaded there...
        assert "libtorch" not in maps  # ...and torch is not: the helper starts while the run imports it
    finally:
        painter.proc.kill()


def test_a_recipe_that_fails_raises_where_its_picture_is_asked_for():
    painter = drawing.Painter()
    try:
        with pytest.raises(np.exceptions.AxisError, match="axis 1 is out of bounds"):  # no matrix
            painter.submit("confusion_pixels", None, CLASSES[:2], "x").result(timeout=60)
        with pytest.raises(ValueError, match="not a figure recipe"):
            painter.submit("savefig").result(timeout=60)
        # the helper still answers after a failure
        assert painter.submit("confusion_pixels", confusion(1), CLASSES, "test").result(timeout=60).width > 300
    finally:
        painter.proc.kill()


def test_when_the_helper_is_killed_what_it_owed_and_what_follows_is_drawn_here():
    painter = drawing.Painter()
    owed = [painter.submit("confusion_pixels", confusion(k), CLASSES, f"val epoch {k}") for k in range(1, 6)]
    os.kill(painter.pid, signal.SIGKILL)
    painter.proc.wait(timeout=30)
    later = painter.submit("confusion_pixels", confusion(9), CLASSES, "test")
    for k, future in enumerate(owed, start=1):
        want = figures.confusion_pixels(confusion(k), CLASSES, f"val epoch {k}")
        assert np.array_equal(pixels(future.result(timeout=60).png), want)
    assert np.array_equal(pixels(later.result(timeout=60).png), figures.confusion_pixels(confusion(9), CLASSES, "test"))


def test_the_helper_leaves_when_the_run_is_killed(tmp_path):
    """SIGKILL gives the run no time to say goodbye: its helper sees the pipe close and exits."""
    code = (
        "import sys, time\nfrom dlrun.observe import drawing\np = drawing.painter()\nprint(p.pid, flush=True)\ntime.sleep(60)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    helper = int(run.stdout.readline())
    assert os.path.exists(f"/proc/{helper}")
    run.kill()
    run.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and os.path.exists(f"/proc/{helper}") and "Z" not in _state(helper):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{helper}") or "Z" in _state(helper), "the helper outlived its run"


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.slow
def test_a_run_with_the_helper_writes_the_same_figures_as_one_without(tmp_path):
    """Every PNG and every TensorBoard image of a run, pixel for pixel, whether the helper or the run drew it."""
    args = ["trainer.epochs=3", "logging.graph=false"]
    runs = {}
    for name, env in (("helper", {}), ("here", {"DLRUN_DRAW_IN_PROCESS": "1"})):
        run_dir = tmp_path / name
        code = f"import dlrun; dlrun.train({[*args, f'hydra.run.dir={run_dir}']!r})"
        env = {**os.environ, **env}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs[name] = run_dir
    pngs = sorted(p.name for p in runs["helper"].glob("*.png"))
    assert pngs == sorted(p.name for p in runs["here"].glob("*.png"))
    assert {"confusion_matrix.png", "curves.png", "pr_curve.png", "roc_curve.png"} <= set(pngs)
    for name in pngs:
        assert np.array_equal(pixels((runs["helper"] / name).read_bytes()), pixels((runs["here"] / name).read_bytes())), name
    events = {}
    for name, run_dir in runs.items():
        acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
        acc.Reload()
        events[name] = {(tag, e.step): pixels(e.encoded_image_string) for tag in acc.Tags()["images"] for e in acc.Images(tag)}
    assert set(events["helper"]) == set(events["here"])
    tags = {tag for tag, _ in events["helper"]}
    assert {"val/confusion_matrix", "test/confusion_matrix", "test/misclassified"} <= tags
    assert {step for tag, step in events["helper"] if tag == "val/confusion_matrix"} == {1, 2, 3}
    for key, picture in events["helper"].items():
        assert np.array_equal(picture, events["here"][key]), key


@pytest.mark.parametrize("recipe", ["pr_curve_figure", "roc_curve_figure"])
def test_a_long_curve_drawn_thinned_looks_the_same(monkeypatch, recipe):
    """MNIST's 10,000 test samples make curves of thousands of points: drawn thinned, not a pixel in 200 differs."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    rng = np.random.default_rng(0)
    curves = {}
    for c in range(10):
        truth = rng.random(10_000) < 0.1
        score = truth * (1 + 0.2 * c) + rng.normal(0, 0.6, 10_000)
        if recipe == "pr_curve_figure":
            precision, recall, _ = precision_recall_curve(truth, score)
            curves[str(c)] = (recall, precision, 0.9)
        else:
            fpr, tpr, _ = roc_curve(truth, score, drop_intermediate=False)
            curves[str(c)] = (fpr, tpr, 0.9)
    assert min(len(x) for x, _, _ in curves.values()) > 5_000
    assert max(len(figures._thinned(x, y)[0]) for x, y, _ in curves.values()) < 3_000
    thinned = figures.render(getattr(figures, recipe)(curves, "test"))
    monkeypatch.setattr(figures, "_thinned", lambda x, y: (np.asarray(x), np.asarray(y)))
    whole = figures.render(getattr(figures, recipe)(curves, "test"))
    assert thinned.shape == whole.shape
    differing = np.abs(thinned.astype(int) - whole.astype(int)).max(-1) > 32
    assert differing.mean() < 0.005, f"{differing.mean():.2%} of the pixels differ"


def test_a_sweep_draws_with_two_helpers_from_its_second_job_the_same_pictures(tmp_path):
    """From a sweep's second job on, two helpers draw each job's end-of-run figures side by side: every job, and the
    sweep's own curves.png, gets the pictures drawing them in the sweep's process gives."""
    sweeps = {}
    for name, env in (("helpers", {}), ("here", {"DLRUN_DRAW_IN_PROCESS": "1"})):
        sweep_dir = tmp_path / name
        code = (
            "import dlrun\nfrom dlrun.observe import drawing\n"
            "dlrun.sweep(['optimizer.lr=0.05,0.1,0.2', 'trainer.epochs=2', 'logging.graph=false', "
            f"'hydra.sweep.dir={sweep_dir}'])\n"
            "print('helpers', len(drawing.painter().alive()))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        assert f"helpers {2 if name == 'helpers' else 0}" in proc.stdout
        sweeps[name] = sweep_dir
    pngs = sorted(str(p.relative_to(sweeps["helpers"])) for p in sweeps["helpers"].rglob("*.png"))
    assert pngs == sorted(str(p.relative_to(sweeps["here"])) for p in sweeps["here"].rglob("*.png"))
    assert "curves.png" in pngs and len(pngs) == 1 + 3 * 4  # the sweep's, and each job's curves, PR, ROC and matrix
    for name in pngs:
        assert np.array_equal(pixels((sweeps["helpers"] / name).read_bytes()), pixels((sweeps["here"] / name).read_bytes())), name
