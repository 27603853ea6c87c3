"""One summary over many runs (a sweep's jobs, or any run directories): a console table, summary.csv,
summary.md and curves.png, ranked by the monitored metric, with mean ± std over seeds when `seed` is swept."""

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.markup import escape
from rich.table import Table

from dlrun.core.errors import DlrunError
from dlrun.core.io import read_yaml, write_csv, write_json, write_text
from dlrun.observe.console import Console
from dlrun.observe.figures import save_figure
from dlrun.observe.tables import markdown_table, plain_table
from dlrun.results.runs import Run, find_runs, float_or_nan

FINISHED = ("completed", "diverged")  # a rerun would give the same answer: skip these when resuming
SEED_AXIS = "seed"
CURVES = (("val/accuracy", "val accuracy"), ("val/loss", "val loss"), ("train/loss", "train loss"))


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
    rows: list[Row]  # jobs, sorted by the objective, best first
    groups: list[Row] | None  # with `seed` swept: jobs grouped by the other axes, best first
    axes: list[str]
    monitor: str
    mode: str
    out_dir: Path
    search: dict | None = None  # the best parameters found by an optuna search

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
            (
                _row(
                    ",".join(f"{a}={v}" for a, v in zip(others, values)) or "all seeds", dict(zip(others, values)), group, monitor
                )
                for values, group in by_values.items()
            ),
            key=rank,
        )
    return Summary(rows, groups, axes, monitor, mode, out_dir, read_yaml(out_dir / "optimization_results.yaml"))


def _row(name: str, values: dict, runs: list[Run], monitor: str) -> Row:
    row = Row(name, values, runs)
    for run in row.finished:
        m = run.metrics
        best, test = m.get("best", {}), m.get("test", {})
        row.objective.append(float_or_nan(best.get(monitor)))
        row.best_epoch.append(float_or_nan(best.get("epoch")))
        row.test_accuracy.append(float_or_nan(test.get("accuracy")))
        row.test_f1.append(float_or_nan(test.get("f1")))
    for run in row.runs:
        row.epochs.append(float_or_nan(run.metrics.get("epochs_completed", 0)))
        row.time_s.append(float_or_nan(run.metrics.get("wall_time_s")))
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
    header = [
        "",
        *(["run"] if with_names else []),
        *axes,
        *(["seeds"] if grouped else []),
        f"best {summary.monitor}",
        "epoch",
        "test acc",
        "test f1",
        "epochs",
        "time",
        "status",
    ]
    best = rows[0] if rows and not math.isnan(rows[0].score) else None
    body = []
    for row in rows:
        body.append(
            [
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
            ]
        )
    return header, body


def print_summary(summary: Summary, title: str, with_names: bool, logdir: Path) -> None:
    console = Console()
    grouped = summary.groups is not None
    header, body = table_cells(summary, summary.ranked, grouped, with_names and not grouped)
    if console.tty:
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


def write_summary(summary: Summary, title: str, with_names: bool) -> None:
    """summary.csv and summary.json (one row per job), summary.md (the tables) and curves.png."""
    out = summary.out_dir
    out.mkdir(parents=True, exist_ok=True)
    header, rows = job_rows(summary)
    write_csv(out / "summary.csv", header, rows)
    failed = [row.name for row in summary.failed]
    records = [_record(header, cells) for cells in rows]
    write_json(
        out / "summary.json",
        {"title": title, "monitor": summary.monitor, "mode": summary.mode, "failed": failed, "rows": records},
    )
    write_text(out / "summary.md", summary_markdown(summary, title, with_names))
    save_figure(curves_figure(summary), out / "curves.png")


def job_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of summary.csv: one row per job, every digit kept."""
    header = [
        "run",
        *summary.axes,
        f"best_{summary.monitor}",
        "best_epoch",
        "test/accuracy",
        "test/f1",
        "epochs",
        "wall_time_s",
        "status",
        "error",
        "path",
    ]
    rows = []
    for row in summary.rows:
        run = row.runs[0]
        numbers = [row.objective, row.best_epoch, row.test_accuracy, row.test_f1, row.epochs, row.time_s]
        rows.append(
            [
                row.name,
                *[row.values[a] for a in summary.axes],
                *map(_csv, numbers),
                run.status,
                run.metrics.get("error", ""),
                os.path.relpath(run.path, summary.out_dir),
            ]
        )
    return header, rows


def summary_markdown(summary: Summary, title: str, with_names: bool) -> str:
    parts = [
        f"# {title}",
        "",
        f"Objective: {summary.monitor} ({summary.mode}imize), best marked *. Jobs: {len(summary.rows)}, "
        f"not finished: {len(summary.failed)}. A failed job's traceback is in its log file.",
        "",
    ]
    if summary.search and "best_params" in summary.search:
        parts += [f"Optuna's best parameters: {_params(summary.search)}", ""]
    if summary.groups is not None:
        by_config = markdown_table(*table_cells(summary, summary.groups, True, False))
        parts += ["## By configuration, mean ± std over seeds", "", by_config, "", "## Every job", ""]
    parts += [markdown_table(*table_cells(summary, summary.rows, False, with_names)), ""]
    return "\n".join(parts)


def _record(header: list[str], cells: list[str]) -> dict:
    """A summary.csv row as JSON: numbers as numbers, the swept values as the text the overrides gave."""
    record = dict(zip(header, cells))
    for key in header[-9:-3]:  # the objective, best epoch, test accuracy and F1, epochs and wall time
        record[key] = float(record[key]) if record[key] else None
    return record


def _csv(values: list[float]) -> str:
    value = _mean(values)
    return "" if math.isnan(value) else f"{value:.6g}"


def curves_figure(summary: Summary):
    """Val accuracy, val loss and train loss per epoch, one line per job (or per group's mean, shaded ± std)."""
    rows = summary.ranked
    fig = Figure(figsize=(5 * len(CURVES), 4.2))
    axes = fig.subplots(1, len(CURVES), squeeze=False)
    colors = colormaps["tab10" if len(rows) <= 10 else "tab20" if len(rows) <= 20 else "viridis"]
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
            ax.plot(
                epochs,
                mean,
                marker="o" if length < 30 else None,
                markersize=3,
                color=color,
                linewidth=2.5 if row is best else 1.2,
                label=label,
            )
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
