"""The training losses of the `loss` config group. Each takes the model's output and the targets:

- classification: logits (N, K) and int64 classes (N,); a binary head's single logit z (N, 1) counts as
  the two-class logits [0, z], whose softmax is [1 - sigmoid(z), sigmoid(z)], so every classification loss
  also trains a binary head (cross-entropy on [0, z] is binary cross-entropy on z);
- regression: outputs (N, 1) and float targets (N,), both in the scaled units the model learns in.

`task` and `one_logit` say what each loss fits, for the config check and for the model's output count."""

import torch
import torch.nn.functional as F
from torch import nn


def two_class(logits: torch.Tensor) -> torch.Tensor:
    """A single logit z as the two-class logits [0, z]; other logits as they are."""
    return torch.cat([torch.zeros_like(logits), logits], 1) if logits.shape[1] == 1 else logits


def _weights(values) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor([float(w) for w in values], dtype=torch.float32)


class CrossEntropy(nn.Module):
    """Softmax cross-entropy, with label smoothing and class weights (one per class; build_loss turns
    `balanced` into n / (k * count) per class)."""

    name, task = "cross_entropy", "classification"

    def __init__(self, label_smoothing: float = 0.0, class_weights=None):
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", _weights(class_weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(two_class(logits), target, weight=self.weight, label_smoothing=self.label_smoothing)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t, with p_t the softmax probability
    of the true class. gamma=0 without alpha is cross-entropy. `alpha`: null, a list with one weight per
    class, or for two classes one number, the positive class's weight (the negative's is 1 - alpha), as
    torchvision's sigmoid_focal_loss has it. The mean over the batch."""

    name, task = "focal", "classification"

    def __init__(self, gamma: float = 2.0, alpha=None):
        super().__init__()
        self.gamma = float(gamma)
        if isinstance(alpha, (int, float)):
            alpha = [1 - float(alpha), float(alpha)]
        self.register_buffer("alpha", _weights(alpha))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(two_class(logits).float(), 1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.alpha is not None:
            loss = loss * self.alpha[target]
        return loss.mean()


class MultiMargin(nn.Module):
    """The multi-class hinge loss (torch.nn.MultiMarginLoss): sum over j != y of max(0, margin - x_y + x_j)^p / K."""

    name, task = "multi_margin", "classification"

    def __init__(self, margin: float = 1.0, p: int = 1, class_weights=None):
        super().__init__()
        self.margin, self.p = float(margin), int(p)
        self.register_buffer("weight", _weights(class_weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.multi_margin_loss(two_class(logits), target, p=self.p, margin=self.margin, weight=self.weight)


class BinaryCrossEntropy(nn.Module):
    """Binary cross-entropy on one logit (BCEWithLogitsLoss): the course's logistic regression. The model
    gets a single-output head; `pos_weight` > 1 counts each positive as that many."""

    name, task = "bce", "classification"
    one_logit = True

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor([float(pos_weight)]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1:
            raise ValueError(f"loss=bce takes one logit per sample, not {logits.shape[1]}")
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), target.float(), pos_weight=self.pos_weight)


class _Regression(nn.Module):
    task = "regression"

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.error(output.reshape(target.shape).float(), target.float())


class MSE(_Regression):
    """Mean squared error."""

    name = "mse"

    def error(self, output, target):
        return F.mse_loss(output, target)


class MAE(_Regression):
    """Mean absolute error (L1)."""

    name = "mae"

    def error(self, output, target):
        return F.l1_loss(output, target)


class Huber(_Regression):
    """Huber: squared below `delta`, linear above it (in the scaled target's units)."""

    name = "huber"

    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = float(delta)

    def error(self, output, target):
        return F.huber_loss(output, target, delta=self.delta)


class OneOutput(nn.Module):
    """A loss of the user's own (torch.nn.SmoothL1Loss, say) on a regression: it gets the output as (N,), the
    targets' shape, not (N, 1), which would broadcast against them into an (N, N) error without a word."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(output.reshape(target.shape).float(), target.float())


def task_of(loss_cls) -> str | None:
    """The task a loss class fits, when it says (a user's own loss may not: then it is not checked)."""
    return getattr(loss_cls, "task", None)


def eval_loss(task: str) -> nn.Module:
    """Val and test loss, whatever trains: plain cross-entropy for classification (on [0, z] for a binary
    head, so it is binary cross-entropy there), MSE in the scaled units for regression. Runs stay comparable."""
    return MSE() if task == "regression" else CrossEntropy()


def task_loss(task: str, label_smoothing: float = 0.0, class_weights=None) -> nn.Module:
    """The task's plain loss (`loss=by_task`, dataset=csv's default, since a table's task is known only once its
    file is read): cross-entropy for a classification, with its smoothing and weights; MSE for a regression
    (build_loss refuses smoothing or weights there)."""
    return MSE() if task == "regression" else CrossEntropy(label_smoothing, class_weights)
