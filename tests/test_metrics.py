"""Every score dlrun logs, held to scikit-learn's numbers on fixed predictions."""

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from dlrun.config.schema import METRIC_NAMES
from dlrun.observe.metrics import (
    best_f1_threshold,
    classification_metrics,
    most_confused,
    pr_roc_curves,
    scores_at,
    threshold_sweep,
)


def predictions(n: int, classes: int, seed: int, ties: bool = False):
    """Logits that mostly agree with the targets, in several batches; `ties` rounds them so scores repeat."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g) + 1.5 * torch.nn.functional.one_hot(y, classes)
    if ties:
        logits = logits.round()
    return logits, y


def scored(logits, y, classes: int, batch: int = 37) -> dict:
    metrics = classification_metrics(classes)
    for i in range(0, len(y), batch):
        metrics.update(logits[i : i + batch], y[i : i + batch], torch.tensor(0.5))
    return {k: float(v) for k, v in metrics.compute().items()}


@pytest.mark.parametrize("classes,ties", [(10, False), (3, True), (2, False), (2, True)])
def test_every_score_matches_scikit_learn(classes, ties):
    logits, y = predictions(500, classes, seed=classes, ties=ties)
    got = scored(logits, y, classes)
    assert set(got) == set(METRIC_NAMES)
    pred, probs = logits.argmax(1).numpy(), logits.softmax(1).double().numpy()
    y = y.numpy()
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        suffix = "" if average == "macro" else f"_{average}"
        assert got[f"precision{suffix}"] == pytest.approx(p, abs=1e-6)
        assert got[f"recall{suffix}"] == pytest.approx(r, abs=1e-6)
        assert got[f"f1{suffix}"] == pytest.approx(f, abs=1e-6)
    if classes == 2:  # the positive class's areas
        auroc, ap = roc_auc_score(y, probs[:, 1]), average_precision_score(y, probs[:, 1])
    else:
        auroc = roc_auc_score(y, probs, multi_class="ovr", average="macro")
        ap = average_precision_score(np.eye(classes)[y], probs, average="macro")
    assert got["auroc"] == pytest.approx(auroc, abs=1e-6)
    assert got["average_precision"] == pytest.approx(ap, abs=1e-6)


def test_a_class_never_seen_nor_predicted_takes_no_part_in_the_macro_average():
    logits, y = predictions(200, 4, seed=1)
    logits[:, 3] = -100  # class 3 is never predicted, and never the target
    y[y == 3] = 0
    got = scored(logits, y, 4)
    p, r, f, _ = precision_recall_fscore_support(y.numpy(), logits.argmax(1).numpy(), average="macro", zero_division=0)
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f), abs=1e-6)


def test_the_curves_areas_match_scikit_learn():
    logits, y = predictions(300, 3, seed=4)
    probs = logits.softmax(1)
    curves = pr_roc_curves(probs, y, ["a", "b", "c"])
    assert list(curves) == ["a", "b", "c"]
    for k, name in enumerate(curves):
        positive = (y == k).numpy()
        assert curves[name]["auroc"] == pytest.approx(roc_auc_score(positive, probs[:, k].numpy()), abs=1e-6)
        assert curves[name]["average_precision"] == pytest.approx(
            average_precision_score(positive, probs[:, k].numpy()), abs=1e-6
        )
        precision, recall, _ = precision_recall_curve(positive, probs[:, k].numpy())
        # the same points (scikit-learn lists them from full recall down and stops at full recall)
        got = set(zip(np.round(curves[name]["recall"][1:], 9), np.round(curves[name]["precision"][1:], 9)))
        assert set(zip(np.round(recall[:-1], 9), np.round(precision[:-1], 9))) <= got


def test_the_best_f1_threshold_is_known_in_advance():
    # Positives score 0.9, 0.8, 0.6, 0.3; negatives 0.7, 0.4, 0.2, 0.1. At >= 0.6: 3 TP, 1 FP, 1 FN, F1 0.75;
    # at >= 0.3: 4 TP, 2 FP, F1 0.8, the best of all thresholds (>= 0.9: 0.4, >= 0.8: 0.67, >= 0.2: 0.73).
    scores = torch.tensor([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
    positive = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0]).bool()
    assert best_f1_threshold(scores, positive) == pytest.approx(0.3)
    assert scores_at(scores, positive, 0.3) == pytest.approx({"threshold": 0.3, "precision": 4 / 6, "recall": 1.0, "f1": 0.8})
    assert scores_at(scores, positive, 0.5) == pytest.approx({"threshold": 0.5, "precision": 0.75, "recall": 0.75, "f1": 0.75})
    sweep = threshold_sweep(scores, positive)
    precision, recall, thresholds = precision_recall_curve(positive.numpy(), scores.numpy())
    for t, p, r in zip(thresholds, precision, recall):
        i = int(np.nonzero(np.isclose(sweep["threshold"], t))[0][0])
        assert (sweep["precision"][i], sweep["recall"][i]) == pytest.approx((p, r))


def test_most_confused_lists_the_largest_off_diagonal_cells():
    cm = np.array([[50, 2, 8], [1, 40, 0], [12, 3, 30]])
    cells = most_confused(cm, ["shirt", "trouser", "t-shirt"], top=3)
    assert cells == [
        {"true": "t-shirt", "predicted": "shirt", "count": 12, "share": round(12 / 45, 4)},
        {"true": "shirt", "predicted": "t-shirt", "count": 8, "share": round(8 / 60, 4)},
        {"true": "t-shirt", "predicted": "trouser", "count": 3, "share": round(3 / 45, 4)},
    ]
