"""Choices that keep a run fast, which a refactor could undo without any test failing otherwise."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlrun

# Each costs about a second of import on every run that does not need it: torchmetrics (dlrun computes its
# scores itself), scipy.signal (through torchmetrics), torchvision (only its datasets and models need it) and
# scikit-learn (the bundled digits are read from its CSV file; only moons and circles are made by it).
NOT_FOR_DIGITS = ["torchmetrics", "scipy.signal", "torchvision", "sklearn"]
# torch.distributed's elastic launcher starts the ranks of trainer.devices=N; one process does without it.
NOT_FOR_DIGITS += ["torch.distributed.elastic.multiprocessing", "torch.distributed.launcher.api"]
# torch._dynamo and sympy (1.5 s): torch.optim's wrappers import them on the first step (dlrun.engine.eager),
# and so do the meta device's kernels (the dry build runs a small model on the CPU) and add_graph's self-check.
NOT_FOR_DIGITS += ["torch._dynamo", "sympy"]
# matplotlib (0.35 s): the figures are drawn in a helper process, which imports it while the run imports torch.
NOT_FOR_DIGITS += ["matplotlib"]


def test_a_default_run_does_not_import_what_it_does_not_use_and_composes_its_config_once(tmp_path):
    code = (
        "import json, sys, dlrun\n"
        "from hydra._internal.config_loader_impl import ConfigLoaderImpl\n"
        "composed, load = [], ConfigLoaderImpl.load_configuration\n"
        "ConfigLoaderImpl.load_configuration = lambda *a, **k: composed.append(1) or load(*a, **k)\n"
        f"dlrun.train(['device=cpu', 'trainer.epochs=1', 'hydra.run.dir={tmp_path / 'run'}'])\n"
        f"print(json.dumps([[m for m in {NOT_FOR_DIGITS!r} if m in sys.modules], len(composed)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    imported, compositions = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == []
    assert compositions == 1  # not a second one only to read hydra.mode


def test_the_groups_whose_options_set_the_run_mode_are_read_right():
    """dlrun reads hydra.mode from the command line unless it chooses an option of these groups: each shipped
    option that sets hydra.mode, as YAML reads it, must be in one of them."""
    from importlib.resources import files

    import yaml

    from dlrun.config.groups import groups_setting_run_mode

    root = Path(str(files("dlrun.configs")))
    setting = {
        str(p.parent.relative_to(root))
        for p in root.rglob("*.yaml")
        if "mode" in ((yaml.safe_load(p.read_text()) or {}).get("hydra") or {})
    }
    assert setting == groups_setting_run_mode() == {"experiment", "hparams_search"}


def test_the_run_mode_read_from_the_command_line_is_hydras(monkeypatch):
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from dlrun.app.train_cmd import run_mode

    monkeypatch.setattr(sys, "argv", ["dlrun", "train"])
    assert run_mode([]) is None and run_mode(["model=cnn", "optimizer.lr=0.1"]) is None
    assert run_mode(["hydra.mode=MULTIRUN"]) == RunMode.MULTIRUN and run_mode(["hydra.mode=RUN"]) == RunMode.RUN
    assert run_mode(["experiment=momentum"]) is ... and run_mode(["+hparams_search=optuna"]) is ...
    monkeypatch.setattr(sys, "argv", ["dlrun", "train", "--config-dir", "mine"])
    assert run_mode(["model=cnn"]) is ...
    with initialize_config_module("dlrun.configs", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra.get_mode("train", ["model=cnn"]) is None
        assert hydra.get_mode("train", ["experiment=momentum"]) == RunMode.MULTIRUN


def test_the_digits_read_from_the_csv_are_scikit_learns():
    from sklearn.datasets import load_digits

    from dlrun.data.sources import digits_arrays

    images, targets = digits_arrays()
    digits = load_digits()
    assert np.array_equal(images, digits.images) and np.array_equal(targets, digits.target)


@pytest.mark.parametrize("normalized_too", [False, True])
def test_the_confusion_pictures_show_what_matplotlib_draws(normalized_too):
    """Every epoch's val card, and confusion_matrix.png, are pasted together with numpy (matplotlib takes ~0.15 s
    a panel): the same size, the same cell colours, the numbers and titles where matplotlib puts them, within
    antialiasing."""
    from dlrun.observe import figures

    rng = np.random.default_rng(0)
    for n in (2, 10, 20):
        cm = rng.integers(0, 40, (n, n)) + np.diag(rng.integers(50, 300, n))
        classes = [f"class {k}" for k in range(n)]
        drawn = figures.render(figures.confusion_figure(cm, classes, "val epoch 3", normalized_too))
        card = figures.confusion_pixels(cm, classes, "val epoch 3", normalized_too)
        assert card.shape == drawn.shape and card.dtype == np.uint8
        difference = np.abs(card.astype(int) - drawn.astype(int)).max(-1)
        assert (difference > 60).mean() < 0.03, f"{n} classes: {(difference > 60).mean():.1%} of the pixels differ"
        assert difference.mean() < 8
        # The same layout with other numbers (the frame is reused): other pixels.
        other = figures.confusion_pixels(cm.T, classes, "val epoch 3", normalized_too)
        assert np.abs(other.astype(int) - card.astype(int)).max(-1).mean() > 1


def test_the_misclassified_grid_shows_what_matplotlib_draws():
    from dlrun.observe import figures

    rng = np.random.default_rng(0)
    for channels, n in ((1, 32), (3, 5)):
        images = rng.random((n, channels, 8, 8))
        titles = [f"true {rng.integers(10)}\npred {rng.integers(10)}" for _ in range(n)]
        drawn = figures.render(figures.image_grid_figure(images, titles))
        grid = figures.image_grid_pixels(images, titles)
        assert grid.shape == drawn.shape and grid.dtype == np.uint8
        difference = np.abs(grid.astype(int) - drawn.astype(int)).max(-1)
        assert (difference > 60).mean() < 0.02 and difference.mean() < 3
        untitled = figures.image_grid_pixels(images, [""] * n)
        assert np.abs(untitled.astype(int) - drawn.astype(int)).max(-1).mean() > difference.mean() + 0.5


def test_kept_figures_draw_what_a_fresh_figure_draws():
    """curves.png is drawn on the figure of the last run with the same layout (its ticks and labels stay), and PR
    and ROC curves on the pixels of their frame, rendered once: pixel for pixel the picture a new figure gives, for
    longer and shorter histories, other scores and other numbers of classes, one after another."""
    from dlrun.observe import figures

    rng = np.random.default_rng(0)
    metrics = ("loss", "accuracy", "f1")
    for epochs in (3, 1, 30, 2):
        history = [
            {"epoch": e, **{f"{s}/{m}": float(rng.random() * 3) for s in ("train", "val") for m in metrics}}
            for e in range(1, epochs + 1)
        ]
        fresh = figures.render(figures.curves_figure(history, metrics))
        assert np.array_equal(figures.curves_pixels(history, metrics), fresh), epochs
    for classes in (10, 10, 3, 12, 10):  # 12: beyond LEGEND_MAX, most of them faint and unnamed
        curves = {}
        for c in range(classes):
            x = np.sort(rng.random(50))
            curves[f"class {c}"] = (x, np.sort(rng.random(50))[::-1], float(rng.random()))
        for pixels, figure in (
            (figures.pr_curve_pixels, figures.pr_curve_figure),
            (figures.roc_curve_pixels, figures.roc_curve_figure),
        ):
            assert np.array_equal(pixels(curves, "test"), figures.render(figure(curves, "test"))), (pixels.__name__, classes)


OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"]


def test_optimizers_step_the_same_before_and_after_torch_dynamo_is_imported(tmp_path):
    """dlrun.engine.eager calls torch.optim's plain methods while torch._dynamo is not loaded, and torch's own
    wrappers once it is: every shipped optimizer, its state_dict round trip and an lr schedule give the same
    weights either way, to the bit."""
    code = f"""
import json, sys, torch
from omegaconf import OmegaConf
from dlrun.engine.optim import build_optimizer

def train(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    cfg = OmegaConf.load(f"{{sys.argv[1]}}/{{name}}.yaml")
    cfg.lr = 0.05
    opt = build_optimizer(cfg, list(model.parameters()))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for step in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
        if step == 2:
            opt.load_state_dict(opt.state_dict())
    return [p.detach().double().flatten().tolist() for p in model.parameters()]

names = {OPTIMIZERS!r}
before = [train(n) for n in names]
plain = "torch._dynamo" not in sys.modules
import torch._dynamo
after = [train(n) for n in names]
print(json.dumps({{"plain": plain, "same": [b == a for b, a in zip(before, after)]}}))
"""
    configs = Path(dlrun.__file__).parent / "configs" / "optimizer"
    out = subprocess.run([sys.executable, "-c", code, str(configs)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["plain"], "the first steps imported torch._dynamo"
    assert result["same"] == [True] * len(OPTIMIZERS)


def test_a_cnn_on_cached_mnist_imports_neither_torchvision_nor_torch_dynamo(tmp_path):
    """torchvision decodes the IDX files once; after that the decoded cache is all a run reads, and torchvision's
    import (which pulls in torch._dynamo, about 1.5 s) is left out, as is the meta device's for the dry build."""
    from test_mnist import mnist_config, write_mnist

    from dlrun.data import load_data

    write_mnist(tmp_path / "data", gz=True)
    load_data(mnist_config(tmp_path / "data"), seed=0, val_fraction=0.1)  # decodes and writes the cache
    run_dir = tmp_path / "run"
    overrides = [
        "model=cnn",
        "dataset=mnist",
        f"dataset.root={tmp_path / 'data'}",
        "trainer.epochs=1",
        f"hydra.run.dir={run_dir}",
    ]
    code = (
        "import json, sys, dlrun\n"
        f"dlrun.train({overrides!r})\n"
        "print(json.dumps([m for m in ('torchvision', 'torch._dynamo', 'sympy') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_card_of_the_val_class_counts_has_the_frame_of_the_real_val_cards():
    """The tracker asks for a card of each val class's count on the diagonal while epoch 1 trains, so that epoch 1's
    card finds its frame drawn. A frame's cells are as wide as its widest count: a blank matrix's frame is another."""
    from dlrun.observe import figures

    rng = np.random.default_rng(1)
    classes = [str(k) for k in range(10)]
    val_counts = rng.integers(540, 680, 10)  # MNIST's 6000 val images: 3 digits a class
    cm = np.diag(val_counts - 40) + rng.integers(0, 9, (10, 10))
    figures._card_frame.cache_clear()
    figures.confusion_pixels(np.zeros((10, 10), dtype=int), classes, "val epoch 1", normalized_too=False)
    figures.confusion_pixels(cm, classes, "val epoch 1", normalized_too=False)
    assert figures._card_frame.cache_info().misses == 2, "a blank matrix's frame fits 3-digit counts"
    figures._card_frame.cache_clear()
    figures.confusion_pixels(np.diag(val_counts), classes, "val epoch 1", normalized_too=False)
    card = figures.confusion_pixels(cm, classes, "val epoch 1", normalized_too=False)
    assert figures._card_frame.cache_info().misses == 1, "epoch 1's card drew a frame of its own"
    drawn = figures.render(figures.confusion_figure(cm, classes, "val epoch 1", normalized_too=False))
    assert card.shape == drawn.shape
    assert np.abs(card.astype(int) - drawn.astype(int)).max(-1).mean() < 8


def test_the_test_pass_takes_one_cpu_thread_while_the_helpers_draw():
    """On a CPU the test pass runs beside the figures' helpers on one torch thread, then the run's threads return."""
    import torch

    from dlrun.engine.run import beside_the_helpers

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with beside_the_helpers(torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), beside_the_helpers(torch.device("cpu")):
            raise RuntimeError("a failing test pass")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_dlrun_command_freezes_its_start_up_objects_and_collects_after_them(tmp_path):
    """Python's collector scanned the start-up's objects (Hydra's, torch's) again and again, about 0.15 s of a run:
    the `dlrun` command collects nothing while it starts, then freezes what it made and collects the rest."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('collector', gc.isenabled(), gc.get_freeze_count(), flush=True))\n"
        f"sys.argv = ['dlrun', 'train', 'trainer.epochs=1', 'hydra.run.dir={tmp_path / 'run'}']\n"
        "from dlrun.app.cli import entry\nentry()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    _, enabled, frozen = out.stdout.strip().splitlines()[-1].split()
    assert enabled == "True" and int(frozen) > 100_000, "torch's objects are not frozen"
    assert (tmp_path / "run" / "metrics.json").is_file()
