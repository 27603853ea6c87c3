"""Classification metrics with torchmetrics, accumulated on the training device and read once per epoch."""

import functools

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from dlrun.config.schema import METRIC_NAMES


class MeanLoss(Metric):
    """The sample-weighted mean loss. torchmetrics' MeanMetric checks every update for NaN on the host,
    a sync per step; a NaN here simply propagates, and dlrun.faults stops the run on it."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, weight: int) -> None:
        self.total += loss.detach().double() * weight
        self.count += weight

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


# How each score of METRIC_NAMES is computed: accuracy over all samples, the others averaged over classes.
SCORES = {
    "accuracy": functools.partial(MulticlassAccuracy, average="micro"),
    "precision": functools.partial(MulticlassPrecision, average="macro"),
    "recall": functools.partial(MulticlassRecall, average="macro"),
    "f1": functools.partial(MulticlassF1Score, average="macro"),
}


class ClassificationMetrics(torch.nn.Module):
    """Mean loss, accuracy, and macro precision, recall and F1 over an epoch."""

    def __init__(self, num_classes: int):
        super().__init__()
        # validate_args=False: the checks read values back to the host at every step.
        kw = dict(num_classes=num_classes, validate_args=False)
        self.scores = MetricCollection({name: SCORES[name](**kw) for name in METRIC_NAMES if name != "loss"})
        self.loss = MeanLoss()

    def reset(self) -> None:
        self.scores.reset()
        self.loss.reset()

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        self.scores.update(logits, target)
        self.loss.update(loss, weight=len(target))

    def compute(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.compute(), **self.scores.compute()}


def classification_metrics(num_classes: int) -> ClassificationMetrics:
    return ClassificationMetrics(num_classes)


def confusion_matrix(num_classes: int) -> MulticlassConfusionMatrix:
    return MulticlassConfusionMatrix(num_classes=num_classes, validate_args=False)
