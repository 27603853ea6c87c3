"""Sweeps: run each job once (skip finished ones, record failed ones), then one summary over the job
directories: a console table, summary.csv, summary.md and curves.png. `dlrun compare` builds the same
from existing run or sweep directories.

Nothing here imports torch or matplotlib at module level: Hydra imports this module for its callback
on every `dlrun train`, and `dlrun compare` needs neither.
"""

import argparse
import csv
import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from dlrun.errors import DlrunError

log = logging.getLogger(__name__)

FINISHED = ("completed", "diverged")  # a rerun would give the same answer: skip these when resuming
SEED_AXIS = "seed"
CURVES = (("val/accuracy", "val accuracy"), ("val/loss", "val loss"), ("train/loss", "train loss"))


def job_dir_name(override_dirname: str, num) -> str:
    """The job's directory within the sweep: its overrides, or `job<N>` when it has none
    (otherwise the job would write into the sweep directory itself)."""
    return override_dirname or f"job{num}"


# Registered on import: Hydra imports this module to build the callback, in the main process and,
# through the pickled callback, in every joblib or submitit worker, before any job directory is resolved.
if not OmegaConf.has_resolver("dlrun.job_dir"):
    OmegaConf.register_new_resolver("dlrun.job_dir", job_dir_name)


class SweepFailed(DlrunError):
    exit_code = 1


# ----------------------------------------------------------------------------------------------------
# One job of a sweep


def run_job(cfg) -> float:
    """The task of `dlrun train`. In a sweep, a finished job is skipped (its objective is returned
    from metrics.json), and a failing job is recorded and returns NaN, so the others go on; the
    summary then reports it and the sweep exits non-zero."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dlrun.train import run

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return run(cfg)

    from dlrun.console import Console

    console = Console()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    name = os.path.relpath(job_dir, hydra_cfg.sweep.dir)
    monitor = cfg.trainer.monitor
    previous = read_json(job_dir / "metrics.json")
    status = previous.get("status")
    if status in FINISHED and previous.get("monitor", monitor) == monitor:
        console.print(f"{name}: skipped, already {status} in {job_dir}")
        return float(previous.get("best", {}).get(monitor, math.nan))
    if status is not None:
        console.print(f"{name}: rerunning (previous attempt: {status})")
        clear_attempt(job_dir)
    try:
        return run(cfg)
    except Exception as err:  # noqa: BLE001 - any job error is reported in the summary, not raised
        reason = failure_reason(err)
        log.error("job failed: %s", reason, exc_info=err)
        record_failure(job_dir, reason)
        console.print(f"{name}: failed: {reason}")
        return math.nan


def failure_reason(err: BaseException) -> str:
    from dlrun.cli_errors import describe

    if isinstance(err, DlrunError):
        return str(err)
    message, code = describe(err, [])
    if code == 1:  # an unexpected error: its type and message here, its traceback in the job's log
        text = str(err).strip().splitlines()
        message = f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
    return message


def record_failure(job_dir: Path, reason: str) -> None:
    from dlrun import report

    metrics = read_json(job_dir / "metrics.json")
    metrics.update(status="failed", error=reason)
    report.write_json(job_dir / "metrics.json", metrics)


def clear_attempt(job_dir: Path) -> None:
    """Drop a previous attempt's curves and records, so TensorBoard does not overlay two attempts in one run."""
    for path in job_dir.glob("events.out.tfevents.*"):
        path.unlink()
    for name in ("metrics.json", "history.csv"):
        (job_dir / name).unlink(missing_ok=True)


class SweepSummary(Callback):
    """Hydra callback: the summary at the end of every sweep, whatever the launcher or sweeper."""

    def on_multirun_start(self, config, **kwargs) -> None:
        # Optuna's SQLite study lives in the sweep directory and is opened before any job runs.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config, **kwargs) -> None:
        global last_sweep
        sweep_dir = Path(config.hydra.sweep.dir)
        # Hydra turns a callback's exception into a warning; keep it for check_last_sweep instead.
        try:
            last_sweep = summarize([sweep_dir], sweep_dir, what="jobs")
        except Exception as err:  # noqa: BLE001
            last_sweep = err


last_sweep = None  # what the last sweep's callback produced in this process: a Summary or an error


def check_last_sweep() -> None:
    """Called by the CLI after `dlrun train`: a sweep with a failed job exits non-zero."""
    global last_sweep
    outcome, last_sweep = last_sweep, None
    if isinstance(outcome, Exception):
        raise outcome
    if outcome is not None and outcome.failed:
        names = ", ".join(row.name for row in outcome.failed)
        raise SweepFailed(
            f"{len(outcome.failed)} of {len(outcome.rows)} jobs did not finish ({names}); "
            f"see {outcome.out_dir / 'summary.md'}"
        )


# ----------------------------------------------------------------------------------------------------
# Reading run directories


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read_yaml(path: Path):
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def is_run(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / ".hydra" / "config.yaml").is_file()


def find_runs(path: Path) -> list[Path]:
    """`path` itself if it is a run, else every run below it (not looking inside runs or hidden folders)."""
    if is_run(path):
        return [path]
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found.extend(find_runs(child))
    return found


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    config: dict
    choices: dict[str, str]
    metrics: dict
    history: list[dict]

    @classmethod
    def load(cls, path: Path) -> "Run":
        hydra_dir = path / ".hydra"
        overrides = {}
        for item in read_yaml(hydra_dir / "overrides.yaml") or []:
            key, _, value = str(item).partition("=")
            overrides[key.lstrip("+~")] = value
        hydra_cfg = read_yaml(hydra_dir / "hydra.yaml") or {}
        choices = (hydra_cfg.get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
        return cls(path, overrides, read_yaml(hydra_dir / "config.yaml") or {}, choices,
                   read_json(path / "metrics.json"), read_history(path / "history.csv"))

    def value(self, key: str) -> str:
        """A config value as text: a group's chosen option, else the key in the saved config."""
        if key in self.choices:
            choice = self.choices[key]
            return "null" if choice is None else str(choice)  # as an override writes it: experiment=null
        node = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return self.overrides.get(key, "")
            node = node[part]
        if isinstance(node, list):
            return "[" + ",".join(map(str, node)) + "]"  # as it is written in an override
        return json.dumps(node) if isinstance(node, dict) else str(node)

    @property
    def status(self) -> str:
        return self.metrics.get("status", "not started")

    @property
    def monitor(self) -> str:
        return self.metrics.get("monitor") or self.config.get("trainer", {}).get("monitor", "val/f1")

    @property
    def mode(self) -> str:
        return self.config.get("trainer", {}).get("mode", "max")


def read_history(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except OSError:
        return []


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------------------------------
# The summary


@dataclass
class Row:
    """One job, or with `seed` swept, one group of jobs that differ only by seed."""

    name: str
    values: dict[str, str]
    runs: list[Run]
    objective: list[float] = field(default_factory=list)
    best_epoch: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    test_f1: list[float] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status in FINISHED]

    @property
    def status(self) -> str:
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        if len(self.runs) == 1:
            run = self.runs[0]
            error = run.metrics.get("error")
            return f"{run.status}: {error}" if error else run.status
        return ", ".join(f"{n} {s}" for s, n in counts.items())

    @property
    def score(self) -> float:
        return _mean(self.objective)


@dataclass
class Summary:
    rows: list[Row]                 # jobs, sorted by the objective, best first
    groups: list[Row] | None        # with `seed` swept: jobs grouped by the other axes, best first
    axes: list[str]
    monitor: str
    mode: str
    out_dir: Path
    search: dict | None = None      # the best parameters found by an optuna search

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.rows if row.runs[0].status not in FINISHED]

    @property
    def ranked(self) -> list[Row]:
        return self.groups if self.groups is not None else self.rows


def swept_axes(runs: list[Run]) -> list[str]:
    """The overridden keys whose values differ between runs (all of them for a single run)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys and not k.startswith("hydra")]
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({run.value(k) for run in runs}) > 1]


def build_summary(runs: list[Run], out_dir: Path, with_names: bool) -> Summary:
    axes = swept_axes(runs)
    monitor = _most_common([r.monitor for r in runs])
    mode = _most_common([r.mode for r in runs])
    rank = _ranker(mode)

    def label(run: Run) -> str:
        if with_names:
            return f"{run.path.parent.name}/{run.path.name}"
        return ",".join(f"{a}={run.value(a)}" for a in axes) or run.path.name

    rows = sorted((_row(label(r), {a: r.value(a) for a in axes}, [r], monitor) for r in runs), key=rank)
    groups = None
    if SEED_AXIS in axes:
        others = [a for a in axes if a != SEED_AXIS]
        by_values: dict[tuple, list[Run]] = {}
        for run in runs:
            by_values.setdefault(tuple(run.value(a) for a in others), []).append(run)
        groups = sorted(
            (_row(",".join(f"{a}={v}" for a, v in zip(others, values)) or "all seeds", dict(zip(others, values)),
                  group, monitor) for values, group in by_values.items()),
            key=rank,
        )
    return Summary(rows, groups, axes, monitor, mode, out_dir, read_yaml(out_dir / "optimization_results.yaml"))


def _row(name: str, values: dict, runs: list[Run], monitor: str) -> Row:
    row = Row(name, values, runs)
    for run in row.finished:
        m = run.metrics
        best, test = m.get("best", {}), m.get("test", {})
        row.objective.append(_float(best.get(monitor)))
        row.best_epoch.append(_float(best.get("epoch")))
        row.test_accuracy.append(_float(test.get("accuracy")))
        row.test_f1.append(_float(test.get("f1")))
    for run in row.runs:
        row.epochs.append(_float(run.metrics.get("epochs_completed", 0)))
        row.time_s.append(_float(run.metrics.get("wall_time_s")))
    return row


def _ranker(mode: str):
    sign = -1 if mode == "max" else 1

    def key(row: Row):
        score = row.score
        return (math.isnan(score), sign * score if not math.isnan(score) else 0.0, row.name)

    return key


def _most_common(items: list[str]) -> str:
    return max(set(items), key=items.count)


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def _std(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.stdev(values) if len(values) > 1 else math.nan


def _fmt(values: list[float], digits: int = 4, spread: bool = True) -> str:
    mean, std = _mean(values), _std(values)
    if math.isnan(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if spread and not math.isnan(std) else text


def _short(value: str) -> str:
    """A float drawn by a search, 0.21766241123453672, shown as 0.2177 (summary.csv keeps every digit)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if "." in value and len(value) > 8 else value


def _fmt_time(values: list[float]) -> str:
    seconds = _mean(values)
    if math.isnan(seconds):
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def table_cells(summary: Summary, rows: list[Row], grouped: bool, with_names: bool):
    """The header and the rows of text of a summary table (console, markdown)."""
    axes = [a for a in summary.axes if not (grouped and a == SEED_AXIS)]
    header = ["", *(["run"] if with_names else []), *axes, *(["seeds"] if grouped else []),
              f"best {summary.monitor}", "epoch", "test acc", "test f1", "epochs", "time", "status"]
    best = rows[0] if rows and not math.isnan(rows[0].score) else None
    body = []
    for row in rows:
        body.append([
            "*" if row is best else "",
            *([row.name] if with_names else []),
            *[_short(row.values.get(a, "")) for a in axes],
            *([str(len(row.runs))] if grouped else []),
            _fmt(row.objective),
            _fmt(row.best_epoch, 0, spread=False),
            _fmt(row.test_accuracy),
            _fmt(row.test_f1),
            _fmt(row.epochs, 0, spread=False),
            _fmt_time(row.time_s),
            row.status,
        ])
    return header, body


def print_summary(summary: Summary, title: str, with_names: bool, logdir: Path) -> None:
    from dlrun.console import Console

    console = Console()
    grouped = summary.groups is not None
    header, body = table_cells(summary, summary.ranked, grouped, with_names and not grouped)
    if console.tty:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(title), title_justify="left")
        numeric = {"seeds", f"best {summary.monitor}", "epoch", "test acc", "test f1", "epochs", "time"}
        for name in header:
            table.add_column(escape(name), justify="right" if name in numeric else "left")
        for cells in body:  # values such as [50,50] are text, not rich markup
            table.add_row(*map(escape, cells), style="bold green" if cells[0] == "*" else None)
        console.rich.print(table)
    else:
        print(title)
        print(plain_table(header, body), flush=True)
    lines = []
    if grouped and summary.failed:
        lines += ["not finished:", *[f"  {row.name}: {row.status}" for row in summary.failed]]
    if summary.search and "best_params" in summary.search:
        lines.append(f"optuna best parameters: {_params(summary.search)}")
    lines.append(f"summary: {summary.out_dir / 'summary.md'}, summary.csv, curves.png")
    lines.append(f"open them with: tensorboard --logdir {logdir}")
    for line in lines:
        print(line, flush=True)


def _params(search: dict) -> str:
    params = " ".join(f"{k}={v}" for k, v in search["best_params"].items())
    return f"{params} (objective {search.get('best_value')})"


def plain_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]
    lines = []
    for cells in [header, *body]:
        # The last column (status, with a failure's reason) is left unpadded: it can be long.
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths)] + [cells[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)])


def write_summary(summary: Summary, title: str, with_names: bool) -> None:
    from dlrun import report

    out = summary.out_dir
    out.mkdir(parents=True, exist_ok=True)
    objective = f"best_{summary.monitor}"
    header = ["run", *summary.axes, objective, "best_epoch", "test/accuracy", "test/f1", "epochs", "wall_time_s",
              "status", "error", "path"]
    rows = []
    for row in summary.rows:
        run = row.runs[0]
        rows.append([row.name, *[row.values[a] for a in summary.axes], _csv(row.objective), _csv(row.best_epoch),
                     _csv(row.test_accuracy), _csv(row.test_f1), _csv(row.epochs), _csv(row.time_s),
                     run.status, run.metrics.get("error", ""), os.path.relpath(run.path, out)])
    report.write_csv(out / "summary.csv", header, rows)

    parts = [f"# {title}", "",
             f"Objective: {summary.monitor} ({summary.mode}imize), best marked *. Jobs: {len(summary.rows)}, "
             f"not finished: {len(summary.failed)}. A failed job's traceback is in its log file.", ""]
    if summary.search and "best_params" in summary.search:
        parts += [f"Optuna's best parameters: {_params(summary.search)}", ""]
    if summary.groups is not None:
        parts += ["## By configuration, mean ± std over seeds", "",
                  markdown_table(*table_cells(summary, summary.groups, True, False)), "", "## Every job", ""]
    parts += [markdown_table(*table_cells(summary, summary.rows, False, with_names)), ""]
    report.write_text(out / "summary.md", "\n".join(parts))
    report.save_figure(curves_figure(summary), out / "curves.png")


def _csv(values: list[float]) -> str:
    value = _mean(values)
    return "" if math.isnan(value) else f"{value:.6g}"


def curves_figure(summary: Summary):
    """Val accuracy, val loss and train loss per epoch, one line per job (or per group's mean, shaded ± std)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    rows = summary.ranked
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20" if len(rows) <= 20 else "viridis")
    best = rows[0] if rows and not math.isnan(rows[0].score) else None
    for i, row in enumerate(rows):
        histories = [r.history for r in row.runs if r.history]
        if not histories:
            continue
        color = colors(i % 20 if len(rows) <= 20 else i / max(len(rows) - 1, 1))
        length = max(len(h) for h in histories)
        epochs = np.arange(1, length + 1)
        for ax, (key, _) in zip(axes[0], CURVES):
            values = np.full((len(histories), length), np.nan)
            for j, history in enumerate(histories):
                values[j, : len(history)] = [h.get(key, math.nan) for h in history]
            if np.isnan(values).all():
                continue
            mean = np.nanmean(values, axis=0)
            label = ("* " if row is best else "") + (row.name if len(row.name) <= 60 else row.name[:57] + "...")
            ax.plot(epochs, mean, marker="o" if length < 30 else None, markersize=3, color=color,
                    linewidth=2.5 if row is best else 1.2, label=label)
            if len(histories) > 1:
                std = np.nanstd(values, axis=0)
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15)
    for ax, (_, title) in zip(axes[0], CURVES):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0][-1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False)
        rows_of_legend = math.ceil(len(handles) / 3)
        fig.tight_layout(rect=(0, min(0.5, 0.06 * rows_of_legend + 0.02), 1, 1))
    else:
        fig.tight_layout()
    return fig


def summarize(paths: list[Path], out_dir: Path, what: str = "runs") -> Summary:
    """The summary over every run in `paths` (run or sweep directories), printed and written to `out_dir`."""
    run_dirs: list[Path] = []
    for path in paths:
        run_dirs += [p for p in find_runs(Path(path)) if p not in run_dirs]
    if not run_dirs:
        raise DlrunError(f"no runs found in {', '.join(map(str, paths))} (a run directory holds metrics.json)")
    # Within one sweep the swept values name the rows; runs from anywhere else are named by their path too.
    parents = {p.parent for p in run_dirs}
    with_names = len(parents) > 1 or not (parents.pop() / "multirun.yaml").is_file()
    summary = build_summary([Run.load(p) for p in run_dirs], Path(out_dir), with_names)
    title = f"{len(run_dirs)} {what} in {', '.join(map(str, paths))}, ranked by {summary.monitor}"
    # TensorBoard over the runs' closest common folder shows them overlaid.
    print_summary(summary, title, with_names, Path(os.path.commonpath([str(p) for p in run_dirs])))
    write_summary(summary, title, with_names)
    return summary


# ----------------------------------------------------------------------------------------------------
# `dlrun compare`


def compare_main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="dlrun compare",
        description="One table and one plot over existing runs: run directories, sweep directories, or a mix.",
        epilog="Example:\n  dlrun compare outputs/sweeps/2024-05-01_10-00-00 outputs/runs/2024-05-01_11-00-00_mlp_mnist",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def usage_error(message: str):
        raise DlrunError(f"compare: {message} (usage: dlrun compare PATH... [--out DIR])")

    parser.error = usage_error
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a run directory or a sweep directory")
    parser.add_argument("--out", metavar="DIR",
                        help="where summary.csv, summary.md and curves.png go (default: the sweep directory when "
                             "PATH is one sweep, else outputs/compare/<date>_<time>)")
    opts = parser.parse_args(args)
    paths = [Path(p) for p in opts.paths]
    for path in paths:
        if not path.is_dir():
            raise DlrunError(f"{path}: no such directory (give a run or sweep directory)")
        if not is_run(path) and not find_runs(path):
            raise DlrunError(f"{path}: no runs in it (a run directory holds metrics.json)")
    if opts.out:
        out = Path(opts.out)
    elif len(paths) == 1 and (paths[0] / "multirun.yaml").is_file():  # one sweep: refresh its own summary
        out = paths[0]
    else:
        out = Path("outputs") / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and not out.is_dir():
        raise DlrunError(f"--out {out}: is a file, not a directory")
    summarize(paths, out)
