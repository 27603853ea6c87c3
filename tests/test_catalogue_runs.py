"""Every catalogue option composes and trains one short epoch on a toy set; full runs show the
TensorBoard extras, early stopping in metrics.json, and what the run prints and logs."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config, run_dlrun
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dlrun
from dlrun.config.groups import config_groups
from dlrun.data import DeviceLoader, Split, load_data
from dlrun.engine.optim import EarlyStopping, Regime, Schedule, build_loss, build_optimizer
from dlrun.engine.steps import train_one_epoch
from dlrun.model.initializers import initialize
from dlrun.observe.metrics import classification_metrics

GROUPS = config_groups()
OPTIONS = [f"{group}={option}" for group in ("model", "optimizer", "initializer", "scheduler") for option in GROUPS[group]]
VARIANTS = [
    *[f"model.activation={a}" for a in ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu")],
    "model.batch_norm=true model.dropout=0.5",
    "model=cnn model.channels=[8,16] model.kernel_size=[5,3] model.pooling=[avg,none] model.activation=[tanh,gelu] "
    "model.batch_norm=[false,true]",
    "model=resnet18 model.freeze_backbone=true",
    "optimizer=sgd optimizer.momentum=0.9 optimizer.nesterov=true optimizer.weight_decay=0.001",
    "optimizer=rmsprop optimizer.momentum=0.5 optimizer.centered=true",
    "trainer.grad_clip.max_norm=0.5",
    "trainer.grad_clip.max_value=0.01",
    "trainer.l1=0.001",
    "loss.label_smoothing=0.1",
    "loss.class_weights=balanced",
    "loss.class_weights=[1,1,1,1,1,2,2,2,2,2]",
    "initializer=kaiming_uniform model.activation=leaky_relu initializer.zero_bias=false",
]


@pytest.fixture(scope="module")
def toy_split():
    """64 digits images (1x8x8, 10 classes): one short epoch of 2 steps at batch 32."""
    data = load_data(compose_config().dataset, 0, 0.1)
    return Split(data.train.x[:64], data.train.y[:64]), data.mean, data.std


@pytest.mark.parametrize("overrides", OPTIONS + VARIANTS)
def test_option_trains_one_short_epoch(overrides, toy_split):
    """Built as a run builds it, from the composed config: the loss is finite and the weights move."""
    split, mean, std = toy_split
    cfg = compose_config(*overrides.split())
    torch.manual_seed(0)
    model = instantiate(cfg.model, in_shape=tuple(split.x.shape[1:]), num_classes=10)
    initialize(model, instantiate(cfg.initializer.fn) if cfg.initializer.fn else None, cfg.initializer.zero_bias)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = build_optimizer(cfg.optimizer, trainable)
    loader = DeviceLoader(split, 32, "cpu", mean, std, shuffle=True, seed=0)
    schedule = Schedule(cfg.scheduler, optimizer, 1, len(loader))
    regime = Regime(cfg.trainer, model, schedule, log_grad_norm=True)
    steps = []
    stats = train_one_epoch(
        model,
        loader,
        build_loss(cfg.loss, split.y, 10),
        optimizer,
        regime,
        classification_metrics(10),
        lambda loss, lr, norm: steps.append((loss, lr, norm)),
    )
    EarlyStopping(cfg.trainer.early_stopping).update({"epoch": 1, "val/f1": 0.5, "train/loss": 1.0})
    assert len(steps) == len(loader) == 2
    assert math.isfinite(stats["loss"].item()) and all(math.isfinite(norm.item()) for _, _, norm in steps)
    assert all(lr > 0 for _, lr, _ in steps)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable)), "the optimizer moved the weights"


def run_in_process(run_dir: Path, *overrides: str) -> dict:
    """`dlrun train OVERRIDES` without a new Python process (torch's import is the slow part of one)."""
    run = dlrun.train(["device=cpu", "logging.hparams=false", *overrides, f"hydra.run.dir={run_dir}"])
    assert run.run_dir == run_dir
    return run.metrics


def event_data(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def logistic_run(tmp_path_factory):
    """Softmax regression on digits with every TensorBoard extra on and a per-step schedule."""
    run_dir = tmp_path_factory.mktemp("logistic")
    metrics = run_in_process(
        run_dir,
        "model=logistic",
        "scheduler=onecycle",
        "optimizer.lr=0.1",
        "trainer.epochs=2",
        "trainer.batch_size=128",
        "trainer.log_every_n_steps=3",
        "logging.histograms_every=1",
        "logging.misclassified=8",
        "logging.confusion_matrix_every=0",
    )
    return run_dir, metrics, event_data(run_dir)


def test_lr_and_gradient_norm_are_logged_at_every_step(logistic_run):
    run_dir, metrics, acc = logistic_run
    steps = 2 * math.ceil(1294 / 128)  # digits: 1294 training images
    lrs = acc.Scalars("train/lr")
    assert [e.step for e in lrs] == list(range(1, steps + 1))
    values = [e.value for e in lrs]
    assert values[0] == pytest.approx(0.1 / 25) and max(values) == pytest.approx(0.1, rel=0.05)
    assert values[-1] < 1e-3 and len(set(values)) == steps, "onecycle moves the lr at every step"
    norms = [e.value for e in acc.Scalars("train/grad_norm")]
    assert len(norms) == steps and all(n > 0 and math.isfinite(n) for n in norms)


def test_histograms_class_templates_misclassified_grid_and_graph(logistic_run):
    run_dir, metrics, acc = logistic_run
    tags = acc.Tags()
    for name in ("linear.weight", "linear.bias"):
        assert [e.step for e in acc.Histograms(f"weights/{name}")] == [1, 2]
        assert [e.step for e in acc.Histograms(f"gradients/{name}")] == [1, 2]
    templates = acc.Images("weights/class_templates")
    assert [e.step for e in templates] == [1, 2] and templates[0].width >= 8 * 5, "ten 8x8 templates in a grid"
    assert acc.Images("test/misclassified")[0].width > 100
    assert tags["graph"], "the model graph is in the event file"
    assert "test/classification_report/text_summary" in tags["tensors"]


def test_classification_report_csv_matches_the_confusion_matrix(logistic_run):
    run_dir, metrics, acc = logistic_run
    with open(run_dir / "classification_report.csv") as f:
        rows = list(csv.DictReader(f))
    with open(run_dir / "confusion_matrix.csv") as f:
        cm = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]])
    assert [r["class"] for r in rows] == [str(i) for i in range(10)] + ["macro avg", "weighted avg"]
    for i, row in enumerate(rows[:10]):
        assert float(row["recall"]) == pytest.approx(cm[i, i] / cm[i].sum(), abs=1e-6)
        assert float(row["precision"]) == pytest.approx(cm[i, i] / cm[:, i].sum(), abs=1e-6)
        assert int(row["support"]) == cm[i].sum()
    assert float(rows[10]["f1"]) == pytest.approx(metrics["test"]["f1"], abs=1e-4), "macro F1 as torchmetrics has it"


def test_early_stopping_stops_a_run_when_the_metric_stalls(tmp_path, capsys):
    # min_delta 1: no change of val/f1 counts as an improvement, so patience 1 ends the run after epoch 2.
    metrics = run_in_process(
        tmp_path,
        "trainer.epochs=10",
        "trainer.early_stopping.patience=1",
        "trainer.early_stopping.min_delta=1.0",
        "logging.graph=false",
    )
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 2
    assert metrics["early_stopping"] == {
        "monitor": "val/f1",
        "mode": "max",
        "patience": 1,
        "min_delta": 1.0,
        "stopped": True,
        "stopped_epoch": 2,
        "best_epoch": 1,
        "best": metrics["early_stopping"]["best"],
    }
    assert "test" in metrics, "the best epoch is still tested"
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 1 + 2
    assert "early stopping: val/f1 has not improved by more than 1.0 for 1 epochs" in capsys.readouterr().out


@pytest.mark.slow
def test_a_catalogue_run_through_the_entry_point_logs_its_model_and_initializer(tmp_path):
    proc = run_dlrun(
        "train",
        "model=cnn",
        "model.channels=[8,16]",
        "model.head_hidden=128",
        "model.dropout=0.1",
        "initializer=kaiming_normal",
        "optimizer=adamw",
        "optimizer.lr=0.01",
        "scheduler=cosine",
        "scheduler.fn.warmup_epochs=0.2",
        "trainer.epochs=1",
        "trainer.grad_clip.max_norm=1",
        "trainer.l1=1e-5",
        "loss.label_smoothing=0.1",
        "loss.class_weights=balanced",
        "device=cpu",
        cwd=tmp_path,
    )
    assert "input (1, 8, 8)" in proc.stdout
    run_dir = next((tmp_path / "outputs" / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    total, trainable = metrics["parameters"]["total"], metrics["parameters"]["trainable"]
    assert f"model: {total:,} parameters ({trainable:,} trainable)" in proc.stdout
    log = (run_dir / "train.log").read_text()
    assert (
        "initializer: dlrun.model.initializers.kaiming_normal_(nonlinearity=relu, mode=fan_in), biases zeroed; "
        "applied to: features.0.0 (Conv2d (8, 1, 5, 5)), features.1.0 (Conv2d (16, 8, 3, 3)), "
        "head.1 (Linear (128, 64)), head.4 (Linear (10, 128))"
    ) in log
    assert metrics["status"] == "completed" and metrics["test"]["accuracy"] > 0.5
