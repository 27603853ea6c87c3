"""What dlrun reads out of a finished run for its user, the way the metrics chapter reads a model: the
worst confusions of the test confusion matrix, each class's PR and ROC curve, and, for a two-class task,
the decision threshold of best val F1 with the test scores there and at 0.5; for a regression, the test
predictions and, with one input feature, the learned function."""

import torch

from dlrun.engine.steps import evaluate
from dlrun.observe.metrics import (
    best_f1_threshold,
    classification_metrics,
    most_confused,
    pr_roc_curves,
    scores_at,
    threshold_sweep,
)


def test_readings(test_scores, classes: list[str], model, val_loader, loss_fn, amp, device) -> dict:
    """`test_scores`: the EpochScores the test split was evaluated with (its matrix and probabilities)."""
    probs, targets = test_scores.scores
    readings = {
        "most_confused": most_confused(test_scores.confusion, classes),
        "scores": (probs, targets),
        "curves": pr_roc_curves(probs, targets, classes),
    }
    if len(classes) == 2:
        # The threshold is chosen on val, with the weights under test, then read on test.
        val = classification_metrics(2).to(device)
        evaluate(model, val_loader, loss_fn, val, amp)
        val_probs, val_targets = val.scores
        best = best_f1_threshold(val_probs[:, 1], val_targets == 1)
        readings["threshold_sweep"] = threshold_sweep(val_probs[:, 1], val_targets == 1)
        readings["threshold"] = {
            "positive_class": classes[1],
            "best_f1": round(best, 6),
            "at_best": _rounded(scores_at(probs[:, 1], targets == 1, best)),
            "at_0.5": _rounded(scores_at(probs[:, 1], targets == 1, 0.5)),
        }
    return readings


# Points along x at which a 1-D regression's learned function is drawn.
FUNCTION_POINTS = 400


@torch.no_grad()
def regression_readings(test_scores, model, data) -> dict:
    """A regression's test predictions and targets in the target's units (predictions.png, residuals.png) and,
    for one input feature, the learned function over the training points' range (function.png)."""
    pred, target = (t.cpu().numpy() for t in test_scores.predictions)
    readings = {"predictions": (pred, target)}
    if tuple(data.in_shape) == (1,) and len(data.train):
        x = data.train.x[:, 0].float()
        device = next(model.parameters()).device
        xs = torch.linspace(float(x.min()), float(x.max()), FUNCTION_POINTS)
        inputs = ((xs - data.mean[0]) / data.std[0]).view(-1, 1).to(device)  # standardised as the loaders do
        was_training = model.training
        model.eval()
        try:
            learned = model(inputs).float().view(-1).cpu()
        finally:
            model.train(was_training)
        y_mean, y_std = data.target_scale
        y = data.train.y.float() * y_std + y_mean
        readings["function"] = (xs.numpy(), (learned * y_std + y_mean).numpy(), x.numpy(), y.numpy())
    return readings


def _rounded(scores: dict) -> dict:
    return {k: round(v, 6) for k, v in scores.items()}
