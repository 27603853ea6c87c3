"""The verdict on a run's learning curves, from constructed history.csv rows."""

import json
import math
import subprocess
import sys

import pytest

from dlrun.observe.diagnosis import VERDICTS, describe, diagnose

NAN, INF = math.nan, math.inf


def history(train_loss, val_loss, train_acc=None, val_acc=None, val_f1=None, lr=None, **extra):
    """history.csv rows; scores default to a steady 0.95 so that only the losses shape the verdict."""
    n = len(train_loss)
    train_acc = train_acc or [0.95] * n
    val_acc = val_acc or [0.94] * n
    val_f1 = val_f1 or [0.94] * n
    rows = []
    for i in range(n):
        row = {
            "epoch": i + 1,
            "train/loss": train_loss[i],
            "val/loss": val_loss[i],
            "train/accuracy": train_acc[i],
            "val/accuracy": val_acc[i],
            "train/f1": train_acc[i],
            "val/f1": val_f1[i],
            "time_s": 1.5 * (i + 1),
        }
        if lr is not None:
            row["lr"] = lr
        row.update({k: v[i] for k, v in extra.items()})
        rows.append(row)
    return rows


def falling(n, start=0.5, rate=0.6):
    return [start * rate**i for i in range(n)]


# 20 epochs: the val loss bottoms out at 0.081 in epoch 9 and climbs 40% to 0.113, the train loss keeps falling
OVERFIT_VAL = [0.3, 0.2, 0.15, 0.12, 0.1, 0.095, 0.09, 0.085, 0.081, 0.082]
OVERFIT_VAL += [0.085, 0.088, 0.09, 0.095, 0.1, 0.102, 0.105, 0.108, 0.11, 0.113]


def check(result, verdict, epoch):
    assert result["verdict"] == verdict, result
    assert result["epoch"] == epoch, result
    assert verdict is None or verdict in VERDICTS
    assert json.loads(json.dumps(result)) == result
    assert type(result["epoch"]) in (int, type(None))
    return result


# --- overfitting


def test_overfitting_names_the_val_loss_minimum_and_the_numbers():
    train_acc = [0.9 + 0.005 * i for i in range(20)]
    result = check(diagnose(history(falling(20), OVERFIT_VAL, train_acc=train_acc, val_acc=[0.96] * 20)), "overfitting", 9)
    for text in ("40%", "0.081", "epoch 9", "0.113", "epoch 20", "train loss fell", "gap 3.5 points"):
        assert text in result["reason"]
    for key in ("model.dropout=0.3", "optimizer.weight_decay=0.0001", "trainer.early_stopping.patience=3"):
        assert key in result["suggestion"]


def test_overfitting_from_an_early_minimum_and_rows_read_back_as_floats():
    val = [0.5, 0.4, 0.6, 0.7, 0.8, 0.9]
    rows = [{k: float(v) for k, v in row.items()} for row in history(falling(6), val)]
    result = check(diagnose(rows, monitor="val/loss", mode="min"), "overfitting", 2)
    assert "125%" in result["reason"] and "0.4 at epoch 2" in result["reason"]


def test_overfitting_threshold_is_ten_percent_for_each_of_the_last_two_epochs():
    base = [0.5, 0.3, 0.2, 0.15, 0.1]
    check(diagnose(history(falling(7), base + [0.111, 0.112])), "overfitting", 5)
    assert diagnose(history(falling(7), base + [0.109, 0.112]))["verdict"] != "overfitting"
    # one spike at the end is noise, not a trend
    assert diagnose(history(falling(7), base + [0.101, 0.14]))["verdict"] != "overfitting"


def test_noisy_but_flat_val_loss_is_a_good_fit():
    flat = [0.3, 0.2, 0.15, 0.1, 0.104, 0.097, 0.103, 0.099, 0.105, 0.098, 0.102, 0.1, 0.104, 0.099, 0.103, 0.1, 0.101]
    n = len(flat)
    f1 = [0.9, 0.95, 0.96] + [0.97] * (n - 3)
    result = check(diagnose(history(falling(n), flat, val_f1=f1)), "good_fit", 4)
    assert "0.097 at epoch 6" in result["reason"] and "4% above" in result["reason"]


def test_val_loss_rising_with_the_train_loss_is_not_overfitting():
    train = [0.5, 0.3, 0.2, 0.25, 0.3, 0.35]
    val = [0.5, 0.3, 0.2, 0.3, 0.35, 0.4]
    assert diagnose(history(train, val))["verdict"] != "overfitting"


# --- underfitting


def test_underfitting_when_stuck_at_chance_suggests_capacity_and_a_higher_lr():
    n = 6
    rows = history([2.35, 2.30, 2.30, 2.301, 2.299, 2.30], [2.30] * n, [0.11] * n, [0.1] * n, [0.05] * n, lr=0.001)
    result = check(diagnose(rows), "underfitting", 1)
    assert "0.11" in result["reason"] and "since epoch 1" in result["reason"]
    assert "model.hidden_sizes=" in result["suggestion"]
    assert "optimizer.lr=0.003" in result["suggestion"] and "optimizer.momentum=0.5" in result["suggestion"]


def test_underfitting_after_an_early_plateau_names_where_it_flattened():
    train = [1.8, 1.5, 1.4, 1.3, 1.25, 1.24, 1.24, 1.23, 1.235, 1.23]
    acc = [0.3, 0.38, 0.42, 0.44, 0.45, 0.45, 0.45, 0.46, 0.45, 0.46]
    result = check(diagnose(history(train, [t + 0.05 for t in train], acc, [a - 0.02 for a in acc], acc)), "underfitting", 5)
    assert "0.46" in result["reason"] and "0.44" in result["reason"]


def test_a_short_run_with_a_falling_loss_is_still_improving_not_underfitting():
    rows = history([1.0, 0.5], [0.6, 0.45], [0.6, 0.7], [0.65, 0.72], [0.6, 0.7])
    result = check(diagnose(rows), "still_improving", 2)
    assert "trainer.epochs=4" in result["suggestion"]


def test_low_accuracy_with_a_steadily_falling_loss_is_still_improving():
    n = 12
    acc = [0.3 + 0.03 * i for i in range(n)]
    rows = history(falling(n, 2.0, 0.93), falling(n, 2.1, 0.93), acc, acc, acc)
    check(diagnose(rows), "still_improving", n)


def test_a_high_accuracy_plateau_is_not_underfitting():
    n = 8
    check(diagnose(history([0.3, 0.1] + [0.05] * (n - 2), [0.2, 0.12] + [0.1] * (n - 2))), "good_fit", 1)


# --- still improving


def test_still_improving_on_a_score_names_the_best_epoch_and_the_gain():
    n = 10
    f1 = [0.5 + 0.04 * i for i in range(n)]
    result = check(diagnose(history(falling(n), falling(n, 0.6, 0.8), val_f1=f1)), "still_improving", 10)
    assert "0.86 at epoch 10" in result["reason"] and "up 0.08" in result["reason"] and "up to epoch 8" in result["reason"]
    assert "trainer.epochs=20" in result["suggestion"]


def test_a_loss_monitor_counts_a_relative_gain():
    n = 10
    val = [0.5, 0.4, 0.35, 0.32, 0.3, 0.29, 0.285, 0.282, 0.281, 0.27]
    result = check(diagnose(history(falling(n), val), monitor="val/loss", mode="min"), "still_improving", 10)
    assert "0.27" in result["reason"] and "(4%)" in result["reason"]
    # under 1% of the earlier best is no gain
    val[-1] = 0.2795
    assert diagnose(history(falling(n), val), monitor="val/loss", mode="min")["verdict"] == "good_fit"


def test_a_train_monitor_and_a_monitor_missing_from_history():
    n = 6
    rows = history(falling(n), [0.3, 0.2, 0.2, 0.2, 0.2, 0.2])
    check(diagnose(rows, monitor="train/loss", mode="min"), "still_improving", 6)
    # no such column: the val loss is judged instead
    result = check(diagnose(rows, monitor="val/top5"), "good_fit", 2)
    assert "val/loss" in result["reason"]


def test_a_falling_val_loss_counts_when_the_score_has_flattened():
    result = check(diagnose(history([1.0, 0.5], [0.06, 0.045], val_f1=[0.985, 0.984])), "still_improving", 2)
    assert result["reason"].startswith("val/loss fell to 0.045")


def test_one_epoch_is_still_improving():
    result = check(diagnose(history([0.5], [0.3], val_f1=[0.97])), "still_improving", 1)
    assert "0.97" in result["reason"] and "trainer.epochs=2" in result["suggestion"]


# --- good fit


def test_good_fit_says_early_stopping_would_have_saved_epochs():
    n = 20
    f1 = [0.9, 0.95, 0.97, 0.975, 0.978, 0.98] + [0.981] * (n - 6)
    f1[13] = 0.982
    val = [0.3, 0.2, 0.15, 0.1, 0.09, 0.08] + [0.079] * (n - 6)
    result = check(diagnose(history(falling(n, 0.5, 0.9), val, val_f1=f1)), "good_fit", 14)
    assert "0.982 at epoch 14" in result["reason"]
    assert "trainer.early_stopping.patience=3 would have stopped at epoch 17" in result["suggestion"]


def test_good_fit_ending_near_its_best_suggests_an_lr_sweep():
    f1 = [0.9, 0.95, 0.97, 0.971, 0.971]
    result = check(diagnose(history(falling(5), [0.3, 0.2, 0.1, 0.1, 0.1], val_f1=f1, lr=0.1)), "good_fit", 4)
    assert "less than" not in result["reason"] and "no gain above 0.002 in the last 2" in result["reason"]
    assert "optimizer.lr=0.0333,0.1,0.3" in result["suggestion"]


# --- diverged


def test_a_divergence_record_wins_and_the_lr_column_sets_the_suggestion():
    record = {"step": 412, "epoch": 3, "what": "train loss", "value": "nan", "last_finite": {"step": 400, "value": 2.31}}
    rows = history([1.0, 0.5], [0.6, 0.45], lr=0.2)
    result = check(diagnose(rows, diverged=record), "diverged", 3)
    assert "step 412" in result["reason"] and "2.31 at step 400" in result["reason"]
    assert "optimizer.lr=0.02" in result["suggestion"]
    # before any epoch finished: still diverged, and without an lr column the suggestion has no number
    result = check(diagnose([], diverged={"step": 7, "epoch": 1}), "diverged", 1)
    assert "1/10" in result["suggestion"]


@pytest.mark.parametrize("column", ["train/loss", "val/loss"])
@pytest.mark.parametrize("value", [NAN, INF])
def test_a_non_finite_loss_is_diverged(column, value):
    rows = history(falling(4), falling(4, 0.6))
    rows[2][column] = value
    result = check(diagnose(rows), "diverged", 3)
    assert str(value) in result["reason"]


def test_nan_outside_the_losses_is_not_diverged():
    rows = history(falling(4), falling(4, 0.6, 0.8), val_f1=[0.8, 0.85, 0.9, 0.95], **{"val/precision": [NAN] * 4})
    rows[1]["lr"] = NAN
    check(diagnose(rows), "still_improving", 4)


def test_an_exploding_loss_is_diverged_but_an_overfit_val_loss_is_not():
    result = check(diagnose(history([0.5, 0.4, 0.6, 3.0], [0.4, 0.35, 1.0, 5.0], lr=0.5)), "diverged", 4)
    assert result["reason"] == "val loss reached 5 at epoch 4, 12x its first value 0.4"
    assert "optimizer.lr=0.05" in result["suggestion"] and "trainer.grad_clip.max_norm=1" in result["suggestion"]
    # the val loss grows 12x while the train loss falls to nothing: overfitting
    val = [0.1, 0.09, 0.3, 0.6, 0.9, 1.2]
    check(diagnose(history(falling(6, 0.5, 0.1), val)), "overfitting", 2)


def test_a_train_loss_back_above_its_first_value_is_diverged():
    result = check(diagnose(history([0.8, 0.3, 0.2, 0.5, 0.9], [0.7, 0.3, 0.25, 0.6, 1.0])), "diverged", 5)
    assert "0.2 at epoch 3" in result["reason"]


# --- the rest


def test_empty_history():
    assert diagnose([]) == {"verdict": None, "epoch": None, "reason": "no epoch finished", "suggestion": ""}
    assert describe(diagnose([])) == "verdict: none — no epoch finished"


def test_describe_is_one_line_with_the_verdict_the_reason_and_the_suggestion():
    line = describe(diagnose(history(falling(20), OVERFIT_VAL)))
    assert line.startswith("verdict: overfitting from epoch 9 — val loss rose 40%")
    assert "; try: more dropout" in line and "\n" not in line
    assert describe(diagnose(history([0.5], [0.3]))).startswith("verdict: still_improving, best at epoch 1 — ")


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        diagnose(history([0.5], [0.3]), mode="maximum")


def test_it_imports_without_torch():
    code = "import sys, dlrun.observe.diagnosis; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
