"""End to end: short `dlrun train` runs on digits through the installed entry point, and every artefact
of the run directory read back the way a user (or TensorBoard) reads it."""

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import needs_cuda, run_dlrun
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from dlrun.data import load_data
from dlrun.engine import checkpoint

pytestmark = pytest.mark.slow

METRICS = ("loss", "accuracy", "precision", "recall", "f1")
# Few epochs: enough for the loss to fall. On the CPU, where the same seed must give the same numbers.
RUNS = {
    "mlp": ["model=mlp", "trainer.epochs=3", "device=cpu"],
    "cnn": ["model=cnn", "trainer.epochs=2", "device=cpu"],
}


@dataclass
class FinishedRun:
    dir: Path
    stdout: str
    stderr: str
    epochs: int


_finished: dict[str, FinishedRun] = {}


def finished_run(name: str, tmp_path_factory, repeat: int = 0) -> FinishedRun:
    """Run `dlrun train` with RUNS[name] once per session; the tensorboard server test shares these runs.

    All of them land in one folder, as runs land in outputs/ (`repeat` makes another run of the same config)."""
    key = f"{name}-{repeat}" if repeat else name
    if key not in _finished:
        root = next(iter(_finished.values())).dir.parent if _finished else tmp_path_factory.mktemp("runs")
        run_dir = root / key
        proc = run_dlrun("train", *RUNS[name], f"hydra.run.dir={run_dir}", cwd=root)
        epochs = int(next(a for a in RUNS[name] if a.startswith("trainer.epochs=")).split("=")[1])
        _finished[key] = FinishedRun(run_dir, proc.stdout, proc.stderr, epochs)
    return _finished[key]


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory) -> FinishedRun:
    return finished_run(request.param, tmp_path_factory)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_run_directory_holds_every_artefact(run):
    for name in (
        "metrics.json",
        "history.csv",
        "best.pt",
        "last.pt",
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "curves.png",
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
    ):
        assert (run.dir / name).is_file(), f"{name} missing from {run.dir}"
    logs = list(run.dir.glob("*.log"))
    assert logs and "epoch 1/" in logs[0].read_text()
    # One run in TensorBoard: the event file sits in the run directory itself, not a timestamped subfolder.
    event_files = list(run.dir.rglob("events.out.tfevents.*"))
    assert event_files and all(f.parent == run.dir for f in event_files)


def test_composed_config_is_saved(run):
    cfg = OmegaConf.load(run.dir / ".hydra" / "config.yaml")
    assert cfg.trainer.epochs == run.epochs
    assert cfg.dataset.name == "digits"
    assert cfg.model._target_.endswith({"mlp": "MLP", "cnn": "CNN"}[run.dir.name])


def test_metrics_json(run):
    metrics = read_metrics(run.dir)
    assert metrics["status"] == "completed"
    assert metrics["device"] == "cpu"
    assert metrics["seed"] == OmegaConf.load(run.dir / ".hydra" / "config.yaml").seed
    assert metrics["wall_time_s"] > 0
    assert metrics["test"]["loss"] > 0
    for m in METRICS:
        assert f"val/{m}" in metrics["best"]
        assert m == "loss" or 0 <= metrics["test"][m] <= 1
    history = read_history(run.dir)
    best_epoch = max(history, key=lambda row: float(row["val/f1"]))["epoch"]  # the default monitor
    assert metrics["best"]["epoch"] == int(best_epoch)
    best_row = history[int(best_epoch) - 1]
    assert metrics["best"]["val/f1"] == pytest.approx(float(best_row["val/f1"]))
    assert metrics["test"]["accuracy"] > 0.5, "a few epochs on digits learn far better than chance"


def test_history_has_one_row_per_epoch(run):
    history = read_history(run.dir)
    assert [int(row["epoch"]) for row in history] == list(range(1, run.epochs + 1))
    for split in ("train", "val"):
        for m in METRICS:
            assert all(row[f"{split}/{m}"] != "" for row in history)
    assert float(history[-1]["train/loss"]) < float(history[0]["train/loss"])


def test_checkpoints_reload_safely_and_reproduce_the_test_accuracy(run):
    metrics = read_metrics(run.dir)
    best, last = checkpoint.load(run.dir / "best.pt"), checkpoint.load(run.dir / "last.pt")
    raw = torch.load(run.dir / "best.pt", map_location="cpu", weights_only=True)
    assert raw["epoch"] == best["epoch"] == metrics["best"]["epoch"]
    assert last["epoch"] == run.epochs
    for state in (best, last):
        assert state["model"] and state["optimizer"]["param_groups"]

    # A user's own evaluation of best.pt: fresh model, the split from the saved config, the stored normalisation.
    cfg = OmegaConf.load(run.dir / ".hydra" / "config.yaml")
    data = load_data(cfg.dataset, cfg.seed, cfg.trainer.val_fraction)
    model = instantiate(cfg.model, in_shape=tuple(best["in_shape"]), num_classes=len(best["classes"]))
    model.load_state_dict(best["model"])
    model.eval()
    mean = torch.tensor(best["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(best["std"]).view(1, -1, 1, 1)
    # In the precision the run evaluated in (bf16 autocast on CPUs that run it natively): near-ties then agree.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(metrics.get("precision"))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        predicted = model((data.test.x.float() / 255 - mean) / std).argmax(dim=1)
    accuracy = (predicted == data.test.y).float().mean().item()
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-5)

    counts = np.zeros((len(best["classes"]),) * 2, dtype=int)
    np.add.at(counts, (data.test.y.numpy(), predicted.numpy()), 1)
    assert np.array_equal(counts, read_confusion(run.dir)[1])


def read_confusion(run_dir: Path) -> tuple[list[str], np.ndarray]:
    with open(run_dir / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    classes = header[1:]
    assert [row[0] for row in body] == classes, "rows are the true classes, in header order"
    return classes, np.array([[int(v) for v in row[1:]] for row in body])


def test_confusion_matrix_matches_the_test_metrics(run):
    classes, cm = read_confusion(run.dir)
    assert classes == [str(i) for i in range(10)]
    assert cm.sum() == 359  # digits: 1,797 images, 20% held out as the test set
    metrics = read_metrics(run.dir)
    assert np.trace(cm) / cm.sum() == pytest.approx(metrics["test"]["accuracy"], abs=1e-5)


@pytest.mark.parametrize("name", ["confusion_matrix.png", "curves.png"])
def test_figures_are_valid_pngs(run, name):
    with Image.open(run.dir / name) as image:
        image.verify()
    with Image.open(run.dir / name) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > height >= 200  # side-by-side panels


def test_event_files_hold_the_scalars(run):
    acc = events(run.dir)
    scalars = set(acc.Tags()["scalars"])
    expected = {f"{split}/{m}" for split in ("train", "val", "test") for m in METRICS}
    expected |= {"train/lr", "train/loss_step"}
    assert expected <= scalars, f"missing {expected - scalars}"
    train_loss = [e.value for e in acc.Scalars("train/loss")]
    assert len(train_loss) == run.epochs and train_loss[-1] < train_loss[0]
    steps = [e.value for e in acc.Scalars("train/loss_step")]
    assert len(steps) > run.epochs
    quarter = max(1, len(steps) // 4)
    assert np.mean(steps[-quarter:]) < np.mean(steps[:quarter])
    assert len(acc.Scalars("train/lr")) == len(steps)
    # The event files and history.csv tell the same story.
    history = read_history(run.dir)
    assert [e.value for e in acc.Scalars("val/f1")] == pytest.approx([float(r["val/f1"]) for r in history], abs=1e-5)
    test_accuracy = acc.Scalars("test/accuracy")
    assert len(test_accuracy) == 1
    assert test_accuracy[0].value == pytest.approx(read_metrics(run.dir)["test"]["accuracy"], abs=1e-5)


def test_custom_scalars_chart_each_split_of_each_metric_on_its_own(run):
    acc = events(run.dir)
    (event,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {tuple(chart.multiline.tag) for category in layout.category for chart in category.chart}
    for m in METRICS:
        assert (f"^train/{m}$",) in charts and (f"^val/{m}$",) in charts, m
    tags = acc.Tags()["scalars"]
    for (pattern,) in (c for c in charts if c):
        assert len([t for t in tags if re.search(pattern, t)]) <= 1, f"{pattern} matches one tag at most"


def test_the_graph_tab_holds_the_model_as_add_graph_draws_it(run, tmp_path):
    """dlrun traces once (add_graph's self-check would run the model twice more and import sympy): the
    Graphs tab still gets the very graph SummaryWriter.add_graph writes for the same model."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard._pytorch_graph import GraphDef

    written = GraphDef.FromString(events(run.dir).Graph().SerializeToString())
    cfg, best = OmegaConf.load(run.dir / ".hydra" / "config.yaml"), checkpoint.load(run.dir / "best.pt")
    model = instantiate(cfg.model, in_shape=tuple(best["in_shape"]), num_classes=len(best["classes"])).eval()
    with SummaryWriter(tmp_path) as writer:
        writer.add_graph(model, torch.zeros(1, *best["in_shape"]))
    expected = EventAccumulator(str(tmp_path))
    expected.Reload()
    assert [(n.name, n.op) for n in written.node] == [(n.name, n.op) for n in expected.Graph().node]
    assert any(n.op.startswith("aten::linear") or n.op == "aten::addmm" or "conv" in n.op for n in written.node)


def test_confusion_matrix_images(run):
    acc = events(run.dir)
    val = acc.Images("val/confusion_matrix")
    assert [image.step for image in val] == list(range(1, run.epochs + 1))
    (test,) = acc.Images("test/confusion_matrix")
    assert test.encoded_image_string.startswith(b"\x89PNG")


def test_hparams_hold_the_main_config_keys_typed(run):
    acc = events(run.dir)
    content = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" not in content, "TensorBoard works out the experiment over all runs"
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    cfg = OmegaConf.load(run.dir / ".hydra" / "config.yaml")
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(cfg.optimizer.lr)
    assert start.hparams["trainer.epochs"].number_value == run.epochs
    assert start.hparams["model"].string_value in ("MLP", "CNN")
    assert "dataset.epochs" not in start.hparams and not any(k.startswith("paths.") for k in start.hparams)
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS


def test_piped_output_is_plain_and_ends_with_where_to_look(run):
    assert "\x1b" not in run.stdout + run.stderr
    assert not re.search(r"Traceback|Error", run.stdout + run.stderr)
    last = run.stdout.strip().splitlines()[-2:]
    assert str(run.dir) in last[0]
    assert f"tensorboard --logdir {run.dir}" in last[1]
    assert re.search(r"^epoch 1/\d+ ", run.stdout, re.MULTILINE), "one plain line per epoch"


def test_same_seed_twice_on_cpu_gives_identical_metrics(tmp_path_factory):
    first = finished_run("mlp", tmp_path_factory)
    again = finished_run("mlp", tmp_path_factory, repeat=1)
    assert read_metrics(again.dir)["test"] == read_metrics(first.dir)["test"]
    assert read_metrics(again.dir)["best"] == read_metrics(first.dir)["best"]

    def without_timing(history):
        return [{k: v for k, v in row.items() if k != "time_s"} for row in history]

    assert without_timing(read_history(again.dir)) == without_timing(read_history(first.dir))


@needs_cuda
def test_cuda_run_and_its_checkpoint_load_on_cpu(tmp_path):
    run_dir = tmp_path / "cuda"
    run_dlrun("train", "model=cnn", "device=cuda", "device.index=0", "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["device"].startswith("cuda")
    state = checkpoint.load(run_dir / "best.pt", map_location="cpu")
    assert all(t.device.type == "cpu" for t in state["model"].values())
    classes, cm = read_confusion(run_dir)
    assert np.trace(cm) / cm.sum() == pytest.approx(metrics["test"]["accuracy"], abs=1e-5)
