"""dataset=csv: a user's own CSV file, on files the tests write. The features come out standardised with the
training split's statistics (held to scikit-learn's StandardScaler), text columns one-hot, the task follows the
target column, a `split` column is obeyed, and every bad file is one line naming the file and the row or column."""

import json

import numpy as np
import pytest
import torch
from helpers import compose_config, run_dlrun
from sklearn.preprocessing import StandardScaler

import dlrun
from dlrun.app.eval_cmd import evaluate_checkpoint
from dlrun.core.errors import DlrunError
from dlrun.data import load_data, make_loaders


def write_csv(path, header: str, rows: list[str]):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def table_config(path, target="y", *overrides):
    return compose_config("dataset=csv", f"dataset.path={path}", f"dataset.target={target}", *overrides)


def load(path, target="y", *overrides):
    cfg = table_config(path, target, *overrides)
    return load_data(cfg.dataset, cfg.seed, cfg.trainer.val_fraction)


def penguins(path, n=120, seed=0):
    """Three species told apart by two measurements; the island (text) is noise beside them."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = i % 3
        island, species = ["Biscoe", "Dream", "Torgersen"][int(rng.integers(3))], ["Adelie", "Chinstrap", "Gentoo"][k]
        rows.append(f"{40 + 6 * k + rng.normal():.2f},{190 + 12 * k + 2 * rng.normal():.1f},{island},{species}")
    return write_csv(path, "bill_length,flipper,island,species", rows)


def test_features_are_standardised_with_the_training_split_statistics(tmp_path):
    data = load(penguins(tmp_path / "p.csv"), "species")
    assert data.classes == ["Adelie", "Chinstrap", "Gentoo"]
    assert data.features == ("bill_length", "flipper", "island=Biscoe", "island=Dream", "island=Torgersen")
    assert (len(data.train), len(data.val), len(data.test)) == (86, 10, 24)  # test 20%, then val 10% of the rest
    raw = data.train.x[:, :2].double().numpy()
    scaler = StandardScaler().fit(raw)
    assert np.allclose(data.mean[:2], scaler.mean_) and np.allclose(data.std[:2], scaler.scale_)
    assert data.mean[2:] == (0.0,) * 3 and data.std[2:] == (1.0,) * 3  # one-hot columns stay 0/1
    assert torch.equal(data.train.x[:, 2:].sum(1), torch.ones(len(data.train)))
    # What the model sees: the training features at mean 0 and std 1, val and test moved by the same statistics.
    cfg = table_config(tmp_path / "p.csv", "species")
    train, _, test = make_loaders(data, cfg, "cpu")
    seen = torch.cat([x for x, _ in train])[:, :2].double().numpy()
    assert np.allclose(np.sort(seen, 0), np.sort(scaler.transform(raw), 0), atol=1e-5)
    served = torch.cat([x for x, _ in test])[:, :2].double().numpy()
    assert np.allclose(served, scaler.transform(data.test.x[:, :2].double().numpy()), atol=1e-5)


def test_categories_come_from_the_training_split_and_unseen_ones_are_zero(tmp_path):
    rows = [f"{i},{'a' if i % 2 else 'b'},{i % 2},train" for i in range(20)]
    rows += ["1,a,1,val", "2,b,0,val", "3,zz,1,test", "4,a,0,test"]
    data = load(write_csv(tmp_path / "s.csv", "x,kind,y,split", rows))
    assert data.features == ("x", "kind=a", "kind=b")
    assert (len(data.train), len(data.val), len(data.test)) == (20, 2, 2)  # the split column, obeyed
    assert data.test.x[0, 1:].tolist() == [0.0, 0.0]  # zz: never seen in training
    assert data.test.x[1, 1:].tolist() == [1.0, 0.0]


def test_the_split_column_leaves_missing_splits_to_the_seeded_draw(tmp_path):
    rows = [f"{i},{i % 2},train" for i in range(50)] + [f"{i},{i % 2},test" for i in range(10)]
    data = load(write_csv(tmp_path / "s.csv", "x,y,split", rows))
    assert (len(data.train), len(data.val), len(data.test)) == (45, 5, 10)
    assert sorted(data.test.x[:, 0].tolist()) == list(map(float, range(10)))


@pytest.mark.parametrize(
    ("values", "task", "classes"),
    [
        (["cat", "dog"], "classification", ["cat", "dog"]),
        (["2", "10", "1"], "classification", ["1", "2", "10"]),  # a few integers: classes, sorted as numbers
        ([str(i) for i in range(30)], "regression", None),  # more than 20 integers: amounts
        (["0.5", "1.25", "3.0"], "regression", None),
    ],
)
def test_the_task_follows_the_target_column(tmp_path, values, task, classes):
    rows = [f"{i},{values[i % len(values)]}" for i in range(60)]
    path = write_csv(tmp_path / "t.csv", "x,y", rows)
    cfg = table_config(path)
    assert cfg.task == task  # known when composing, so monitor and mode fit it
    data = load(path)
    assert data.task == task
    if classes:
        assert data.classes == classes
    else:
        assert data.train.y.dtype == torch.float32


def test_a_regression_target_is_scaled_with_the_training_statistics(tmp_path):
    rows = [f"{i},{1000 + 37.5 * i + (i % 7) * 11.25}" for i in range(80)]
    data = load(write_csv(tmp_path / "r.csv", "x,price", rows), "price")
    assert (data.task, data.classes) == ("regression", ["price"])
    raw = data.train.x[:, 0].double().numpy() * 37.5 + 1000 + (data.train.x[:, 0].double().numpy() % 7) * 11.25
    mean, std = data.target_scale
    assert (mean, std) == pytest.approx((raw.mean(), raw.std()))
    assert np.allclose(data.train.y.double().numpy() * std + mean, raw)


def test_dataset_task_overrides_the_column(tmp_path):
    path = write_csv(tmp_path / "t.csv", "x,y", [f"{i},{i % 3}" for i in range(30)])
    assert table_config(path, "y", "dataset.task=regression").task == "regression"
    assert load(path, "y", "dataset.task=regression").task == "regression"


def test_fill_mean_uses_the_training_mean_and_fill_drop_drops(tmp_path):
    rows = [f"{i},{i % 2},train" for i in range(10)] + [",0,train", "5,1,val", "6,0,test", "NA,1,test"]
    path = write_csv(tmp_path / "f.csv", "x,y,split", rows)
    data = load(path, "y", "dataset.fill=mean")
    assert data.train.x[-1, 0].item() == pytest.approx(4.5) and data.test.x[1, 0].item() == pytest.approx(4.5)
    assert data.mean[0] == pytest.approx(4.5)
    dropped = load(path, "y", "dataset.fill=drop")
    assert (len(dropped.train), len(dropped.test)) == (10, 1)


def test_imbalance_thins_a_csv_training_split_too(tmp_path):
    data = load(penguins(tmp_path / "p.csv", n=300), "species", "dataset.class_counts=[50,20,5]")
    assert torch.bincount(data.train.y).tolist() == [50, 20, 5]


def bad_cases(tmp_path):
    many = [f"{i},{i % 2}" for i in range(10)]
    write_csv(tmp_path / "ok.csv", "x,y", many)
    (tmp_path / "empty.csv").write_text("")
    write_csv(tmp_path / "header.csv", "x,y", [])
    write_csv(tmp_path / "text.csv", "x,y", [*many[:3], "abc,1", *many[3:]])
    write_csv(tmp_path / "hole.csv", "x,y", [*many[:4], ",1", *many[4:]])
    write_csv(tmp_path / "one.csv", "x,y", [f"{i},same" for i in range(10)])
    write_csv(tmp_path / "split.csv", "x,y,split", [f"{i},{i % 2},{'training' if i == 2 else 'train'}" for i in range(10)])
    with open(tmp_path / "huge.csv", "wb") as f:  # sparse: costs nothing on disk, refused by its size
        f.truncate(2 * 2**30 + 1)
    return [
        ("missing.csv", (), "missing.csv: no such file"),
        ("empty.csv", (), "empty.csv: the file is empty"),
        ("header.csv", (), "header.csv: only a header row, no data rows"),
        ("ok.csv", ("dataset.target=label",), "ok.csv has no such column; its columns: x, y"),
        ("text.csv", (), "text.csv: row 5, column x: 'abc' is not a finite number"),
        ("hole.csv", (), "hole.csv: row 6, column x: an empty cell (1 in all); set dataset.fill=mean"),
        ("one.csv", (), "one.csv: column y holds one class only (same)"),
        ("split.csv", (), "split.csv: row 4, column split: 'training' is not a split; allowed: train, val, test"),
        ("ok.csv", ("dataset.drop=[z]",), "ok.csv has no such column; its columns: x, y"),
        ("huge.csv", (), "huge.csv: 2.1 GB, more than the 2 GB dataset=csv reads; not read"),
    ]


def test_bad_files_are_one_line_naming_file_and_place(tmp_path):
    for name, overrides, expected in bad_cases(tmp_path):
        with pytest.raises(DlrunError) as err:
            load(tmp_path / name, "y", *overrides)
        message = str(err.value)
        assert expected in message, (name, message)
        assert "\n" not in message


def test_a_csv_classification_trains_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    penguins(tmp_path / "p.csv", n=150)
    overrides = ["dataset=csv", "dataset.path=p.csv", "dataset.target=species", "trainer.epochs=3", "logging.graph=false"]
    run = dlrun.train([*overrides, "hydra.run.dir=run"])
    assert run.status == "completed"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "csv" and metrics["test"]["accuracy"] > 0.5
    report = (tmp_path / "run" / "classification_report.csv").read_text()
    assert "Adelie" in report and "Gentoo" in report
    # dlrun eval reads the file again, encodes it as the run did and uses the run's statistics: the same scores.
    again = evaluate_checkpoint(tmp_path / "run", device="cpu")
    assert again["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


@pytest.mark.slow
def test_the_command_prints_the_line_and_exits(tmp_path):
    name, overrides, expected = bad_cases(tmp_path)[4]  # a text in a column of numbers
    proc = run_dlrun("train", "dataset=csv", f"dataset.path={name}", "dataset.target=y", *overrides, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("dlrun: error: ")
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_csv_regression_trains_with_the_tasks_own_loss_and_no_override(tmp_path, monkeypatch):
    """A table whose target is a number trains as a regression with MSE: no `loss=` needed."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    area = rng.uniform(40, 200, 200)
    rows = [f"{a:.1f},{1000 * a + rng.normal(0, 5000):.0f}" for a in area]
    write_csv(tmp_path / "h.csv", "area,price", rows)
    cfg = table_config(tmp_path / "h.csv", "price")
    assert (cfg.task, cfg.loss._target_) == ("regression", "dlrun.model.losses.task_loss")
    run = dlrun.train(["dataset=csv", "dataset.path=h.csv", "dataset.target=price", "trainer.epochs=15", "hydra.run.dir=run"])
    assert run.status == "completed"
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert test["r2"] > 0.5, test  # price is linear in area: far better than the mean predictor
    with pytest.raises(DlrunError, match=r"loss.class_weights=balanced: applies to a classification; this run is a regression"):
        dlrun.train(["dataset=csv", "dataset.path=h.csv", "dataset.target=price", "loss.class_weights=balanced"])
