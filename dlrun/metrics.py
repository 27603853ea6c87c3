"""Classification metrics with torchmetrics, accumulated on the training device and read once per epoch."""

import warnings

import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

# A NaN loss stops the run as diverged, with its step (dlrun.faults); torchmetrics' warning would only repeat it.
warnings.filterwarnings("ignore", message="Encountered `nan` values in tensor")


class ClassificationMetrics(torch.nn.Module):
    """Mean loss, accuracy, and macro precision, recall and F1 over an epoch."""

    def __init__(self, num_classes: int):
        super().__init__()
        # validate_args=False: the checks read values back to the host at every step.
        kw = dict(num_classes=num_classes, validate_args=False)
        self.scores = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(average="micro", **kw),
                "precision": MulticlassPrecision(average="macro", **kw),
                "recall": MulticlassRecall(average="macro", **kw),
                "f1": MulticlassF1Score(average="macro", **kw),
            }
        )
        self.loss = MeanMetric()

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
