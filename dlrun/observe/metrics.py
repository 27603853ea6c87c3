"""Classification scores (and a regression's errors), accumulated on the training device and read once per epoch.

Every count-based score comes from one confusion matrix, added to at each step without reading anything
back to the host; the ranking scores (AUROC, average precision) from the class probabilities kept on the
device until the epoch ends. The tests hold them to scikit-learn's numbers."""

import math

import numpy as np
import torch
import torch.distributed as dist

# Beyond this many kept probabilities (samples x classes) an epoch's ranking scores are those of its
# first samples: 20M floats is 80 MB of device memory, more than MNIST or CIFAR need many times over.
MAX_KEPT = 20_000_000


class EpochScores(torch.nn.Module):
    """Mean loss, the confusion matrix and the class probabilities of one pass over a split.

    A step only keeps its logits, targets and loss: the scores are computed once, when the epoch ends,
    over the whole split at once (a handful of kernels instead of a dozen per step)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        # the steps beyond MAX_KEPT: counted into the matrix as they come
        self.register_buffer("cm", torch.zeros(num_classes, num_classes, dtype=torch.long), persistent=False)
        self.reset()

    def reset(self) -> None:
        self.cm.zero_()
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.kept = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        n, c = len(target), self.num_classes
        if logits.shape[1] == 1 and c == 2:
            # A binary head's one logit z as the two-class scores [0, z]: softmax gives [1 - sigmoid(z), sigmoid(z)],
            # so the matrix, the curves and the thresholds read it as they read a softmax head.
            logits = torch.cat([torch.zeros_like(logits), logits], 1)
        self.losses.append(loss.detach())
        self.sizes.append(n)
        if self.kept + n * c <= MAX_KEPT:
            self.logits.append(logits.detach())
            self.targets.append(target)
            self.kept += n * c
        else:  # index_add_, not bincount: bincount reads the largest index back to size its output, a host sync
            self.cm.view(-1).index_add_(0, target * c + logits.detach().argmax(1), torch.ones_like(target))

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The confusion matrix, the summed loss and count, probabilities and targets over every rank."""
        c, device = self.num_classes, self.cm.device
        logits = torch.cat(self.logits).float() if self.logits else torch.zeros(0, c, device=device)
        targets = torch.cat(self.targets) if self.targets else torch.zeros(0, dtype=torch.long, device=device)
        cm = self.cm + torch.bincount(targets * c + logits.argmax(1), minlength=c * c).view(c, c)
        losses = torch.stack(self.losses).double() if self.losses else torch.zeros(0, dtype=torch.float64, device=device)
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=losses.device)
        loss = torch.stack([(losses * sizes).sum(), sizes.sum()])
        probs = logits.softmax(1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(cm)
            dist.all_reduce(loss)
            probs, targets = _gather_rows(probs), _gather_rows(targets)
        return cm, loss, probs, targets

    def compute(self) -> dict[str, torch.Tensor]:
        cm, loss, probs, targets = self.gathered()
        self.confusion, self.scores = cm.cpu().numpy(), (probs, targets)
        return {"loss": (loss[0] / loss[1]).float(), **count_scores(cm), **ranking_scores(probs, targets)}


def classification_metrics(num_classes: int) -> EpochScores:
    return EpochScores(num_classes)


class RegressionScores(torch.nn.Module):
    """Mean loss, and the errors of a regression's predictions in the target's own units: the model predicts
    the target scaled by the training split's (mean, std), which `target_scale` undoes.

    mae is the mean absolute error, rmse the root of the mean squared error, r2 the coefficient of
    determination 1 - SS_res / SS_tot (0 for the mean predictor; NaN for a constant target)."""

    def __init__(self, target_scale: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.mean, self.std = (float(v) for v in target_scale)
        self.confusion, self.scores = None, None  # no classes: nothing for the matrix or the PR curves
        self.reset()

    def reset(self) -> None:
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        self.outputs.append(output.detach().reshape(len(target)).float())
        self.targets.append(target.float())
        self.losses.append(loss.detach())
        self.sizes.append(len(target))

    def compute(self) -> dict[str, torch.Tensor]:
        device = self.losses[0].device if self.losses else torch.device("cpu")
        pred = torch.cat(self.outputs) if self.outputs else torch.zeros(0, device=device)
        target = torch.cat(self.targets) if self.targets else torch.zeros(0, device=device)
        losses = torch.stack(self.losses).double() if self.losses else torch.zeros(0, dtype=torch.float64, device=device)
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=losses.device)
        loss = torch.stack([(losses * sizes).sum(), sizes.sum()])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(loss)
            pred, target = _gather_rows(pred), _gather_rows(target)
        pred, target = pred.double() * self.std + self.mean, target.double() * self.std + self.mean
        self.predictions = (pred.float(), target.float())  # in the target's units, for the figures
        return {"loss": (loss[0] / loss[1]).float(), **regression_scores(pred, target)}


def regression_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """MAE, RMSE and R2 of predictions against targets, as scikit-learn's mean_absolute_error,
    root_mean_squared_error and r2_score compute them."""
    if len(target) == 0:
        nan = torch.tensor(math.nan)
        return {"mae": nan, "rmse": nan, "r2": nan}
    error = pred.double() - target.double()
    total = ((target.double() - target.double().mean()) ** 2).sum()
    r2 = 1 - (error**2).sum() / total if total > 0 else torch.tensor(math.nan, dtype=torch.float64)
    return {"mae": error.abs().mean().float(), "rmse": error.pow(2).mean().sqrt().float(), "r2": r2.float()}


def task_metrics(task: str, num_classes: int, target_scale=(0.0, 1.0)) -> torch.nn.Module:
    """The scores a run's split is measured with: a classification's, or a regression's in the target's units."""
    return RegressionScores(target_scale) if task == "regression" else EpochScores(num_classes)


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order: ranks may hold different numbers of rows."""
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(t)], device=t.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, *t.shape[1:], dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def count_scores(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy, and precision, recall and F1 with macro, micro and weighted averages, from a confusion
    matrix (rows true, columns predicted). As scikit-learn's defaults have it, a class that is neither in
    the targets nor predicted takes no part in the macro average."""
    cm = cm.double()
    tp, support, predicted = cm.diagonal(), cm.sum(1), cm.sum(0)
    precision, recall = _divide(tp, predicted), _divide(tp, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    weights = support / support.sum().clamp_min(1)
    accuracy = tp.sum() / cm.sum().clamp_min(1)
    out = {"accuracy": accuracy}
    for name, per_class in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[name] = per_class[present].mean() if present.any() else torch.zeros((), dtype=cm.dtype, device=cm.device)
        out[f"{name}_micro"] = accuracy  # one label per sample: pooled counts give the accuracy, for all three
        out[f"{name}_weighted"] = (per_class * weights).sum()
    return {k: v.float() for k, v in out.items()}


def _ranked(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True and false positives at each distinct threshold, highest first, and the thresholds: the points
    scikit-learn's roc_curve and precision_recall_curve are built from."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, pos = scores[order], positive[order].double()
    last = torch.ones_like(s, dtype=torch.bool)  # the end of each run of equal scores
    last[:-1] = s[1:] != s[:-1]
    tps = pos.cumsum(0)[last]
    fps = (1 - pos).cumsum(0)[last]
    return tps, fps, s[last]


def class_areas(probs: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's ROC AUC (trapezoids over the ROC points) and average precision (precision times the
    recall step, summed), as roc_auc_score and average_precision_score compute them; NaN for a column
    without positives or negatives. One sort and a few scans for all columns at once, not a loop over them.

    The ROC and PR points sit at the ends of runs of equal scores: each end is paired with the end before
    it (found with a running maximum), so ties count as scikit-learn counts them."""
    # classes as rows: each sort and scan runs over contiguous memory; counts are exact in float32 below 2^24
    counts = torch.float32 if len(probs) < 2**24 else torch.float64
    s, order = probs.T.contiguous().sort(dim=1, descending=True, stable=True)
    pos = positive.T.to(counts).gather(1, order)
    tps, fps = pos.cumsum(1), (1 - pos).cumsum(1)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:, :-1] = s[:, 1:] != s[:, :-1]
    cols = torch.arange(s.shape[1], device=s.device).expand_as(s)
    ends = torch.where(last, cols, -1)
    before = torch.cat([torch.full_like(ends[:, :1], -1), ends[:, :-1]], 1).cummax(1).values  # the previous run's end
    prev_tp = torch.where(before >= 0, tps.gather(1, before.clamp_min(0)), 0)
    prev_fp = torch.where(before >= 0, fps.gather(1, before.clamp_min(0)), 0)
    npos, nneg = tps[:, -1].double(), fps[:, -1].double()
    auroc = torch.where(last, (fps - prev_fp) * (tps + prev_tp), 0).double().sum(1) / 2 / (npos * nneg)
    ap = torch.where(last, (tps - prev_tp) * tps / (tps + fps), 0).double().sum(1) / npos
    undefined = (npos == 0) | (nneg == 0)
    nan = torch.full_like(auroc, math.nan)
    return torch.where(undefined, nan, auroc), torch.where(undefined, nan, ap)


def auroc_ap(scores: torch.Tensor, positive: torch.Tensor) -> tuple[float, float]:
    """One column's ROC AUC and average precision (see class_areas)."""
    if len(scores) == 0:
        return math.nan, math.nan
    auroc, ap = class_areas(scores.unsqueeze(1), positive.unsqueeze(1))
    return float(auroc[0]), float(ap[0])


def ranking_scores(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """AUROC and average precision, one class against the rest and averaged over the classes that have
    positives and negatives here; for two classes, those of the positive class (class 1)."""
    c = probs.shape[1]
    if len(probs) == 0:
        return {"auroc": torch.tensor(math.nan), "average_precision": torch.tensor(math.nan)}
    positive = torch.nn.functional.one_hot(targets, c).bool()
    auroc, ap = class_areas(probs[:, 1:] if c == 2 else probs, positive[:, 1:] if c == 2 else positive)
    defined = ~auroc.isnan()
    if not defined.any():
        return {"auroc": torch.tensor(math.nan), "average_precision": torch.tensor(math.nan)}
    return {"auroc": auroc[defined].mean().float(), "average_precision": ap[defined].mean().float()}


def pr_roc_curves(probs: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, dict]:
    """Each class's PR and ROC points and areas (the positive class alone for two classes), for figures."""
    picked = [1] if len(classes) == 2 else range(len(classes))
    curves = {}
    for k in picked:
        tps, fps, thresholds = _ranked(probs[:, k].cpu(), (targets == k).cpu())
        if len(tps) == 0 or tps[-1] == 0 or fps[-1] == 0:
            continue
        auroc, ap = auroc_ap(probs[:, k].cpu(), (targets == k).cpu())
        curves[classes[k]] = {
            "recall": np.concatenate([[0.0], (tps / tps[-1]).numpy()]),
            "precision": np.concatenate([[1.0], (tps / (tps + fps)).numpy()]),
            "fpr": np.concatenate([[0.0], (fps / fps[-1]).numpy()]),
            "tpr": np.concatenate([[0.0], (tps / tps[-1]).numpy()]),
            "auroc": auroc,
            "average_precision": ap,
        }
    return curves


def threshold_sweep(scores: torch.Tensor, positive: torch.Tensor) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of the positive class when `score >= t` means positive, at every distinct
    score t (the thresholds of precision_recall_curve)."""
    tps, fps, thresholds = _ranked(scores.cpu().double(), positive.cpu())
    npos = positive.sum().item()
    precision = (tps / (tps + fps)).numpy()
    recall = (tps / max(npos, 1)).numpy()
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
    return {"threshold": thresholds.numpy(), "precision": precision, "recall": recall, "f1": f1}


def best_f1_threshold(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The threshold of the highest F1 (the highest such threshold on a tie)."""
    sweep = threshold_sweep(scores, positive)
    return float(sweep["threshold"][int(np.argmax(sweep["f1"]))])


def scores_at(scores: torch.Tensor, positive: torch.Tensor, threshold: float) -> dict[str, float]:
    """The positive class's precision, recall and F1 when `score >= threshold` means positive."""
    pred, pos = scores.cpu() >= threshold, positive.cpu().bool()
    tp, fp, fn = (pred & pos).sum().item(), (pred & ~pos).sum().item(), (~pred & pos).sum().item()
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": round(float(threshold), 6), "precision": precision, "recall": recall, "f1": f1}


def most_confused(cm: np.ndarray, classes: list[str], top: int = 10) -> list[dict]:
    """The largest off-diagonal cells: which true class is taken for which, how often, and what share of
    that true class it is."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    support = cm.sum(1)
    cells = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {"true": classes[i], "predicted": classes[j], "count": n, "share": round(n / support[i], 4)} for n, i, j in cells[:top]
    ]
