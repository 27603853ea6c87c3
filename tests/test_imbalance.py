"""The imbalance lesson: dataset.class_counts and dataset.imbalance thin out the training split only, and
experiment=imbalance puts test accuracy beside macro F1 and the rarest class's test recall."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dlrun
from dlrun.core.errors import DlrunError
from dlrun.data import load_data


def digits(*overrides):
    cfg = compose_config("dataset=digits", *overrides)
    return load_data(cfg.dataset, cfg.seed, cfg.trainer.val_fraction)


@pytest.fixture(scope="module")
def balanced():
    return digits()


def test_class_counts_keep_that_many_training_examples_and_leave_val_and_test(balanced):
    counts = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    thinned = digits(f"dataset.class_counts={counts}")
    assert torch.bincount(thinned.train.y, minlength=10).tolist() == counts
    assert torch.equal(thinned.val.x, balanced.val.x) and torch.equal(thinned.test.y, balanced.test.y)
    # The kept examples are training examples of their class, each once.
    rows = {tuple(x.flatten().tolist()): int(y) for x, y in zip(balanced.train.x, balanced.train.y)}
    assert all(rows.get(tuple(x.flatten().tolist())) == int(y) for x, y in zip(thinned.train.x, thinned.train.y))
    assert digits(f"dataset.class_counts={counts}").train.x.equal(thinned.train.x)  # seeded


def test_a_mapping_names_the_classes_to_thin(balanced):
    have = torch.bincount(balanced.train.y, minlength=10).tolist()
    thinned = digits('dataset.class_counts={"9": 5, "3": 7}')
    assert torch.bincount(thinned.train.y, minlength=10).tolist() == [*have[:3], 7, *have[4:9], 5]


def test_a_ratio_gives_a_long_tail(balanced):
    have = torch.bincount(balanced.train.y, minlength=10).numpy()
    kept = torch.bincount(digits("dataset.imbalance=0.1").train.y, minlength=10).numpy()
    assert kept.tolist() == np.maximum(1, np.round(have * 0.1 ** (np.arange(10) / 9))).astype(int).tolist()
    assert kept[0] == have[0] and kept[9] == round(have[9] * 0.1)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("dataset.class_counts=[1,2,3]", "must be a list of 10 counts, one per class"),
        ('dataset.class_counts={"9": 5000}', "class 9 has 135 training examples, fewer than the 5000 asked for"),
        ('dataset.class_counts={"ten": 5}', "names no class ten"),
        ("dataset.imbalance=1.5", "dataset.imbalance=1.5: must be a ratio in (0, 1]"),
        ("dataset.imbalance=0", "must be a ratio in (0, 1]"),
    ],
)
def test_bad_values_are_one_line(override, expected):
    with pytest.raises(DlrunError) as err:
        digits(override)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_the_experiment_composes_its_three_remedies():
    with initialize_config_module("dlrun.configs", version_base="1.3"):
        base = compose("train", overrides=["experiment=imbalance"], return_hydra_config=True)
        losses = {
            r: compose("train", overrides=["experiment=imbalance", f"remedy={r}"]).loss for r in ("none", "balanced", "focal")
        }
    assert base.hydra.sweeper.params == {"remedy": "none,balanced,focal"}
    assert base.dataset.name == "digits" and base.dataset.class_counts == {"9": 5}
    assert list(base.hydra.callbacks.sweep_summary.columns) == ["test/accuracy", "test/f1", "test/recall_rarest"]
    assert losses["none"]._target_.endswith("CrossEntropy") and losses["none"].class_weights is None
    assert losses["balanced"]._target_.endswith("CrossEntropy") and losses["balanced"].class_weights == "balanced"
    assert losses["focal"]._target_.endswith("FocalLoss")


def test_the_experiment_shows_the_rarest_class_recall(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quiet = ["logging.graph=false", "logging.confusion_matrix_every=0"]
    rows = dlrun.sweep(["experiment=imbalance", "debug=fast", *quiet, "hydra.sweep.dir=sweep"])
    assert sorted(row["remedy"] for row in rows) == ["balanced", "focal", "none"]
    for row in rows:
        assert {"test/accuracy", "test/f1", "test/recall_rarest"} <= set(row)
        run_dir = Path("sweep") / row["path"]
        # The rarest class is 9 (5 training examples): its recall from the test confusion matrix itself.
        cm = np.loadtxt(run_dir / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, 11))
        assert row["test/recall_rarest"] == pytest.approx(cm[9, 9] / cm[9].sum(), abs=1e-6)
    # Digits are not 2-D: no decision boundary, as a file or in TensorBoard.
    assert not list(Path("sweep").glob("*/decision_boundary.png"))
    events = EventAccumulator(str(Path("sweep") / rows[0]["path"]), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] and not any(tag.startswith("boundary/") for tag in events.Tags()["images"])
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "test recall of the rarest class" in summary
