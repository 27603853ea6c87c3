"""How long `dlrun runs` takes over a folder of 1,000 runs, as a whole process (start-up included).

    python scripts/bench_runs.py [--runs 1000] [--source RUN_DIR] [--repeat 3]

The runs are copies of one real small run (`dlrun train trainer.epochs=2`, made here unless --source names
one): its .hydra/, history.csv, train.log and lock file, with metrics.json varied as real runs differ (status,
start date, scores, verdict, wall time); half are single runs, half jobs of 20-job sweeps. Prints the medians (wall and CPU)
of --repeat timings of `dlrun runs DIR` with its output piped (the plain table), and of `--json`.
"""

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The console script a user runs, beside this interpreter
DLRUN = [shutil.which("dlrun", path=str(Path(sys.executable).parent)) or "dlrun"]
STATUSES = ["completed"] * 14 + ["failed", "diverged", "interrupted", "pruned", "running"]
VERDICTS = ["good_fit", "overfitting", "underfitting", "still_improving", None]
QUIET = ["logging.graph=false", "logging.confusion_matrix_every=0", "logging.misclassified=0"]


def make_source(folder: Path) -> Path:
    run_dir = folder / "source"
    subprocess.run([*DLRUN, "train", "trainer.epochs=2", *QUIET, f"hydra.run.dir={run_dir}"], check=True, capture_output=True)
    return run_dir


def varied_metrics(source: dict, rng: random.Random, index: int) -> dict:
    metrics = json.loads(json.dumps(source))
    status = rng.choice(STATUSES)
    metrics["status"] = status
    metrics["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - index * 937))
    metrics["wall_time_s"] = round(rng.uniform(5, 4000), 3)
    metrics["seed"] = index
    for section in ("best", "test"):
        for key, value in (metrics.get(section) or {}).items():
            if key != "epoch" and isinstance(value, float):
                metrics[section][key] = round(min(1.0, value * rng.uniform(0.8, 1.1)), 6)
    if status == "failed":
        metrics["error"] = "CUDA out of memory while training (batch 512); try a smaller dataset.batch_size"
    if status in ("failed", "running", "pruned"):
        metrics.pop("test", None)
    if metrics.get("diagnosis"):
        metrics["diagnosis"]["verdict"] = rng.choice(VERDICTS)
    return metrics


def make_runs(source: Path, out: Path, count: int) -> None:
    rng = random.Random(0)
    metrics = json.loads((source / "metrics.json").read_text())
    for i in range(count):
        if i < count // 2:
            run_dir = out / "runs" / f"2026-01-01_00-00-{i:04d}_mlp_digits"
        else:
            job = i - count // 2
            run_dir = out / "sweeps" / f"sweep_{job // 20:03d}" / str(job % 20)
        run_dir.mkdir(parents=True)
        shutil.copytree(source / ".hydra", run_dir / ".hydra")
        for name in ("history.csv", "train.log", ".dlrun.lock"):
            if (source / name).exists():
                shutil.copy(source / name, run_dir / name)
        (run_dir / "metrics.json").write_text(json.dumps(varied_metrics(metrics, rng, i), indent=2))


def timed(args: list[str], repeat: int) -> tuple[float, float]:
    """The median wall time and the median CPU time (user + system) of the command, in seconds: on a shared
    machine the wall time includes the waits for a core, the CPU time does not."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--source", type=Path, help="a finished run to copy (default: one made here)")
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlrun-bench-runs-") as tmp:
        source = opts.source or make_source(Path(tmp))
        out = Path(tmp) / "outputs"
        make_runs(source, out, opts.runs)
        table = timed([*DLRUN, "runs", str(out)], opts.repeat)
        as_json = timed([*DLRUN, "runs", str(out), "--json"], opts.repeat)
    print(
        f"dlrun runs over {opts.runs} runs, median of {opts.repeat}: {table[0]:.2f} s wall, {table[1]:.2f} s CPU (table, "
        f"piped); {as_json[0]:.2f} s wall, {as_json[1]:.2f} s CPU (--json)"
    )


if __name__ == "__main__":
    main()
