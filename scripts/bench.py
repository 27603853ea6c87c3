"""dlrun's speed against the standard PyTorch MNIST loop, whole processes measured side by side in one run.

    python scripts/bench.py --data-root ../shared/data [--seeds 42,1,2,3] [--json outputs/bench.json]

Each pair of commands runs interleaved (A B A B A B) and the table shows the median of 3 of each, as
wall time and as CPU time (user + sys of the child), the steadier figure on a shared machine:
1. time to 99%: `dlrun train model=cnn dataset=mnist` (the shipped defaults) against ONE epoch of the
   standard recipe plus its test pass (scripts/standard_mnist.py: torchvision MNIST, ToTensor and Normalize,
   a DataLoader in batches of 64, the classic tutorial's 16/32-channel CNN with Adam); goal: at most 0.5x
   its wall time and at most 10 s. --seeds also runs dlrun once for each further seed and shows every
   seed's test accuracy (goal: each >= 99.0%);
2. 3 epochs of the course's 784-100-10 MLP (plain SGD at lr 0.01, batch 64, no schedule, plain cross-entropy), dlrun against
   the same standalone script in MLP mode; goal: dlrun at least 4x faster;
3. dlrun's fixed cost: a default `dlrun train` (digits) minus the sum of its epochs (history.csv's time_s)
   minus `python -c "import torch"`; goal: <= 1.0 s;
4. a sweep job's own overhead: a 10-job digits sweep of 3 epochs each in one process, (its wall time minus
   one run's wall time outside its epochs minus all jobs' epochs) / 10; goal: <= 0.3 s;
5. one epoch of real MNIST in this process, the same model, SGD and training step over two data sources:
   torchvision's MNIST + ToTensor + Normalize + a DataLoader (batch 64) against dlrun's device-resident
   DeviceLoader, dlrun in fp32 and with its defaults (trainer.precision=auto, channels_last), for the
   784-100-10 MLP (goal: >= 8x) and dlrun's default CNN (goal: >= 2x); the goals are for the defaults, what a
   run uses; the fp32 rows show what the data pipeline alone gives (for the CNN about 2x, as it did before);
6. time to 99.0% test accuracy, whole process: the pytorch/examples MNIST recipe (scripts/examples_mnist.py:
   its Net, Adadelta lr 1.0, StepLR 0.7, batch 64, a DataLoader; at most --recipe-epochs epochs, its time a
   lower bound when it has not reached 99.0% by then) against the median dlrun CNN run of 1.; goal: >= 19x,
   what it was when the speed work began;
7. start-up of `dlrun --help` and `dlrun train --cfg job`, and the peak RSS of the dlrun MNIST CNN runs;
8. with CUDA only: epoch time and samples/s for the CNN on MNIST and ResNet-18 on CIFAR-10 against
   the standard loop, and model FLOP utilisation against the measured bf16 matmul peak.
Not part of the test suite: it needs the real MNIST files and a few minutes of CPU.
"""

import argparse
import contextlib
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STANDARD = REPO / "scripts" / "standard_mnist.py"
EXAMPLES = REPO / "scripts" / "examples_mnist.py"
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
ROUNDS = 3
SWEEP_JOBS = 10
CNN_CHOICES = ("model=cnn", "dataset=mnist")
MLP_CHOICES = ("model=mlp_100", "dataset=mnist", "trainer.epochs=3", "trainer.batch_size=64", "scheduler=none")
# plain SGD and plain cross-entropy, as the standard loop trains: not MNIST's recipe (its label smoothing alone makes
# the MLP's step about 15% slower)
MLP_CHOICES += ("optimizer.lr=0.01", "optimizer.momentum=0", "optimizer.nesterov=false", "dataset.label_smoothing=0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder holding MNIST/raw (gzipped or plain IDX files)")
    parser.add_argument("--json", default="outputs/bench.json", help="where to write the results")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds for the dlrun CNN run (the first is timed)")
    parser.add_argument("--recipe-epochs", type=int, default=5, help="cap on the pytorch/examples recipe's epochs")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.data_root).expanduser().resolve()
    raw = root / "MNIST" / "raw"
    if not all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in MNIST_FILES):
        sys.exit(f"bench: MNIST files not found in {raw} (expected {', '.join(MNIST_FILES)}, plain or .gz)")

    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="dlrun-bench-") as tmp:
        tmp = Path(tmp)
        plain_root = unpack_mnist(raw, tmp / "plain")  # torchvision's MNIST class reads plain IDX files only
        warm_cache(root)  # both sides read decoded files: dlrun its uint8 cache, torchvision the plain IDX files
        results["cnn"] = cnn_section(root, plain_root, seeds, tmp)
        results["mlp"] = pair(
            lambda i: dlrun_run(tmp / f"mlp{i}", MLP_CHOICES, f"dataset.root={root}"),
            lambda i: standard_run(plain_root, "mlp", 3, tmp),
        )
        results["fixed_cost"] = fixed_cost(tmp)
        results["sweep"] = sweep_overhead(tmp, results["fixed_cost"]["outside_epochs_s"])
        results["startup"] = {
            name: statistics.median(timed(cmd, tmp)["wall_s"] for _ in range(ROUNDS))
            for name, cmd in (
                ("dlrun --help", [str(BIN / "dlrun"), "--help"]),
                ("dlrun train --cfg job", [str(BIN / "dlrun"), "train", "--cfg", "job"]),
            )
        }
        results["epochs"] = epoch_ratios(root, plain_root)
        results["recipe"] = recipe_to_99(plain_root, args.recipe_epochs, tmp)
        results["gpu"] = gpu_section(root, plain_root) if torch.cuda.is_available() else None
    results["rows"] = goal_rows(results)
    print_report(results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {out}")


def machine() -> str:
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def unpack_mnist(raw: Path, dest_root: Path) -> Path:
    target = dest_root / "MNIST" / "raw"
    target.mkdir(parents=True)
    for name in MNIST_FILES:
        source = raw / name if (raw / name).is_file() else raw / f"{name}.gz"
        with (gzip.open if source.suffix == ".gz" else open)(source, "rb") as src, open(target / name, "wb") as out:
            shutil.copyfileobj(src, out)
    return dest_root


def warm_cache(root: Path) -> None:
    from dlrun.data import load_data

    load_data(dlrun_config("dataset=mnist", f"dataset.root={root}").dataset, seed=0, val_fraction=0.1)


# Whole processes: wall clock from start to exit, and the child's own CPU time from wait4


def timed(cmd: list[str], cwd: Path) -> dict:
    """Runs cmd to its end; its output goes to files beside cwd, so that a full pipe never stalls it."""
    with open(cwd / "bench-stdout.txt", "w") as out, open(cwd / "bench-stderr.txt", "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = (cwd / "bench-stdout.txt").read_text()
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{stdout}\n{(cwd / 'bench-stderr.txt').read_text()}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def epoch_seconds(run_dir: Path) -> list[float]:
    lines = (run_dir / "history.csv").read_text().splitlines()
    column = lines[0].split(",").index("time_s")
    return [float(line.split(",")[column]) for line in lines[1:]]


def dlrun_run(run_dir: Path, choices, *extra: str) -> dict:
    run_dir.mkdir(parents=True)
    run = timed([str(BIN / "dlrun"), "train", *choices, *extra, f"hydra.run.dir={run_dir}"], run_dir.parent)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run.pop("stdout")
    return {
        **run,
        "command": " ".join(["dlrun train", *choices, *(e for e in extra if not e.startswith("dataset.root="))]),
        "epoch_s": epoch_seconds(run_dir),
        "test_accuracy": metrics["test"]["accuracy"],
        "precision": metrics.get("precision", "?"),
    }


def standard_run(plain_root: Path, model: str, epochs: int, cwd: Path) -> dict:
    cmd = [sys.executable, str(STANDARD), str(plain_root), "--model", model, "--epochs", str(epochs)]
    run = timed(cmd, cwd)
    return {
        **json.loads(run.pop("stdout").splitlines()[-1]),
        **run,
        "command": f"scripts/standard_mnist.py --model {model} --epochs {epochs}",
    }


def pair(dlrun_side, standard_side) -> dict:
    """ROUNDS runs of each side, interleaved, so that a busy spell on a shared machine hits both."""
    ours, theirs = [], []
    for i in range(ROUNDS):
        ours.append(dlrun_side(i))
        theirs.append(standard_side(i))
    return {"dlrun": summary(ours), "standard": summary(theirs)}


def summary(runs: list[dict]) -> dict:
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "runs": runs,
    }


def cnn_section(root: Path, plain_root: Path, seeds: list[int], tmp: Path) -> dict:
    section = pair(
        lambda i: dlrun_run(tmp / f"cnn{i}", CNN_CHOICES, f"dataset.root={root}", f"seed={seeds[0]}"),
        lambda i: standard_run(plain_root, "cnn", 1, tmp),
    )
    accuracies = {str(seeds[0]): [r["test_accuracy"] for r in section["dlrun"]["runs"]][0]}
    for seed in seeds[1:]:
        run = dlrun_run(tmp / f"cnn-seed{seed}", CNN_CHOICES, f"dataset.root={root}", f"seed={seed}")
        accuracies[str(seed)] = run["test_accuracy"]
        section.setdefault("other_seeds", []).append(run)
    section["accuracy_by_seed"] = accuracies
    return section


def fixed_cost(tmp: Path) -> dict:
    """A default run's time outside its epochs, less what importing torch alone takes (median of 3, interleaved)."""
    runs, imports = [], []
    for i in range(ROUNDS):
        run = dlrun_run(tmp / f"digits{i}", ())
        run["outside_epochs_s"] = run["wall_s"] - sum(run["epoch_s"])
        runs.append(run)
        imports.append(timed([sys.executable, "-c", "import torch"], tmp)["wall_s"])
    outside = statistics.median(r["outside_epochs_s"] for r in runs)
    torch_import = statistics.median(imports)
    return {"fixed_s": outside - torch_import, "outside_epochs_s": outside, "import_torch_s": torch_import, "runs": runs}


def sweep_overhead(tmp: Path, one_run_outside_epochs_s: float) -> dict:
    sweep_dir = tmp / "sweep"
    lrs = ",".join(f"{0.02 * (i + 1):g}" for i in range(SWEEP_JOBS))
    cmd = [str(BIN / "dlrun"), "train", "-m", f"optimizer.lr={lrs}", "trainer.epochs=3", f"hydra.sweep.dir={sweep_dir}"]
    run = timed(cmd, tmp)
    histories = sorted(sweep_dir.rglob("history.csv"))
    if len(histories) != SWEEP_JOBS:
        sys.exit(f"bench: the sweep wrote {len(histories)} history.csv files, not {SWEEP_JOBS}, in {sweep_dir}")
    epochs = sum(sum(epoch_seconds(h.parent)) for h in histories)
    per_job = (run["wall_s"] - one_run_outside_epochs_s - epochs) / SWEEP_JOBS
    return {
        "command": " ".join(["dlrun train", *cmd[2:-1]]),
        "wall_s": run["wall_s"],
        "cpu_s": run["cpu_s"],
        "epochs_s": epochs,
        "per_job_overhead_s": per_job,
    }


def recipe_to_99(plain_root: Path, max_epochs: int, tmp: Path) -> dict:
    """One whole process of the pytorch/examples recipe, up to its first epoch at 99.0% or max_epochs."""
    run = timed([sys.executable, str(EXAMPLES), str(plain_root), str(max_epochs)], tmp)
    epochs = [line.split() for line in run.pop("stdout").splitlines() if line.startswith("epoch ")]
    accuracies = [float(e[3]) for e in epochs]
    return {
        **run,
        "reached_99": accuracies[-1] >= 0.99,
        "epoch_cap": max_epochs,
        "epoch_s": [float(e[2]) for e in epochs],
        "test_accuracy_per_epoch": accuracies,
    }


def epoch_ratios(root: Path, plain_root: Path) -> dict:
    """One epoch of each data source in this process, after 20 untimed steps, with a model built anew for each."""
    from torchvision import datasets, transforms

    from dlrun.data import DeviceLoader, load_data
    from dlrun.engine.precision import Precision

    data = load_data(dlrun_config("dataset=mnist", f"dataset.root={root}").dataset, seed=0, val_fraction=1 / 60)
    standard_set = datasets.MNIST(
        str(plain_root),
        train=True,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)]),
    )
    standard = torch.utils.data.DataLoader(standard_set, batch_size=64, shuffle=True)
    results = {}
    for name in ("mlp_100", "cnn"):
        images = name == "cnn"
        model, optimizer = build(name, data.in_shape, channels_last=False)
        auto = Precision("auto", torch.device("cpu"), model)  # bf16 on a CPU that runs it natively, for a conv net
        t_standard = train_epoch(model, optimizer, standard)
        loader = DeviceLoader(data.train, 64, "cpu", data.mean, data.std, shuffle=True)
        t_fp32 = train_epoch(*build(name, data.in_shape, channels_last=False), loader)
        loader = DeviceLoader(
            data.train, 64, "cpu", data.mean, data.std, shuffle=True, memory_format=torch.channels_last if images else None
        )
        t_defaults = train_epoch(*build(name, data.in_shape, channels_last=images), loader, auto.autocast)
        results[name] = {
            "standard_s": t_standard,
            "dlrun_fp32_s": t_fp32,
            "dlrun_defaults_s": t_defaults,
            "defaults": f"{auto.name}{', channels_last' if images else ''}",
            "samples": len(data.train),
        }
    return results


def goal_rows(results: dict) -> list[dict]:
    cnn, mlp, fixed, sweep = results["cnn"], results["mlp"], results["fixed_cost"], results["sweep"]
    cnn_ratio = cnn["dlrun"]["wall_s"] / cnn["standard"]["wall_s"]
    mlp_ratio = mlp["standard"]["wall_s"] / mlp["dlrun"]["wall_s"]
    worst = min(cnn["accuracy_by_seed"].values())
    peak = max(r["peak_rss_mb"] for r in cnn["dlrun"]["runs"] + cnn.get("other_seeds", []))
    rows = [
        goal_row(
            "1. dlrun train model=cnn dataset=mnist vs 1 standard CNN epoch + test, whole process",
            cnn,
            f"{cnn_ratio:.2f}x (cpu {cnn['dlrun']['cpu_s'] / cnn['standard']['cpu_s']:.2f}x)",
            "<= 0.5x and <= 10 s",
            cnn_ratio <= 0.5 and cnn["dlrun"]["wall_s"] <= 10,
        ),
        goal_row(
            f"1. its test accuracy, seeds {', '.join(cnn['accuracy_by_seed'])}",
            None,
            ", ".join(f"{a:.2%}" for a in cnn["accuracy_by_seed"].values()),
            ">= 99.0% each",
            worst >= 0.99,
        ),
        goal_row(
            "2. 3 epochs of the 784-100-10 MLP, standard loop vs dlrun, whole process",
            mlp,
            f"{mlp_ratio:.2f}x (cpu {mlp['standard']['cpu_s'] / mlp['dlrun']['cpu_s']:.2f}x)",
            ">= 4x",
            mlp_ratio >= 4,
        ),
        goal_row(
            "3. fixed cost: default dlrun train - its epochs - import torch",
            None,
            f"{fixed['fixed_s']:.2f} s",
            "<= 1.0 s",
            fixed["fixed_s"] <= 1.0,
        ),
        goal_row(
            f"4. a sweep job's own overhead ({SWEEP_JOBS} digits jobs of 3 epochs, one process)",
            None,
            f"{sweep['per_job_overhead_s']:.2f} s",
            "<= 0.3 s",
            sweep["per_job_overhead_s"] <= 0.3,
        ),
    ]
    for name, e in results["epochs"].items():
        least = 8 if name == "mlp_100" else 2
        for variant in ("fp32", "defaults"):
            label = "fp32" if variant == "fp32" else f"defaults: {e['defaults']}"
            ratio = e["standard_s"] / e[f"dlrun_{variant}_s"]
            rows.append(
                goal_row(
                    f"5. one epoch in process, model={name}, DataLoader vs DeviceLoader ({label})",
                    None,
                    f"{ratio:.1f}x ({e['standard_s']:.1f} s vs {e[f'dlrun_{variant}_s']:.2f} s)",
                    f">= {least}x" if variant == "defaults" else "none (shown)",
                    ratio >= least if variant == "defaults" else None,
                )
            )
    recipe = results["recipe"]
    recipe_ratio = recipe["wall_s"] / cnn["dlrun"]["wall_s"]
    bound = "" if recipe["reached_99"] else ">= "
    rows.append(
        goal_row(
            "6. time to 99%: pytorch/examples recipe vs dlrun train model=cnn dataset=mnist, whole process",
            None,
            f"{bound}{recipe_ratio:.1f}x ({bound}{recipe['wall_s']:.0f} s vs {cnn['dlrun']['wall_s']:.1f} s)",
            ">= 19x",
            recipe_ratio >= 19 and worst >= 0.99,
        )
    )
    for name, seconds in results["startup"].items():
        limit = 0.5 if "help" in name else 1.5
        rows.append(goal_row(f"7. start-up, {name}", None, f"{seconds:.2f} s", f"<= {limit} s", seconds <= limit))
    rows.append(goal_row("7. peak RSS of the dlrun MNIST CNN runs", None, f"{peak:.0f} MB", "<= 1500 MB", peak <= 1500))
    return rows


def goal_row(name: str, pair_result: dict | None, figure: str, goal: str, met: bool) -> dict:
    sides = {}
    if pair_result is not None:
        sides = {
            side: f"{pair_result[side]['wall_s']:.1f} s (cpu {pair_result[side]['cpu_s']:.1f})" for side in ("dlrun", "standard")
        }
    return {"measure": name, **sides, "figure": figure, "goal": goal, "met": met}


def print_report(results: dict) -> None:
    print(f"\nmachine: {results['machine']}; {results['date']}; medians of {ROUNDS} interleaved runs")
    print(f"{'measure':<96} {'dlrun':>17} {'standard':>17}  {'figure':<30} {'goal':<20} met")
    for r in results["rows"]:
        met = "" if r["met"] is None else "met" if r["met"] else "NOT met"
        print(f"{r['measure']:<96} {r.get('dlrun', ''):>17} {r.get('standard', ''):>17}  {r['figure']:<30} {r['goal']:<20} {met}")
    cnn, fixed, sweep = results["cnn"], results["fixed_cost"], results["sweep"]
    for name in ("cnn", "mlp"):
        print()
        for side in ("dlrun", "standard"):
            print(describe_runs(results[name][side]["runs"]))
    for run in cnn.get("other_seeds", []):
        print(describe_runs([run]))
    print(
        f"\nfixed cost: default dlrun train {walls(fixed['runs'])} s, outside its epochs {fixed['outside_epochs_s']:.2f} s "
        f"(median), import torch {fixed['import_torch_s']:.2f} s"
    )
    print(
        f"sweep: {sweep['command']}: {sweep['wall_s']:.1f} s (cpu {sweep['cpu_s']:.1f}), "
        f"its jobs' epochs {sweep['epochs_s']:.1f} s"
    )
    recipe = results["recipe"]
    accuracies = ", ".join(f"{a:.4f}" for a in recipe["test_accuracy_per_epoch"])
    reached = (
        f"99.0% after epoch {len(recipe['epoch_s'])}"
        if recipe["reached_99"]
        else f"not 99.0% within its cap of {recipe['epoch_cap']} epochs, so its time is a lower bound"
    )
    print(
        f"pytorch/examples recipe: {recipe['wall_s']:.1f} s (cpu {recipe['cpu_s']:.1f}), epochs "
        f"{', '.join(f'{e:.1f}' for e in recipe['epoch_s'])} s, test accuracy after each {accuracies}: {reached}"
    )
    if results["gpu"] is None:
        print("GPU section: skipped (no CUDA device)")
    else:
        print("GPU:", json.dumps(results["gpu"], indent=2))


def walls(runs: list[dict]) -> str:
    return ", ".join(f"{r['wall_s']:.1f}" for r in runs)


def describe_runs(runs: list[dict]) -> str:
    precision = f" ({runs[0]['precision']})" if "precision" in runs[0] else ""
    epochs = "; ".join(", ".join(f"{e:.2f}" for e in r["epoch_s"]) for r in runs)
    accuracies = ", ".join(f"{r['test_accuracy']:.4f}" for r in runs)
    return f"{runs[0]['command']}{precision}: walls {walls(runs)} s, epochs {epochs} s, test accuracy {accuracies}"


# One epoch in this process, the same training step over two data sources (5. and the GPU section)


def dlrun_config(*overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module("dlrun.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build(model_name: str, in_shape, channels_last: bool):
    from hydra.utils import instantiate

    cfg = dlrun_config(f"model={model_name}")
    torch.manual_seed(0)
    model = instantiate(cfg.model, in_shape=in_shape, num_classes=10)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    return model, optimizer


def train_epoch(model, optimizer, batches, autocast=contextlib.nullcontext, warmup: int = 20) -> float:
    """Seconds for one epoch of `batches`, after `warmup` untimed steps of the same loop."""
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step(x, y):
        with autocast():
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i, (x, y) in enumerate(batches):
        if i == warmup:
            break
        step(x, y)
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return time.perf_counter() - start


# 5: CUDA only


def gpu_section(root: Path, plain_root: Path) -> dict:
    from torchvision import datasets, models, transforms

    from dlrun.data import DeviceLoader, load_data

    device = torch.device("cuda")
    bf16 = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    out = {"bf16_matmul_peak_tflops": matmul_peak_tflops(device)}

    def timed_epoch(model, optimizer, batches, n_samples):
        torch.cuda.synchronize()
        seconds = train_epoch(model, optimizer, batches, bf16)
        torch.cuda.synchronize()
        return {"epoch_s": seconds, "samples_per_s": n_samples / seconds}

    data = load_data(dlrun_config("dataset=mnist", f"dataset.root={root}").dataset, seed=0, val_fraction=1 / 60)
    model, opt = build("cnn", data.in_shape, channels_last=True)
    model.to(device)
    opt = type(opt)(model.parameters(), **opt.defaults)
    loader = DeviceLoader(data.train, 64, device, data.mean, data.std, shuffle=True, memory_format=torch.channels_last)
    ours = timed_epoch(model, opt, loader, len(data.train))
    ours["mfu"] = mfu(model, next(iter(loader)), ours["samples_per_s"] / 64, out["bf16_matmul_peak_tflops"])
    standard_set = datasets.MNIST(
        str(plain_root),
        train=True,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)]),
    )
    standard = ToDevice(
        torch.utils.data.DataLoader(
            standard_set, batch_size=64, shuffle=True, num_workers=4, pin_memory=True, persistent_workers=True
        ),
        device,
    )
    model, opt = build("cnn", data.in_shape, channels_last=False)
    model.to(device)
    opt = type(opt)(model.parameters(), **opt.defaults)
    out["cnn_mnist"] = {"dlrun": ours, "standard": timed_epoch(model, opt, standard, len(standard_set))}

    cifar = root / "cifar-10-batches-py"
    if not cifar.is_dir():
        out["resnet18_cifar10"] = f"skipped: no CIFAR-10 in {cifar}"
        return out
    data = load_data(dlrun_config("dataset=cifar10", f"dataset.root={root}", "dataset.download=false").dataset, 0, 0.02)
    net = models.resnet18(num_classes=10).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loader = DeviceLoader(data.train, 256, device, data.mean, data.std, shuffle=True, memory_format=torch.channels_last)
    ours = timed_epoch(net, opt, loader, len(data.train))
    ours["mfu"] = mfu(net, next(iter(loader)), ours["samples_per_s"] / 256, out["bf16_matmul_peak_tflops"])
    standard_set = datasets.CIFAR10(
        str(root),
        train=True,
        transform=transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(data.mean, data.std),
            ]
        ),
    )
    standard = ToDevice(
        torch.utils.data.DataLoader(
            standard_set, batch_size=256, shuffle=True, num_workers=4, pin_memory=True, persistent_workers=True
        ),
        device,
    )
    net = models.resnet18(num_classes=10).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    out["resnet18_cifar10"] = {"dlrun": ours, "standard": timed_epoch(net, opt, standard, len(standard_set))}
    return out


class ToDevice:
    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def matmul_peak_tflops(device, n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def mfu(model, batch, steps_per_s: float, peak_tflops: float) -> float:
    """Model FLOPs of one training step (forward and backward, counted by torch) x steps/s over the peak."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = batch
    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() * steps_per_s / (peak_tflops * 1e12)


if __name__ == "__main__":
    main()
