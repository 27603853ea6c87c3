"""The `debug` group: `debug=fast` runs a few batches of every phase and writes every file of a run;
`debug=overfit` trains on one fixed batch until the model has learned it by heart."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dlrun
from dlrun.core.errors import DlrunError
from dlrun.engine import checkpoint

QUIET = ["device=cpu", "logging.graph=false"]


def step_curve(run_dir) -> list[int]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [event.step for event in acc.Scalars("train/loss_step")]


def test_debug_fast_runs_five_batches_of_each_phase_and_writes_every_file(tmp_path):
    run = dlrun.train(["debug=fast", *QUIET, "trainer.eval_batch_size=32", f"hydra.run.dir={tmp_path}"])
    assert run.status == "completed"
    assert [row["epoch"] for row in run.history] == [1.0]
    assert step_curve(tmp_path) == [1, 2, 3, 4, 5]
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 5
    for name in ("best.pt", "history.csv", "metrics.json", "confusion_matrix.png", "classification_report.csv"):
        assert (tmp_path / name).is_file(), name
    with open(tmp_path / "confusion_matrix.csv") as f:
        counts = [int(c) for line in f.readlines()[1:] for c in line.strip().split(",")[1:]]
    assert sum(counts) == 5 * 32, "the test phase, too, ran 5 batches"


def test_debug_overfit_learns_one_batch_by_heart(tmp_path):
    run = dlrun.train(["debug=overfit", *QUIET, f"hydra.run.dir={tmp_path}"])
    last = run.history[-1]
    assert len(run.history) == 50
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 50, "one batch: one step per epoch"
    assert last["train/accuracy"] == 1.0 and last["val/accuracy"] == 1.0, "validated on the same batch"
    assert last["train/loss"] < 0.1 < run.history[0]["train/loss"]


@pytest.mark.parametrize("key, value", [("trainer.limit_batches", 0), ("trainer.overfit_batches", -1)])
def test_bad_debug_keys_name_the_key(key, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DlrunError, match=rf"^{key}={value}: must be an integer >= "):
        dlrun.train([f"{key}={value}"])
