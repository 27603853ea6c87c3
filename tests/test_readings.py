"""What a finished run reads out for its user: every average in history.csv and metrics.json, PR curves in
TensorBoard, the threshold of a two-class task, the worst confusions, and the verdict on the curves."""

import csv
import json

import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dlrun
from dlrun.app.eval_cmd import evaluate_checkpoint
from dlrun.config.schema import METRIC_NAMES
from dlrun.core.errors import ConfigError
from dlrun.data import load_data, make_loaders
from dlrun.engine import checkpoint
from dlrun.engine.build import make_model
from dlrun.observe.diagnosis import VERDICTS


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("digits")
    run = dlrun.train(["device=cpu", "trainer.epochs=3", "logging.pr_curves=2", f"hydra.run.dir={run_dir}"])
    return run, events(run_dir)


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("moons")
    run = dlrun.train(["device=cpu", "dataset=moons", "trainer.epochs=3", f"hydra.run.dir={run_dir}"])
    return run, events(run_dir)


def test_every_average_is_in_history_metrics_json_and_tensorboard(digits_run):
    run, acc = digits_run
    with open(run.run_dir / "history.csv", newline="") as f:
        header = next(csv.reader(f))
    scalars = set(acc.Tags()["scalars"])
    for m in METRIC_NAMES:
        assert {f"train/{m}", f"val/{m}"} <= set(header), m
        assert {f"train/{m}", f"val/{m}", f"test/{m}"} <= scalars, m
        assert m in run.metrics["test"] and f"val/{m}" in run.metrics["best"], m
    best = run.metrics["best"]
    assert [e.value for e in acc.Scalars("best/val/f1")][-1] == pytest.approx(best["val/f1"], abs=1e-6)


def test_test_scores_match_scikit_learn_on_the_saved_model(digits_run):
    """The run's test scores, recomputed by an independent implementation from best.pt's predictions."""
    run, _ = digits_run
    state = checkpoint.load(run.run_dir / "best.pt")
    cfg = OmegaConf.create(state["config"])
    data = load_data(cfg.dataset, cfg.seed, cfg.trainer.val_fraction)
    data.mean, data.std = tuple(state["mean"]), tuple(state["std"])
    model = make_model(OmegaConf.to_container(cfg.model, resolve=True), data.in_shape, data.num_classes)
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        batches = [(model(x).softmax(1), y) for x, y in make_loaders(data, cfg, torch.device("cpu"))[2]]
    probs, y = torch.cat([b[0] for b in batches]).numpy(), torch.cat([b[1] for b in batches]).numpy()
    test, pred = run.metrics["test"], probs.argmax(1)
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        suffix = "" if average == "macro" else f"_{average}"
        assert (test[f"precision{suffix}"], test[f"recall{suffix}"], test[f"f1{suffix}"]) == pytest.approx((p, r, f), abs=1e-5)
    assert test["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-5)


def test_pr_curves_per_class_for_test_and_every_second_val_epoch(digits_run):
    run, acc = digits_run
    tensors = set(acc.Tags()["tensors"])
    classes = [str(c) for c in range(10)]
    assert {f"test/pr_curve/{c}" for c in classes} <= tensors
    assert [e.step for e in acc.Tensors("val/pr_curve/3")] == [2], "logging.pr_curves=2: epoch 2 of 3"
    for name in ("pr_curve.png", "roc_curve.png", "confusion_matrix.png"):
        assert (run.run_dir / name).stat().st_size > 10_000, name


def test_most_confused_and_verdict_are_in_metrics_json_and_tensorboard(digits_run):
    run, acc = digits_run
    cells = run.metrics["most_confused"]
    assert cells, "a 3-epoch digits model confuses some digits"
    cm = [[int(v) for v in row[1:]] for row in list(csv.reader(open(run.run_dir / "confusion_matrix.csv")))[1:]]
    top = cells[0]
    assert top["count"] == max(cm[i][j] for i in range(10) for j in range(10) if i != j)
    assert top["share"] == pytest.approx(top["count"] / sum(cm[int(top["true"])]), abs=1e-4)
    assert [c["count"] for c in cells] == sorted((c["count"] for c in cells), reverse=True)
    diagnosis = run.metrics["diagnosis"]
    assert diagnosis["verdict"] in VERDICTS and diagnosis["reason"] and diagnosis["suggestion"]
    tensors = set(acc.Tags()["tensors"])
    assert {"test/most_confused/text_summary", "diagnosis/text_summary"} <= tensors


def test_a_binary_run_chooses_its_threshold_on_val(moons_run):
    run, acc = moons_run
    threshold = run.metrics["threshold"]
    assert 0 < threshold["best_f1"] < 1 and threshold["positive_class"] == "1"
    assert set(threshold["at_best"]) == set(threshold["at_0.5"]) == {"threshold", "precision", "recall", "f1"}
    assert threshold["at_0.5"]["threshold"] == 0.5
    assert (run.run_dir / "threshold.png").stat().st_size > 10_000
    assert acc.Scalars("test/threshold/best_f1")[0].value == pytest.approx(threshold["best_f1"], abs=1e-6)
    assert set(acc.Tags()["tensors"]) >= {"test/pr_curve/1"}, "two classes: the positive class's curve"
    assert "val/threshold" in acc.Tags()["images"]
    saved = json.loads((run.run_dir / "metrics.json").read_text())
    assert saved["test"]["auroc"] == run.metrics["test"]["auroc"] > 0.8


def test_a_wide_mlp_without_regularisation_overfits_digits(tmp_path):
    run = dlrun.train(
        [
            "device=cpu",
            "model.hidden_sizes=[512,512]",
            "scheduler=none",
            "optimizer.lr=0.1",
            "optimizer.momentum=0.9",
            "trainer.epochs=40",
            "logging.confusion_matrix_every=0",
            "logging.graph=false",
            f"hydra.run.dir={tmp_path}",
        ]
    )
    diagnosis = run.metrics["diagnosis"]
    assert diagnosis["verdict"] == "overfitting", diagnosis
    val_losses = [row["val/loss"] for row in run.history]
    assert diagnosis["epoch"] == 1 + val_losses.index(min(val_losses))


def test_eval_scores_a_binary_run_at_a_chosen_threshold(moons_run):
    run, _ = moons_run
    saved = run.metrics["threshold"]
    result = evaluate_checkpoint(run.run_dir, device="cpu", threshold=saved["best_f1"])
    assert result["threshold"]["default"] == pytest.approx(saved["at_0.5"], abs=1e-6)
    assert result["threshold"]["chosen"] == pytest.approx(saved["at_best"], abs=1e-6)
    low = evaluate_checkpoint(run.run_dir, device="cpu", threshold=0.05)["threshold"]["chosen"]
    assert low["recall"] >= saved["at_0.5"]["recall"] and low["precision"] <= saved["at_0.5"]["precision"]


def test_eval_refuses_a_threshold_for_ten_classes(digits_run):
    run, _ = digits_run
    with pytest.raises(ConfigError) as err:
        evaluate_checkpoint(run.run_dir, device="cpu", threshold=0.3)
    assert str(err.value) == "threshold=0.3: applies to two-class tasks; this model has 10 classes"
