"""Run directories damaged after the fact (a disk, a copy cut short, a hand edit): a last.pt that cannot be read
stops `resume=` with one line that offers best.pt, and `resume=RUN_DIR/best.pt` continues from there; a
metrics.json or history.csv that cannot be used shows as `unreadable` in a summary, with the reason, and a file
too large to be a run's own is refused by its size before anything parses it. Nothing is changed before the
user asks."""

import csv
import json
import shutil
import struct
import time
import zipfile
from pathlib import Path

import pytest
from helpers import run_dlrun
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlrun.core.io import MAX_CSV_BYTES, MAX_JSON_BYTES, read_json
from dlrun.engine import checkpoint
from dlrun.results.runs import Run

pytestmark = pytest.mark.slow

QUIET = ("logging.graph=false", "logging.confusion_matrix_every=0", "logging.misclassified=0", "trainer.log_every_n_steps=5")
STEPS_PER_EPOCH = 21  # ceil(1294 training digits / batch 64)
# trainer.mode=min on val/f1, which rises: epoch 1 is the best, so best.pt lies an epoch behind last.pt.
JOB_ARGS = ("trainer.epochs=2", "model.hidden_sizes=[16]", "trainer.precision=32", "trainer.mode=min", *QUIET)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two finished jobs of 2 epochs, each a run directory the tests copy before damaging it."""
    sweep_dir = tmp_path_factory.mktemp("damaged") / "sweep"
    run_dlrun("train", "-m", "optimizer.lr=0.2,0.1", *JOB_ARGS, f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent)
    return sweep_dir


@pytest.fixture
def run(sweep, tmp_path) -> Path:
    return Path(shutil.copytree(sweep / "optimizer.lr=0.2", tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock's (its text names the last process that held it)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".dlrun.lock"]
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def one_line(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("dlrun: error: ")
    return line[len("dlrun: error: ") :]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zero_a_tensor(path: Path) -> None:
    """Bytes changed inside a tensor: torch.load reads such a file without complaint, its CRC-32 does not match."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    # The member's bytes follow its local header, whose name and extra field lengths are at offsets 26 and 28.
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start : start + 32] = bytes(32)
    path.write_bytes(bytes(data))


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def history_lines(run_dir: Path) -> list[str]:
    return (run_dir / "history.csv").read_text().splitlines()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (truncate, "the end of its zip archive is missing"),
        (lambda p: p.write_bytes(b""), "an empty file"),
        (zero_a_tensor, "does not match its checksum"),
    ],
)
def test_a_damaged_last_pt_is_one_line_that_offers_best_pt_and_changes_nothing(run, tmp_path, damage, reason):
    damage(run / "last.pt")
    before = snapshot(run)
    line = one_line(run_dlrun("train", f"resume={run}", cwd=tmp_path, check=False))
    assert line.startswith(f"{run / 'last.pt'}: truncated or corrupt (")
    assert reason in line
    assert line.endswith(
        f"; best.pt can be read: continue from its epoch 1 (training the epochs after it again) with "
        f"`dlrun train resume={run / 'best.pt'}`"
    )
    assert snapshot(run) == before


def test_resume_from_best_pt_continues_from_its_epoch(sweep, run, tmp_path):
    original = sweep / "optimizer.lr=0.2"
    truncate(run / "last.pt")
    proc = run_dlrun("train", f"resume={run / 'best.pt'}", cwd=tmp_path)
    assert f"resuming from epoch 1 (step {STEPS_PER_EPOCH}) of {run}" in proc.stdout

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["resumed_from"] == {"epoch": 1, "step": STEPS_PER_EPOCH}
    assert metrics["epochs_completed"] == 2
    # history.csv: epoch 1 as it was, to the byte; epoch 2 trained again, at the lr the schedule gave it then
    # (replayed to step 21), though on another data order (the random streams start again from the seed).
    got, want = history_lines(run), history_lines(original)
    assert got[:2] == want[:2] and len(got) == 3
    rows = [list(csv.DictReader([got[0], line]))[0] for line in got[1:]]
    old = [list(csv.DictReader([want[0], line]))[0] for line in want[1:]]
    assert [r["lr"] for r in rows] == [r["lr"] for r in old]
    assert rows[1]["train/loss"] != old[1]["train/loss"]
    assert checkpoint.load(run / "last.pt", verify=True)["epoch"] == 2  # a whole last.pt again
    # TensorBoard: epoch 1 and its steps as they were, epoch 2 once with its new values, every step once.
    got_curves, want_curves = scalars(run), scalars(original)
    assert sorted(got_curves) == sorted(want_curves)
    for tag, points in got_curves.items():
        assert [s for s, _ in points] == [s for s, _ in want_curves[tag]], tag
    assert got_curves["train/loss_step"][:STEPS_PER_EPOCH] == want_curves["train/loss_step"][:STEPS_PER_EPOCH]
    assert got_curves["train/lr"] == want_curves["train/lr"]
    assert got_curves["val/loss"][0] == want_curves["val/loss"][0] != got_curves["val/loss"][1]
    assert got_curves["val/loss"][1][1] == pytest.approx(float(rows[1]["val/loss"]), abs=1e-6)


def test_when_best_pt_is_damaged_too_neither_can_be_read(run, tmp_path):
    truncate(run / "last.pt")
    zero_a_tensor(run / "best.pt")
    before = snapshot(run)
    line = one_line(run_dlrun("train", f"resume={run}", cwd=tmp_path, check=False))
    assert line.startswith(f"{run / 'last.pt'}: truncated or corrupt (the end of its zip archive is missing); ")
    assert f"{run / 'best.pt'}: truncated or corrupt (" in line
    assert line.endswith(": neither last.pt nor best.pt can be read, so start the run again")
    # Asked for best.pt itself: the same, the other way round.
    line = one_line(run_dlrun("train", f"resume={run / 'best.pt'}", cwd=tmp_path, check=False))
    assert line.startswith(f"{run / 'best.pt'}: truncated or corrupt (")
    assert line.endswith("; last.pt cannot be read either, so start the run again")
    assert snapshot(run) == before


def test_best_pt_asked_for_but_damaged_points_to_a_whole_last_pt(run, tmp_path):
    truncate(run / "best.pt")
    before = snapshot(run)
    line = one_line(run_dlrun("train", f"resume={run / 'best.pt'}", cwd=tmp_path, check=False))
    assert line == (
        f"{run / 'best.pt'}: truncated or corrupt (the end of its zip archive is missing); "
        f"last.pt is whole: continue from it with `dlrun train resume={run}`"
    )
    assert snapshot(run) == before


def test_best_pt_cannot_continue_without_the_history_of_its_epochs(run, tmp_path):
    truncate(run / "last.pt")
    (run / "history.csv").write_text(history_lines(run)[0] + "\n")  # the header alone
    before = snapshot(run)
    line = one_line(run_dlrun("train", f"resume={run}", cwd=tmp_path, check=False))
    assert line.endswith(
        f"best.pt cannot stand in for it ({run / 'history.csv'}: holds 0 rows of epochs 1 to 1, which best.pt "
        "continues from), so start the run again"
    )
    with open(run / "history.csv", "r+b") as f:  # sparse: no disk used
        f.truncate(MAX_CSV_BYTES + 1)
    line = one_line(run_dlrun("train", f"resume={run / 'best.pt'}", cwd=tmp_path, check=False))
    assert f"{run / 'history.csv'}: 512.1 MB, more than the 512 MB such a file can hold; not read" in line
    assert snapshot(run) == {**before, "history.csv": (run / "history.csv").read_bytes()}


def test_checksums_find_what_torch_load_does_not(run):
    zero_a_tensor(run / "last.pt")
    assert checkpoint.load(run / "last.pt")["epoch"] == 2  # torch.load alone reads the changed bytes as weights
    with pytest.raises(checkpoint.Damaged, match=r"archive/data/\d+ does not match its checksum"):
        checkpoint.load(run / "last.pt", verify=True)


# ---- metrics.json and history.csv in a summary ----


def damaged_copies(sweep: Path, root: Path) -> dict[str, Path]:
    """Copies of one finished job, each with one damaged file; the sparse ones take no disk."""
    job = sweep / "optimizer.lr=0.2"
    copies = {name: Path(shutil.copytree(job, root / name)) for name in ("not_json", "test_text", "best_list", "huge", "rows")}
    (copies["not_json"] / "metrics.json").write_text('{"status": "completed", "best": {')
    for name, key, value in (("test_text", "test", "x"), ("best_list", "best", [1])):
        metrics = json.loads((job / "metrics.json").read_text())
        (copies[name] / "metrics.json").write_text(json.dumps({**metrics, key: value}))
    with open(copies["huge"] / "metrics.json", "r+b") as f:
        f.truncate(2 * 2**30)  # 2 GB
    with open(copies["rows"] / "history.csv", "r+b") as f:
        f.truncate(10**9 * 40)  # a billion rows of 40 bytes
    return copies


REASONS = {
    "not_json": "metrics.json: not JSON (Expecting property name enclosed in double quotes: line 1 column 34 (char 33))",
    "test_text": 'metrics.json: "test" is a string, not an object',
    "best_list": 'metrics.json: "best" is a list, not an object',
    "huge": "metrics.json: 2 GB, more than the 64 MB such a file can hold; not read",
    "rows": "history.csv: 37.3 GB, more than the 512 MB such a file can hold; not read",
}


def test_compare_shows_unreadable_runs_with_the_reason_and_the_rest_of_the_table(sweep, tmp_path):
    copies = damaged_copies(sweep, tmp_path / "runs")
    good = sweep / "optimizer.lr=0.1"
    start = time.monotonic()
    proc = run_dlrun("compare", str(good), *map(str, copies.values()), "--out", "cmp", cwd=tmp_path, env={"COLUMNS": "250"})
    assert time.monotonic() - start < 60  # nothing read 2 GB
    with open(tmp_path / "cmp" / "summary.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["optimizer.lr=0.1"]["status"] == "completed"
    assert float(rows["optimizer.lr=0.1"]["test/accuracy"]) == json.loads((good / "metrics.json").read_text())["test"]["accuracy"]
    for name, reason in REASONS.items():
        assert (rows[name]["status"], rows[name]["error"]) == ("unreadable", reason), name
        assert f"unreadable: {reason}" in proc.stdout, name
    assert "Traceback" not in proc.stderr


def test_a_sweeps_summary_shows_an_unreadable_job(sweep, tmp_path):
    copy = Path(shutil.copytree(sweep, tmp_path / "sweep"))
    (copy / "optimizer.lr=0.1" / "metrics.json").write_text('{"status": "completed", "test": "x"}')
    proc = run_dlrun("compare", str(copy), cwd=tmp_path, env={"COLUMNS": "250"})
    summary = json.loads((copy / "summary.json").read_text())
    status = {row["run"]: (row["status"], row["error"]) for row in summary["rows"]}
    assert status == {
        "optimizer.lr=0.2": ("completed", ""),
        "optimizer.lr=0.1": ("unreadable", 'metrics.json: "test" is a string, not an object'),
    }
    assert summary["failed"] == ["optimizer.lr=0.1"]
    assert 'unreadable: metrics.json: "test" is a string, not an object' in proc.stdout


def test_files_too_large_are_refused_by_their_size(sweep, tmp_path):
    copies = damaged_copies(sweep, tmp_path)
    start = time.monotonic()
    assert read_json(copies["huge"] / "metrics.json") == {}
    assert Run.load(copies["huge"]).problem == REASONS["huge"]
    assert Run.load(copies["rows"]).problem == REASONS["rows"]
    assert time.monotonic() - start < 1  # measured, never read
    with open(tmp_path / "just_over.json", "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)
    assert read_json(tmp_path / "just_over.json") == {}
