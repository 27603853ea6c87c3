"""Tasks and losses: each loss of the `loss` group against torch's own formula, binary one-logit heads, and
regression runs (diabetes, a 1-D function) with their scores held to scikit-learn's."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config, run_dlrun
from sklearn.datasets import load_diabetes
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torchvision.ops import sigmoid_focal_loss

import dlrun
from dlrun.app.api import RunError
from dlrun.app.eval_cmd import evaluate_checkpoint
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.data import load_data
from dlrun.engine.build import check
from dlrun.engine.optim import build_loss
from dlrun.observe.metrics import RegressionScores
from dlrun.results.summary import default_columns

QUIET = ["logging.graph=false", "logging.misclassified=0", "logging.confusion_matrix_every=0", "logging.hparams=false"]
LOGITS = torch.tensor([[1.5, -0.3, 0.2], [0.1, 0.4, -1.0], [-0.7, 0.9, 2.0], [0.3, 0.3, 0.3]])
CLASSES = torch.tensor([0, 1, 2, 1])
ONE_LOGIT = torch.tensor([[0.8], [-1.2], [0.1], [2.5]])
BINARY = torch.tensor([1, 0, 0, 1])


def loss(*overrides: str, labels=CLASSES, num_classes: int = 3) -> nn.Module:
    return build_loss(compose_config(*overrides).loss, labels, num_classes)


def test_classification_losses_match_torch():
    assert loss()(LOGITS, CLASSES).item() == pytest.approx(F.cross_entropy(LOGITS, CLASSES).item())
    smoothed = loss("loss.label_smoothing=0.1", "loss.class_weights=[1,2,3]")(LOGITS, CLASSES)
    weights = torch.tensor([1.0, 2.0, 3.0])
    assert smoothed.item() == pytest.approx(F.cross_entropy(LOGITS, CLASSES, weight=weights, label_smoothing=0.1).item())
    hinge = loss("loss=multi_margin")(LOGITS, CLASSES)
    assert hinge.item() == pytest.approx(nn.MultiMarginLoss()(LOGITS, CLASSES).item())
    squared = loss("loss=multi_margin", "loss.p=2", "loss.margin=0.5")(LOGITS, CLASSES)
    assert squared.item() == pytest.approx(nn.MultiMarginLoss(p=2, margin=0.5)(LOGITS, CLASSES).item())


def test_focal_loss_is_its_formula_and_cross_entropy_at_gamma_0():
    assert loss("loss=focal", "loss.gamma=0")(LOGITS, CLASSES).item() == pytest.approx(F.cross_entropy(LOGITS, CLASSES).item())
    p_true = LOGITS.softmax(1).gather(1, CLASSES[:, None]).squeeze(1)
    alpha = torch.tensor([0.2, 0.3, 0.5])
    expected = (-alpha[CLASSES] * (1 - p_true) ** 2 * p_true.log()).mean()
    assert loss("loss=focal", "loss.alpha=[0.2,0.3,0.5]")(LOGITS, CLASSES).item() == pytest.approx(expected.item())
    # Two classes on one logit: torchvision's sigmoid focal loss, with alpha the positive class's weight.
    binary = loss("loss=focal", "loss.alpha=0.25", labels=BINARY, num_classes=2)(ONE_LOGIT, BINARY)
    reference = sigmoid_focal_loss(ONE_LOGIT[:, 0], BINARY.float(), alpha=0.25, gamma=2.0, reduction="mean")
    assert binary.item() == pytest.approx(reference.item(), rel=1e-5)
    with pytest.raises(ConfigError, match=r"loss.alpha=0.25: one number is for two classes"):
        loss("loss=focal", "loss.alpha=0.25")


def test_binary_losses_on_one_logit_match_bce_with_logits():
    reference = nn.BCEWithLogitsLoss()(ONE_LOGIT[:, 0], BINARY.float()).item()
    assert loss("loss=bce", labels=BINARY, num_classes=2)(ONE_LOGIT, BINARY).item() == pytest.approx(reference)
    weighted = loss("loss=bce", "loss.pos_weight=3", labels=BINARY, num_classes=2)(ONE_LOGIT, BINARY).item()
    assert weighted == pytest.approx(nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))(ONE_LOGIT[:, 0], BINARY.float()).item())
    # Cross-entropy on a binary head's [0, z] is binary cross-entropy on z.
    assert loss(labels=BINARY, num_classes=2)(ONE_LOGIT, BINARY).item() == pytest.approx(reference, rel=1e-6)


def test_regression_losses_match_torch():
    out, target = torch.tensor([[0.5], [2.0], [-1.0], [3.5]]), torch.tensor([0.0, 2.5, -1.2, 1.0])
    cases = [("mse", [], nn.MSELoss()), ("mae", [], nn.L1Loss()), ("huber", ["loss.delta=0.7"], nn.HuberLoss(delta=0.7))]
    for name, extra, reference in cases:
        got = loss("dataset=diabetes", f"loss={name}", *extra, labels=target, num_classes=1)(out, target)
        assert got.item() == pytest.approx(reference(out[:, 0], target).item()), name
    # A torch loss of the user's own gets the (N,) output: no silent (N, N) broadcast against the targets.
    own = build_loss({"_target_": "torch.nn.SmoothL1Loss"}, target, 1, "regression")(out, target)
    assert own.item() == pytest.approx(F.smooth_l1_loss(out[:, 0], target).item())


def test_regression_scores_are_scikit_learns_in_the_targets_units():
    rng = np.random.default_rng(0)
    target = rng.normal(150, 70, size=57)
    pred = target + rng.normal(0, 40, size=57)
    scores = RegressionScores(target_scale=(150.0, 70.0))
    for part in np.array_split(np.arange(57), 4):  # scaled, in batches, as the loop feeds it
        scaled = torch.tensor((pred[part] - 150) / 70, dtype=torch.float32)[:, None]
        scores.update(scaled, torch.tensor((target[part] - 150) / 70, dtype=torch.float32), torch.tensor(0.0))
    got = {k: v.item() for k, v in scores.compute().items()}
    assert got["mae"] == pytest.approx(mean_absolute_error(target, pred), rel=1e-5)
    assert got["rmse"] == pytest.approx(mean_squared_error(target, pred) ** 0.5, rel=1e-5)
    assert got["r2"] == pytest.approx(r2_score(target, pred), rel=1e-5)


def test_misfits_are_one_config_error_naming_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["dataset=diabetes", "loss=cross_entropy"], "loss=cross_entropy: is a classification loss, and dataset=diabetes"),
        (["dataset=diabetes", "trainer.monitor=val/f1"], "trainer.monitor=val/f1: is not a regression metric"),
        (["trainer.monitor=val/rmse"], "trainer.monitor=val/rmse: is not a classification metric"),
        (["task=regression"], "task=regression: does not fit dataset=digits, a classification set"),
        (["model.binary_head=true"], "model.binary_head=true: trains one logit, for two classes; dataset=digits has 10"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as err:
            check(compose_config(*overrides))
        assert str(err.value).startswith(message), str(err.value)
    with pytest.raises(RunError, match=r"^trainer.label_smoothing: moved; it is now loss.label_smoothing"):
        dlrun.train(["trainer.label_smoothing=0.1"])
    with pytest.raises(DlrunError, match=r"^trainer.class_weights=balanced: moved; it is now loss.class_weights"):
        dlrun.train(["+trainer.class_weights=balanced"])


@pytest.mark.slow
def test_misfits_through_the_command_line(tmp_path):
    cases = [
        ("loss=mse", "dlrun: error: loss=mse: is a regression loss, and dataset=digits is a classification"),
        ("loss=bce", "dlrun: error: loss=bce: trains one logit, for two classes; dataset=digits has 10"),
    ]
    for override, line in cases:
        proc = run_dlrun("train", override, cwd=tmp_path, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
        assert proc.stderr.startswith(line), proc.stderr


def test_the_binary_head_on_moons_scores_as_the_softmax_head(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["dataset=moons", "dataset.n_samples=300", "trainer.epochs=10", "logging.boundary_every=0", *QUIET]
    softmax = dlrun.train([*args, "hydra.run.dir=softmax"])
    binary = dlrun.train([*args, "loss=bce", "hydra.run.dir=binary"])
    weights = torch.load(tmp_path / "binary" / "best.pt", weights_only=True)["model"]
    assert weights[max(k for k in weights if k.endswith(".weight"))].shape[0] == 1, "one logit"
    assert binary.metrics["test"]["accuracy"] > 0.8
    assert binary.metrics["test"]["accuracy"] == pytest.approx(softmax.metrics["test"]["accuracy"], abs=0.03)
    # The readings of a two-class task work on the one logit: the threshold and the curves.
    assert 0 < binary.metrics["threshold"]["best_f1"] < 1
    assert (tmp_path / "binary" / "roc_curve.png").is_file() and (tmp_path / "binary" / "confusion_matrix.png").is_file()
    again = evaluate_checkpoint(tmp_path / "binary")  # dlrun eval rebuilds the one-logit head from the saved config
    assert again["test"] == pytest.approx(binary.metrics["test"], abs=1e-5)


def test_a_regression_on_diabetes_beats_the_mean_predictor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = dlrun.train(["dataset=diabetes", "trainer.epochs=12", *QUIET, "hydra.run.dir=run"])
    run_dir = tmp_path / "run"
    test = run.metrics["test"]
    assert set(test) == {"loss", "mae", "rmse", "r2"} and test["r2"] > 0
    assert run.metrics["monitor"] == "val/rmse" and "accuracy" not in json.dumps(run.metrics["best"])
    assert 20 < test["mae"] < test["rmse"] < 100, "in the target's units (disease progression, about 25 to 350)"
    with open(run_dir / "history.csv", newline="") as f:
        header = next(csv.reader(f))
    assert {f"{s}/{m}" for s in ("train", "val") for m in ("mae", "rmse", "r2")} <= set(header)
    for name in ("predictions.png", "residuals.png", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "confusion_matrix.png").exists() and not (run_dir / "function.png").exists()
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/rmse", "val/r2", "val/mae", "test/rmse", "test/r2", "test/mae"} <= scalars
    assert {"test/predictions", "test/residuals"} <= set(events.Tags()["images"])
    assert events.Scalars("test/r2")[-1].value == pytest.approx(test["r2"], abs=1e-5)
    # dlrun eval reads the same scores again from best.pt.
    again = evaluate_checkpoint(run_dir)
    assert again["test"] == pytest.approx(test, abs=1e-5)
    assert (run_dir / "eval" / "diabetes-test-best" / "predictions.png").is_file()


def test_diabetes_is_scikit_learns_with_a_scaled_target():
    data = load_data(compose_config("dataset=diabetes").dataset, seed=0, val_fraction=0.1)
    raw = load_diabetes(scaled=False)
    assert data.task == "regression" and data.classes == ["target"] and data.in_shape == (10,)
    assert len(data.train) + len(data.val) + len(data.test) == 442 and len(data.test) == round(442 * 0.2)
    x = torch.cat([data.train.x, data.val.x, data.test.x]).double()
    assert sorted(map(tuple, x.numpy().round(4).tolist())) == sorted(map(tuple, raw.data.round(4).tolist()))
    mean, std = data.target_scale
    assert abs(data.train.y.mean().item()) < 1e-5 and data.train.y.std().item() == pytest.approx(1.0, abs=1e-5)
    targets = torch.cat([data.train.y, data.val.y, data.test.y]).double() * std + mean
    assert sorted(targets.numpy().round(3)) == pytest.approx(sorted(raw.target), abs=1e-3)
    again = load_data(compose_config("dataset=diabetes").dataset, seed=0, val_fraction=0.1)
    assert torch.equal(again.test.x, data.test.x), "a fixed split"


def test_summaries_show_a_regressions_scores():
    assert default_columns("val/rmse") == ["val/rmse", "epoch", "test/rmse", "test/r2"]
    assert default_columns("val/f1") == ["val/f1", "epoch", "test/accuracy", "test/f1"]


def test_a_function_run_draws_the_learned_function(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["dataset=function", "dataset.function=cubic", "dataset.n_samples=200", "dataset.range=[-2,2]"]
    run = dlrun.train([*args, "trainer.epochs=3", *QUIET, "hydra.run.dir=run"])
    assert run.metrics["status"] == "completed" and run.metrics["dataset"] == "function"
    assert (tmp_path / "run" / "function.png").is_file()
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    events.Reload()
    assert "test/function" in events.Tags()["images"]
