"""The real TensorBoard server, over finished runs (and over the same runs as a sweep), read through its HTTP
API as the browser reads it: runs and scalar tags, the Custom Scalars charts, HParams, PR curves."""

import contextlib
import csv
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_train_run import RUNS, finished_run, read_history

from dlrun.config.schema import METRIC_NAMES
from dlrun.observe.dashboards import HPARAM_METRICS, write_sweep_experiment

pytestmark = pytest.mark.slow

LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TENSORBOARD = shutil.which("tensorboard", path=str(Path(sys.executable).parent)) or "tensorboard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, post: dict | None = None):
    request = urllib.request.Request(url)
    if post is not None:  # the hparams plugin answers JSON-encoded requests, as the browser sends them
        request = urllib.request.Request(
            url,
            data=json.dumps(post).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
        )
    # No proxy: urllib caches its first opener, with whatever proxy settings an earlier test had set.
    with LOCAL.open(request, timeout=5) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def tensorboard(logdir: Path, runs: set[str], log: Path):
    """`tensorboard --logdir logdir` on a free local port, up once it lists `runs`; its base URL."""
    port = free_port()
    with open(log, "w") as server_log:
        proc = subprocess.Popen(
            [TENSORBOARD, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
            stdout=subprocess.DEVNULL,
            stderr=server_log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        # Up once it answers and has loaded every run (the first load is asynchronous).
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"tensorboard exited with {proc.returncode}: {log.read_text()}"
            try:
                if runs <= set(get_json(f"{base}/data/runs")):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not list the runs within 60 s"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = [finished_run(name, tmp_path_factory) for name in RUNS]
    logdir = runs[0].dir.parent  # like `tensorboard --logdir outputs`: one subfolder per run
    with tensorboard(logdir, {r.dir.name for r in runs}, tmp_path_factory.mktemp("tensorboard") / "server.log") as base:
        yield base, runs


@pytest.fixture(scope="module")
def sweep_server(server, tmp_path_factory):
    """The same runs as the jobs of a sweep whose callback wrote the sweep's experiment."""
    _, runs = server
    sweep_dir = tmp_path_factory.mktemp("sweep")
    for run in runs:
        (sweep_dir / run.dir.name).mkdir()
        for path in [*run.dir.glob("events.out.tfevents.*"), run.dir / "metrics.json", run.dir / "history.csv"]:
            shutil.copy(path, sweep_dir / run.dir.name)
    write_sweep_experiment(sweep_dir)
    with tensorboard(sweep_dir, {r.dir.name for r in runs}, tmp_path_factory.mktemp("tensorboard") / "sweep.log") as base:
        yield base, [sweep_dir / r.dir.name for r in runs]


def session_groups(base: str) -> dict[str, dict]:
    query = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "colParams": [], "startIndex": 0, "sliceSize": 100}
    return {g["name"]: g for g in get_json(f"{base}/data/plugin/hparams/session_groups", post=query)["sessionGroups"]}


def experiment(base: str) -> dict:
    return get_json(f"{base}/data/plugin/hparams/experiment", post={"experimentName": ""})


def test_server_lists_runs_and_scalar_tags(server):
    base, runs = server
    assert {r.dir.name for r in runs} <= set(get_json(f"{base}/data/runs"))
    tags = get_json(f"{base}/data/plugin/scalars/tags")
    for run in runs:
        expected = {f"{split}/{m}" for split in ("train", "val") for m in ("loss", "accuracy", "f1")}
        expected |= {"test/accuracy", "train/lr"}
        assert expected <= set(tags[run.dir.name]), f"{run.dir.name}: missing {expected - set(tags[run.dir.name])}"
    scalars = get_json(f"{base}/data/plugin/scalars/scalars?run={runs[0].dir.name}&tag=train/loss")
    assert len(scalars) == runs[0].epochs  # [wall_time, step, value] per epoch


def test_hparams_tab_compares_the_runs(server):
    base, runs = server
    groups = session_groups(base)
    for run in runs:
        group = groups[run.dir.name]
        assert group["hparams"]["model"] == run.dir.name.upper()
        assert "optimizer.lr" in group["hparams"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        test_accuracy = json.loads((run.dir / "metrics.json").read_text())["test"]["accuracy"]
        assert values["test/accuracy"] == pytest.approx(test_accuracy, abs=1e-5)


def chart_tags(base: str, run: str, regexes: list[str]) -> dict[str, list]:
    """What a multi-line chart shows of `run`: the tags its regexes match, as the dashboard asks for them."""
    regex = regexes[0] if len(regexes) == 1 else "|".join(f"({r})" for r in regexes)
    answer = get_json(f"{base}/data/plugin/custom_scalars/scalars?{urllib.parse.urlencode({'run': run, 'tag': regex})}")
    assert answer["regex_valid"], regex
    return answer["tag_to_events"]


def test_custom_scalars_charts_match_exactly_their_tags(server):
    base, runs = server
    layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
    charts = [chart for category in layout["category"] for chart in category["chart"]]
    multiline = [c for c in charts if "multiline" in c]
    for run in runs:
        shown = {}
        for chart in multiline:
            tags = chart_tags(base, run.dir.name, chart["multiline"]["tag"])
            # One tag per chart, the one its title names: no train/loss_step in the train/loss chart.
            assert set(tags) == {chart["title"]}, f"{chart['title']}: {sorted(tags)}"
            shown[chart["title"]] = [event[1] for event in tags[chart["title"]]]
        per_epoch = {f"{split}/{m}" for split in ("train", "val") for m in METRIC_NAMES}
        assert per_epoch | {"train/loss_step", "train/lr", "train/grad_norm"} <= set(shown)
        for tag in per_epoch:
            assert shown[tag] == list(range(1, run.epochs + 1)), tag  # the epoch axis
        # A margin chart pairs val (the line) with train (the band's far edge), epoch by epoch.
        for chart in (c for c in charts if "margin" in c):
            for series in chart["margin"]["series"]:
                assert series["value"].startswith("val/") and series["lower"] == "train/" + series["value"][4:]
                assert shown[series["value"]] == shown[series["lower"]]


def test_hparams_put_the_differing_hyperparameters_first(server):
    base, runs = server
    infos = experiment(base)["hparamInfos"]
    names = [h["name"] for h in infos]
    differing = [h["name"] for h in infos if h.get("differs")]
    # The runs differ in their model (mlp, cnn: batch norm off and on) and epochs (3 and 2).
    assert {"model", "model.batch_norm", "trainer.epochs"} <= set(differing)
    assert names[: len(differing)] == differing  # first, so the ones ticked by default
    assert {"optimizer.lr", "seed", "dataset.name"} <= set(names)
    assert not [n for n in names if n.startswith(("paths.", "logging.", "device.")) or n.endswith("_target_")]
    assert "dataset.epochs" not in names  # the dataset's default, not what ran
    assert next(h for h in infos if h["name"] == "model.batch_norm")["type"] == "DATA_TYPE_BOOL"
    groups = session_groups(base)
    assert groups["mlp"]["hparams"]["model.batch_norm"] is False and groups["cnn"]["hparams"]["model.batch_norm"] is True
    for group in groups.values():
        assert "None" not in group["hparams"].values()


def assert_metrics_are_the_best_epoch_and_the_test(groups: dict, run_dirs: list[Path]) -> None:
    for run_dir in run_dirs:
        values = {m["name"]["tag"]: m["value"] for m in groups[run_dir.name]["metricValues"]}
        saved = json.loads((run_dir / "metrics.json").read_text())
        history = read_history(run_dir)
        best = max(history, key=lambda row: float(row["val/f1"]))  # the monitor: val/f1, max
        assert int(best["epoch"]) == saved["best"]["epoch"]
        for m in METRIC_NAMES:
            assert values[f"best/val/{m}"] == pytest.approx(float(best[f"val/{m}"]), abs=1e-5), m
            assert values[f"test/{m}"] == pytest.approx(saved["test"][m], abs=1e-5), m


def test_hparams_metrics_are_the_best_epoch_and_the_test(server):
    base, runs = server
    assert_metrics_are_the_best_epoch_and_the_test(session_groups(base), [r.dir for r in runs])


def test_sweep_experiment_orders_the_columns_and_metrics(sweep_server):
    base, job_dirs = sweep_server
    assert sorted(get_json(f"{base}/data/runs")) == sorted(d.name for d in job_dirs)  # no run for the experiment
    found = experiment(base)
    metrics = [m["name"]["tag"] for m in found["metricInfos"]]
    assert metrics == HPARAM_METRICS
    # HParams ticks the first five: the best epoch's val scores and the test's, not the last epoch's.
    assert metrics[:5] == ["best/val/f1", "best/val/accuracy", "best/val/loss", "test/f1", "test/accuracy"]
    names = [h["name"] for h in found["hparamInfos"]]
    differing = [h["name"] for h in found["hparamInfos"] if h.get("differs")]
    assert {"model", "model.batch_norm", "trainer.epochs"} <= set(differing) and names[: len(differing)] == differing
    assert_metrics_are_the_best_epoch_and_the_test(session_groups(base), job_dirs)


def test_pr_curves_per_class(server):
    base, runs = server
    tags = get_json(f"{base}/data/plugin/pr_curves/tags")
    for run in runs:
        with open(run.dir / "confusion_matrix.csv", newline="") as f:
            classes = next(csv.reader(f))[1:]
        wanted = classes[1:] if len(classes) == 2 else classes  # two classes: the positive one's curve
        expected = {f"test/pr_curve/{re.sub(r'[/ ]', '_', c)}" for c in wanted}
        assert expected <= set(tags.get(run.dir.name, {})), f"{run.dir.name}: {sorted(tags.get(run.dir.name, {}))}"
