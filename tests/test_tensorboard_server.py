"""The real TensorBoard server, over finished runs, lists each run and its scalar tags."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_train_run import RUNS, finished_run

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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = [finished_run(name, tmp_path_factory) for name in RUNS]
    logdir = runs[0].dir.parent  # like `tensorboard --logdir outputs`: one subfolder per run
    port = free_port()
    log = tmp_path_factory.mktemp("tensorboard") / "server.log"
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
                if {r.dir.name for r in runs} <= set(get_json(f"{base}/data/runs")):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not list the runs within 60 s"
            time.sleep(0.3)
        yield base, runs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    query = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "colParams": [], "startIndex": 0, "sliceSize": 100}
    groups = {g["name"]: g for g in get_json(f"{base}/data/plugin/hparams/session_groups", post=query)["sessionGroups"]}
    for run in runs:
        group = groups[run.dir.name]
        assert group["hparams"]["model._target_"].endswith(run.dir.name.upper())
        assert "optimizer.lr" in group["hparams"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        test_accuracy = json.loads((run.dir / "metrics.json").read_text())["test"]["accuracy"]
        assert values["test/accuracy"] == pytest.approx(test_accuracy, abs=1e-5)
