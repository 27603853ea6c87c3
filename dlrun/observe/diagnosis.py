"""dlrun's verdict on a run's learning curves: whether it diverged, overfits, underfits, is still improving or fits
well, with the numbers behind the call and which config keys to change. It reads history.csv rows only (numpy, no
torch), so a finished run can be judged long after it ran.

The rules apply in this order, the first that matches wins: diverged, overfitting, underfitting, still_improving,
good_fit. Every threshold is a constant below; the README's "Reading the curves" section states the same rules."""

import math

import numpy as np

VERDICTS = ("overfitting", "underfitting", "still_improving", "good_fit", "diverged")

# diverged: a train or val loss above this many times its first-epoch value. A val loss counts only while the train
# loss is not below its own first value, since heavy overfitting can multiply the val loss too.
LOSS_EXPLODE_FACTOR = 10.0
# diverged: the train loss had fallen to at most this fraction of its first-epoch value and ends above that value.
TRAIN_RELAPSE_FRACTION = 0.5
# overfitting: each of the last OVERFIT_TAIL_EPOCHS val losses is at least (1 + OVERFIT_RISE) times the val-loss
# minimum, which lies before them, and the train loss ends below its value at the minimum's epoch.
OVERFIT_RISE = 0.10
OVERFIT_TAIL_EPOCHS = 2
# underfitting: the final train accuracy (and the val accuracy, when there is one) is below UNDERFIT_MAX_ACCURACY, and
# the train loss has fallen by less than UNDERFIT_FLAT_DROP of its value over at least the recent window.
UNDERFIT_MAX_ACCURACY = 0.80
UNDERFIT_MAX_R2 = 0.20  # a regression's: its train (and val) r2 below this
UNDERFIT_FLAT_DROP = 0.05
# The recent window: the last RECENT_FRACTION of the epochs, at least RECENT_MIN_EPOCHS, always leaving one before it.
RECENT_FRACTION = 0.2
RECENT_MIN_EPOCHS = 2
# still_improving: the best value in the recent window beats the best before it by more than this; scores (mode
# max) by an absolute SCORE_MIN_GAIN, losses (mode min) by LOSS_MIN_GAIN of the earlier best.
SCORE_MIN_GAIN = 0.002
LOSS_MIN_GAIN = 0.01

# The values the suggestions propose (the course's dropout range for wide layers starts at 0.3, its momentum at 0.5).
SUGGESTED_DROPOUT = 0.3
SUGGESTED_WEIGHT_DECAY = 1e-4
SUGGESTED_PATIENCE = 3
SUGGESTED_MOMENTUM = 0.5
SUGGESTED_HIDDEN_SIZES = "[256,256]"
LR_DOWN_FACTOR = 10
LR_UP_FACTOR = 3

LOSSES = {"train/loss": "train loss", "val/loss": "val loss"}
NO_EPOCH = {"verdict": None, "epoch": None, "reason": "no epoch finished", "suggestion": ""}


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class Curves:
    """history rows as one float array per column (NaN where a row lacks the value) and their epoch numbers."""

    def __init__(self, history: list[dict]):
        self.n = len(history)
        # history.csv read back gives epochs as floats; a row without one counts by its position
        epochs = [_float(row.get("epoch")) for row in history]
        self.epochs = [int(e) if math.isfinite(e) else i + 1 for i, e in enumerate(epochs)]
        keys = {k for row in history for k in row if k != "epoch"}
        self.columns = {k: np.array([_float(row.get(k)) for row in history], dtype=float) for k in keys}

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns.get(key, np.full(self.n, np.nan))

    def has(self, key: str) -> bool:
        return key in self.columns and bool(np.isfinite(self.columns[key]).any())

    def last(self, key: str) -> float:
        return float(self[key][-1]) if self.n else math.nan

    def window(self) -> int:
        return min(max(RECENT_MIN_EPOCHS, math.ceil(RECENT_FRACTION * self.n)), self.n - 1)

    def peak_lr(self) -> float | None:
        # each row holds the epoch's last lr; with warm-up and annealing the highest one is the configured lr
        lr = self["lr"]
        lr = lr[np.isfinite(lr) & (lr > 0)]
        return float(lr.max()) if lr.size else None


def _epochs(n: int) -> str:
    return "epoch" if n == 1 else f"{n} epochs"


def _result(verdict: str, epoch, reason: str, suggestion: str) -> dict:
    return {"verdict": verdict, "epoch": None if epoch is None else int(epoch), "reason": reason, "suggestion": suggestion}


def _accuracy_gap(c: Curves) -> str:
    train, val = c.last("train/accuracy"), c.last("val/accuracy")
    if not (math.isfinite(train) and math.isfinite(val)):
        return _rmse_gap(c)
    return f"; train accuracy {_fmt(train)} vs val {_fmt(val)} (gap {100 * (train - val):.1f} points)"


def _rmse_gap(c: Curves) -> str:
    """A regression's train-val gap, in the target's units."""
    train, val = c.last("train/rmse"), c.last("val/rmse")
    if not (math.isfinite(train) and math.isfinite(val)):
        return ""
    return f"; train rmse {_fmt(train)} vs val {_fmt(val)}"


def _lower_lr(c: Curves) -> str:
    lr = c.peak_lr()
    if lr is None:
        step = f"lower optimizer.lr (e.g. to 1/{LR_DOWN_FACTOR} of it)"
    else:
        step = f"lower optimizer.lr (e.g. optimizer.lr={lr / LR_DOWN_FACTOR:.3g}, 1/{LR_DOWN_FACTOR} of the {lr:.3g} it ran at)"
    return f"{step}, or clip gradients (trainer.grad_clip.max_norm=1)"


def _from_record(record: dict, c: Curves) -> dict:
    epoch = _float(record.get("epoch"))
    epoch = int(epoch) if math.isfinite(epoch) else None
    reason = f"{record.get('what', 'train loss')} became {record.get('value', 'non-finite')} at step {record.get('step')}"
    if epoch is not None:
        reason += f" (epoch {epoch})"
    last = record.get("last_finite")
    if isinstance(last, dict) and math.isfinite(_float(last.get("value"))):
        reason += f"; its last finite value was {_fmt(_float(last['value']))} at step {last.get('step')}"
    return _result("diverged", epoch, reason, _lower_lr(c))


def _non_finite(c: Curves) -> dict | None:
    bad = []
    for key, label in LOSSES.items():
        if key in c.columns and not np.isfinite(c.columns[key]).all():
            i = int(np.argmax(~np.isfinite(c.columns[key])))
            bad.append((i, label, c.columns[key][i]))
    if not bad:
        return None
    i, label, value = min(bad, key=lambda b: b[0])
    return _result("diverged", c.epochs[i], f"{label} is {value} at epoch {c.epochs[i]}", _lower_lr(c))


def _exploded(c: Curves) -> dict | None:
    train = c["train/loss"]
    for i in range(1, c.n):
        for key, label in LOSSES.items():
            first, value = c[key][0], c[key][i]
            # `not <` so that a run without train losses still counts a val explosion
            if first > 0 and value > LOSS_EXPLODE_FACTOR * first and not train[i] < train[0]:
                times = f"{value / first:.0f}x its first value {_fmt(first)}"
                reason = f"{label} reached {_fmt(value)} at epoch {c.epochs[i]}, {times}"
                return _result("diverged", c.epochs[i], reason, _lower_lr(c))
    return None


def _relapsed(c: Curves) -> dict | None:
    train = c["train/loss"]
    if c.n < 3 or not np.isfinite(train).all():
        return None
    low = int(np.argmin(train))
    if train[low] > TRAIN_RELAPSE_FRACTION * train[0] or train[-1] <= train[0]:
        return None
    i = low + int(np.argmax(train[low:] > train[0]))
    reason = (
        f"train loss climbed back to {_fmt(train[i])} at epoch {c.epochs[i]}, above its first {_fmt(train[0])}, "
        f"after falling to {_fmt(train[low])} at epoch {c.epochs[low]}"
    )
    return _result("diverged", c.epochs[i], reason, _lower_lr(c))


def _overfitting(c: Curves) -> dict | None:
    val, train = c["val/loss"], c["train/loss"]
    tail = OVERFIT_TAIL_EPOCHS
    if c.n <= tail or not np.isfinite(val).all():
        return None
    low = int(np.argmin(val))
    if low >= c.n - tail or (val[-tail:] < (1 + OVERFIT_RISE) * val[low]).any():
        return None
    if not train[-1] < train[low]:  # a train loss that rises too points at the optimizer, not at overfitting
        return None
    reason = (
        f"val loss rose {val[-1] / val[low] - 1:.0%} from its minimum {_fmt(val[low])} at epoch {c.epochs[low]} "
        f"to {_fmt(val[-1])} at epoch {c.epochs[-1]} while train loss fell from {_fmt(train[low])} to {_fmt(train[-1])}"
        f"{_accuracy_gap(c)}"
    )
    suggestion = (
        f"more dropout (model.dropout={SUGGESTED_DROPOUT}) or weight decay (optimizer.weight_decay={SUGGESTED_WEIGHT_DECAY:g}), "
        f"stop early (trainer.early_stopping.patience={SUGGESTED_PATIENCE}), or a smaller model"
    )
    return _result("overfitting", c.epochs[low], reason, suggestion)


def _plateau_start(loss: np.ndarray) -> int:
    """The first epoch index after which the loss never falls by UNDERFIT_FLAT_DROP of its value there."""
    for i in range(len(loss)):
        if loss[i] - loss[i:].min() < UNDERFIT_FLAT_DROP * abs(loss[i]):
            return i
    return len(loss) - 1


def _underfitting(c: Curves) -> dict | None:
    score, limit = ("accuracy", UNDERFIT_MAX_ACCURACY) if c.has("train/accuracy") else ("r2", UNDERFIT_MAX_R2)
    acc, val_acc, loss = c.last(f"train/{score}"), c.last(f"val/{score}"), c["train/loss"]
    if c.n < 2 or not math.isfinite(acc) or acc >= limit or val_acc >= limit:
        return None
    if not np.isfinite(loss).all():
        return None
    start = _plateau_start(loss)
    if start > c.n - 1 - c.window():  # still falling in the recent window: a short or slow run, not a stuck one
        return None
    drop = (loss[start] - loss[start:].min()) / loss[start]
    val_text = f" (val {_fmt(val_acc)})" if math.isfinite(val_acc) else ""
    reason = (
        f"train {score} is only {_fmt(acc)}{val_text} and train loss has fallen just {drop:.1%} "
        f"(under {UNDERFIT_FLAT_DROP:.0%}) since epoch {c.epochs[start]}, to {_fmt(loss[-1])}"
    )
    lr = c.peak_lr()
    lr_text = f" (e.g. optimizer.lr={lr * LR_UP_FACTOR:.3g}, {LR_UP_FACTOR}x the {lr:.3g} it ran at)" if lr else ""
    suggestion = (
        f"a bigger model (model.hidden_sizes={SUGGESTED_HIDDEN_SIZES}, or more model.channels for a CNN), "
        f"a higher optimizer.lr{lr_text} or momentum (optimizer.momentum={SUGGESTED_MOMENTUM}), "
        "or less dropout if model.dropout > 0"
    )
    return _result("underfitting", c.epochs[start], reason, suggestion)


def _needed_gain(mode: str, before: float) -> float:
    return SCORE_MIN_GAIN if mode == "max" else LOSS_MIN_GAIN * abs(before)


def _best_index(values: np.ndarray, mode: str) -> int:
    scored = np.where(np.isfinite(values), values if mode == "max" else -values, -np.inf)
    return int(np.argmax(scored))


def _recent_gain(values: np.ndarray, mode: str, window: int) -> tuple[int, float, float] | None:
    """(index of the recent best, the earlier best, the gain) when the last `window` epochs beat the earlier ones."""
    split = len(values) - window
    before_i, recent_i = _best_index(values[:split], mode), split + _best_index(values[split:], mode)
    before, best = values[before_i], values[recent_i]
    if not (math.isfinite(before) and math.isfinite(best)):
        return None
    gain = best - before if mode == "max" else before - best
    return (recent_i, float(before), float(gain)) if gain > _needed_gain(mode, before) else None


def _train_longer(c: Curves) -> str:
    return (
        f"train longer (trainer.epochs={2 * c.epochs[-1]}), "
        f"with trainer.early_stopping.patience={SUGGESTED_PATIENCE} to stop once it levels off"
    )


def _still_improving(c: Curves, monitor: str, mode: str) -> dict | None:
    if c.n == 1:
        reason = f"only one epoch: {monitor} is {_fmt(c.last(monitor))}, too early for a trend"
        return _result("still_improving", c.epochs[0], reason, _train_longer(c))
    window = c.window()
    # a falling val loss also says more epochs would help, when the monitor is a score that has flattened
    signals = [(monitor, mode)] + ([("val/loss", "min")] if monitor != "val/loss" and c.has("val/loss") else [])
    for key, key_mode in signals:
        found = _recent_gain(c[key], key_mode, window)
        if found is None:
            continue
        i, before, gain = found
        if key_mode == "max":
            change = f"rose to {_fmt(c[key][i])} at epoch {c.epochs[i]}, up {gain:.3g}"
        else:
            share = f" ({gain / abs(before):.0%})" if before else ""
            change = f"fell to {_fmt(c[key][i])} at epoch {c.epochs[i]}, down {gain:.3g}{share}"
        reason = f"{key} {change} on its best {_fmt(before)} up to epoch {c.epochs[c.n - window - 1]}"
        return _result("still_improving", c.epochs[i], reason, _train_longer(c))
    return None


def _good_fit_reason(c: Curves, monitor: str, mode: str, best: int) -> str:
    needed = f"{SCORE_MIN_GAIN:g}" if mode == "max" else f"{LOSS_MIN_GAIN:.0%}"
    reason = (
        f"{monitor} {'peaked' if mode == 'max' else 'reached its lowest'} at {_fmt(c[monitor][best])} at epoch {c.epochs[best]}, "
        f"with no gain above {needed} in the last {_epochs(c.window())}"
    )
    val = c["val/loss"]
    if monitor != "val/loss" and np.isfinite(val).all():
        low = int(np.argmin(val))
        if low == c.n - 1:
            reason += f"; val loss ends at its minimum {_fmt(val[low])}"
        else:
            rise = f"{val[-1] / val[low] - 1:.0%}"
            reason += f"; val loss ends at {_fmt(val[-1])}, {rise} above its minimum {_fmt(val[low])} at epoch {c.epochs[low]}"
    return reason + _accuracy_gap(c)


def _good_fit(c: Curves, monitor: str, mode: str) -> dict:
    best = _best_index(c[monitor], mode)
    stop, lr = c.epochs[best] + SUGGESTED_PATIENCE, c.peak_lr()
    if stop < c.epochs[-1]:
        suggestion = (
            f"nothing to fix; trainer.early_stopping.patience={SUGGESTED_PATIENCE} "
            f"would have stopped at epoch {stop}, keeping the same best"
        )
    elif lr is not None:
        sweep = f"{lr / LR_UP_FACTOR:.3g},{lr:.3g},{lr * LR_UP_FACTOR:.3g}"
        suggestion = f"nothing to fix; for more, sweep the lr around {lr:.3g} (dlrun train -m optimizer.lr={sweep})"
    else:
        suggestion = "nothing to fix; for more, sweep optimizer.lr around its current value (dlrun train -m optimizer.lr=...)"
    return _result("good_fit", c.epochs[best], _good_fit_reason(c, monitor, mode, best), suggestion)


def _pick_monitor(c: Curves, monitor: str, mode: str) -> tuple[str | None, str]:
    if c.has(monitor):
        return monitor, mode
    return next(((key, "min") for key in ("val/loss", "train/loss") if c.has(key)), (None, mode))


def diagnose(history: list[dict], monitor: str = "val/f1", mode: str = "max", diverged: dict | None = None) -> dict:
    """The verdict on a run from its history.csv rows (and the record of a non-finite loss that stopped it):
    {"verdict": one of VERDICTS (None for no epoch), "epoch": where it starts or the best one, "reason": the numbers
    behind it, "suggestion": what to change}. A monitor missing from history falls back to val/loss, then train/loss."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    c = Curves(history)
    if diverged is not None:
        return _from_record(diverged, c)
    if c.n == 0:
        return dict(NO_EPOCH)
    found = _non_finite(c) or _exploded(c) or _relapsed(c) or _overfitting(c) or _underfitting(c)
    if found is not None:
        return found
    monitor, mode = _pick_monitor(c, monitor, mode)
    if monitor is None:
        return {**NO_EPOCH, "reason": "no finite metric to judge"}
    return _still_improving(c, monitor, mode) or _good_fit(c, monitor, mode)


def describe(diagnosis: dict) -> str:
    """One console line: the verdict, where it starts, why, and what to try."""
    verdict, epoch = diagnosis.get("verdict"), diagnosis.get("epoch")
    if verdict is None:
        return f"verdict: none — {diagnosis.get('reason', '')}"
    where = {"overfitting": " from epoch", "underfitting": " from epoch", "diverged": " at epoch"}.get(verdict, ", best at epoch")
    line = f"verdict: {verdict}" + (f"{where} {epoch}" if epoch is not None else "")
    if diagnosis.get("reason"):
        line += f" — {diagnosis['reason']}"
    if diagnosis.get("suggestion"):
        line += f"; try: {diagnosis['suggestion']}"
    return line
