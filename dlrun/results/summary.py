"""One summary over many runs (a sweep's jobs, or any run directories): a console table, summary.csv,
summary.md and curves.png, ranked by the monitored metric, with mean ± std over seeds when `seed` is swept."""

import math
import os
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlrun.core.errors import DlrunError
from dlrun.core.io import read_yaml, write_csv, write_json, write_text
from dlrun.core.text import did_you_mean
from dlrun.observe import drawing
from dlrun.observe.console import Console
from dlrun.observe.png import write_png
from dlrun.observe.tables import markdown_table, print_table
from dlrun.results.runs import Run, find_runs, float_or_nan

FINISHED = ("completed", "diverged", "pruned")  # a rerun would give the same answer: skip these when resuming
SEED_AXIS = "seed"
CURVES = (("val/accuracy", "val accuracy"), ("val/loss", "val loss"), ("train/loss", "train loss"))
REGRESSION_SCORES = ("mae", "rmse", "r2")
REGRESSION_CURVES = (("val/rmse", "val rmse"), ("val/loss", "val loss"), ("train/loss", "train loss"))
AGGREGATES = ("last", "min", "max", "best")
# Keys that never tell runs apart (resume's run, where files go, Hydra's own), and keys that change what is
# logged but not what is learned: those show only when nothing else tells two runs apart.
BOOKKEEPING = ("resume", "hydra", "paths.", "search")  # search: an Optuna trial's study and number
QUIET = ("logging.", "trainer.log_every_n_steps")


@dataclass(frozen=True)
class SummaryChoice:
    """What a summary ranks by and shows: a sweep's `hydra.callbacks.sweep_summary`, or `dlrun compare`'s flags."""

    rank_by: str | None = None  # a column (see parse_column); None: trainer.monitor's best value
    mode: str | None = None  # min or max; None: trainer.mode for the monitor, min for a loss, else max
    columns: tuple[str, ...] | list[str] | None = None  # None: the best monitored value, its epoch, test accuracy and F1


@dataclass(frozen=True)
class Column:
    """One number (or text) per run, as `parse_column` reads a name such as `train/loss@last`."""

    key: str
    agg: str | None
    header: str  # the console and summary.md
    csv: str  # summary.csv and summary.json

    def value(self, run: Run):
        if self.key == RAREST_RECALL:
            return rarest_recall(run)
        return run.metric(self.key, self.agg)


# The test recall of the class with the fewest training examples: what an imbalanced training set costs,
# which accuracy and even macro F1 dilute over the other classes (experiment=imbalance).
RAREST_RECALL = "test/recall_rarest"


def rarest_recall(run: Run):
    """From metrics.json's train_class_counts and test_per_class.recall; None for runs that lack them."""
    counts = run.metrics.get("train_class_counts")
    recall = (run.metrics.get("test_per_class") or {}).get("recall")
    if not isinstance(counts, dict) or not isinstance(recall, dict):
        return None
    counted = {c: n for c, n in counts.items() if isinstance(n, int | float) and not isinstance(n, bool)}
    if not counted:
        return None
    value = recall.get(min(counted, key=counted.get))  # ties: the first class
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_column(spec: str, monitor: str) -> Column:
    """`KEY[@AGG]`. KEY: val/<metric> (its value at the best epoch), test/<metric> (the test results), train/<metric>
    (its last epoch), epoch (the best one), verdict (the run's diagnosis), test/recall_rarest (the test recall of the class
    with the fewest training examples), or a dotted key of metrics.json
    (parameters.total). @AGG, over history.csv's rows: @last (the last epoch), @min, @max, @best (at the best epoch)."""
    key, _, agg = str(spec).strip().partition("@")
    if not key or (agg and agg not in AGGREGATES):
        raise DlrunError(f"{spec}: not a column: KEY[@AGG], AGG one of {', '.join(AGGREGATES)} (e.g. train/loss@last)")
    if key.startswith("test/") and agg:
        raise DlrunError(f"{spec}: test results have one value per run; name it {key}")
    if key.startswith("train/") and not agg:
        agg = "last"
    if agg:
        return Column(key, agg, f"{key} ({agg})", f"{key} ({agg})")
    if key == monitor:
        return Column(key, None, f"best {key}", f"best_{key}")
    if key == "epoch":
        return Column(key, None, "best epoch", "best_epoch")
    if key == RAREST_RECALL:
        return Column(key, None, "test recall of the rarest class", key)
    if key.startswith("test/"):
        name = key[len("test/") :]
        return Column(key, None, "test acc" if name == "accuracy" else f"test {name}", key)
    if key.startswith("val/"):
        return Column(key, None, f"{key} (best epoch)", f"{key} (best epoch)")
    return Column(key, None, key, key)


def default_columns(monitor: str) -> list[str]:
    """The best monitored value, its epoch, and the test scores that say most: a regression's (monitored by
    its error or r2) rmse and r2, a classification's accuracy and F1."""
    if monitor.split("@")[0].split("/")[-1] in REGRESSION_SCORES:
        return [monitor, "epoch", "test/rmse", "test/r2"]
    return [monitor, "epoch", "test/accuracy", "test/f1"]


@dataclass
class Row:
    """One job, or with `seed` swept, one group of jobs that differ only by seed."""

    name: str
    values: dict[str, str]
    runs: list[Run]
    cells: dict[str, list] = field(default_factory=dict)  # Column.csv -> the finished runs' values (None: none)
    epochs: list[float] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    score: float = math.nan  # the ranking column's mean

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
            error = run.problem or run.metrics.get("error")  # unreadable: which file, and why
            return f"{run.status}: {error}" if error else run.status
        return ", ".join(f"{n} {s}" for s, n in counts.items())


@dataclass
class Summary:
    rows: list[Row]  # jobs, sorted by the ranking column, best first
    groups: list[Row] | None  # with `seed` swept: jobs grouped by the other axes, best first
    axes: list[str]
    monitor: str
    mode: str  # for the ranking column
    out_dir: Path
    search: dict | None = None  # the best parameters found by an optuna search
    rank: Column | None = None
    shown: list[Column] = field(default_factory=list)  # the metric columns of the tables
    saved: list[Column] = field(default_factory=list)  # those of summary.csv: the shown ones, then the defaults
    texts: set[str] = field(default_factory=set)  # the csv names of the columns that hold text
    missing: list[str] = field(default_factory=list)  # chosen columns no finished run has

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.rows if row.runs[0].status not in FINISHED]

    @property
    def ranked(self) -> list[Row]:
        return self.groups if self.groups is not None else self.rows

    @property
    def rank_name(self) -> str:
        return self.monitor if self.rank is None or self.rank.key == self.monitor and not self.rank.agg else self.rank.header


def swept_axes(runs: list[Run]) -> list[str]:
    """The overridden keys whose values differ between runs (all of them for a single run), bookkeeping left out."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys and not k.startswith(BOOKKEEPING)]
    if len(runs) == 1:
        return [k for k in keys if not k.startswith(QUIET)]
    keys = [k for k in keys if len({run.value(k) for run in runs}) > 1]
    kept = [k for k in keys if not k.startswith(QUIET)]

    def distinct(axes):
        return len({tuple(run.value(a) for a in axes) for run in runs})

    return kept if distinct(kept) == distinct(keys) else keys


def build_summary(runs: list[Run], out_dir: Path, with_names: bool, choice: SummaryChoice | None = None) -> Summary:
    choice = choice or SummaryChoice()
    axes = swept_axes(runs)
    monitor = _most_common([r.monitor for r in runs])
    rank = parse_column(choice.rank_by or monitor, monitor)
    if rank.key == "verdict":
        raise DlrunError("rank by verdict: it is a word; rank by a number (val/loss@min, test/accuracy, ...)")
    mode = choice.mode
    if mode is None:
        mode = _most_common([r.mode for r in runs]) if rank.key == monitor and not rank.agg else _mode_for(rank.key)
    if mode not in ("min", "max"):
        raise DlrunError(f"mode={mode}: must be min or max")
    shown = _unique([rank, *(parse_column(c, monitor) for c in (choice.columns or default_columns(monitor)))])
    if not any(r.metric("verdict") for r in runs):  # runs made before diagnoses existed: no column
        shown = [c for c in shown if c.key != "verdict"]
    elif "verdict" not in [c.key for c in shown]:
        shown.append(parse_column("verdict", monitor))  # among newer runs, such a run's cell is blank
    saved = _unique([*shown, *(parse_column(c, monitor) for c in default_columns(monitor))])

    def label(run: Run) -> str:
        if with_names:
            return f"{run.path.parent.name}/{run.path.name}"
        return ",".join(f"{a}={run.value(a)}" for a in axes) or run.path.name

    rows = sorted((_row(label(r), {a: r.value(a) for a in axes}, [r], saved, rank) for r in runs), key=_ranker(mode))
    groups = _seed_groups(runs, axes, saved, rank, mode) if SEED_AXIS in axes else None
    texts = {c.csv for c in saved if any(isinstance(v, str) for row in rows for v in row.cells[c.csv])}
    finished = [r for r in runs if r.status in FINISHED]
    missing = [c.key for c in shown if c.key != "verdict" and finished and all(c.value(r) is None for r in finished)]
    search = read_yaml(out_dir / "optimization_results.yaml")
    return Summary(rows, groups, axes, monitor, mode, out_dir, search, rank, shown, saved, texts, missing)


def _seed_groups(runs: list[Run], axes: list[str], columns: list[Column], rank: Column, mode: str) -> list[Row]:
    """The runs that differ only by seed, one row each, ranked by the mean."""
    others = [a for a in axes if a != SEED_AXIS]
    by_values: dict[tuple, list[Run]] = {}
    for run in runs:
        by_values.setdefault(tuple(run.value(a) for a in others), []).append(run)
    groups = []
    for values, group in by_values.items():
        name = ",".join(f"{a}={v}" for a, v in zip(others, values)) or "all seeds"
        groups.append(_row(name, dict(zip(others, values)), group, columns, rank))
    return sorted(groups, key=_ranker(mode))


def _mode_for(key: str) -> str:
    return "min" if "loss" in key.rsplit("/", 1)[-1] else "max"


def _unique(columns: list[Column]) -> list[Column]:
    seen: dict[str, Column] = {}
    for column in columns:
        seen.setdefault(column.csv, column)
    return list(seen.values())


def _row(name: str, values: dict, runs: list[Run], columns: list[Column], rank: Column) -> Row:
    row = Row(name, values, runs)
    for column in columns:
        row.cells[column.csv] = [column.value(run) for run in row.finished]
    for run in row.runs:
        row.epochs.append(float_or_nan(run.metrics.get("epochs_completed", 0)))
        row.time_s.append(float_or_nan(run.metrics.get("wall_time_s")))
    row.score = _mean(_numbers(row.cells[rank.csv]))
    return row


def _numbers(values: list) -> list[float]:
    return [float_or_nan(v) for v in values if v is not None and not isinstance(v, str | bool)]


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


def _fmt(values: list[float], digits: int | None = 4, spread: bool = True) -> str:
    """Mean (± std over several values) with `digits` decimals; digits None: 4 significant digits (an lr of 1e-05)."""
    mean, std = _mean(values), _std(values)
    if math.isnan(mean):
        return "-"
    text = f"{mean:.4g}" if digits is None else f"{mean:.{digits}f}"
    if not spread or math.isnan(std):
        return text
    return f"{text} ± {std:.4g}" if digits is None else f"{text} ± {std:.{digits}f}"


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
    """The header and the rows of text of a summary table (console, markdown). With the best epoch shown, its
    cell holds the epochs run too (`7/10`: best at 7 of 10), one column narrower."""
    axes = [a for a in summary.axes if not (grouped and a == SEED_AXIS)]
    with_epochs = "epoch" not in [c.key for c in summary.shown]
    header = [
        "",
        *(["run"] if with_names else []),
        *axes,
        *(["seeds"] if grouped else []),
        *(c.header for c in summary.shown),
        *(["epochs"] if with_epochs else []),
        "time",
        "status",
    ]
    digits = {c.csv: _digits(c, summary.rows) for c in summary.shown}
    best = rows[0] if rows and not math.isnan(rows[0].score) else None
    body = []
    for row in rows:
        epochs = _fmt(row.epochs, 0, spread=False)
        cells = {c.csv: _cell(row.cells[c.csv], digits[c.csv], c.csv in summary.texts) for c in summary.shown}
        if not with_epochs:
            cells["best_epoch"] += f"/{epochs}"
        body.append(
            [
                "*" if row is best else "",
                *([row.name] if with_names else []),
                *[_short(row.values.get(a, "")) for a in axes],
                *([str(len(row.runs))] if grouped else []),
                *cells.values(),
                *([epochs] if with_epochs else []),
                _fmt_time(row.time_s),
                row.status,
            ]
        )
    return header, body


def _digits(column: Column, rows: list[Row]) -> int | None:
    """Decimals for a column: 4 for metrics, none for counts (epoch, parameters.total), else 4 significant digits."""
    if column.key == "epoch":
        return 0
    if column.key.startswith(("train/", "val/", "test/")):
        return 4
    numbers = [v for row in rows for v in _numbers(row.cells.get(column.csv, [])) if math.isfinite(v)]
    return 0 if numbers and all(v.is_integer() for v in numbers) else None


def _cell(values: list, digits: int | None, text: bool) -> str:
    """A group's values: numbers as mean ± std, texts as they are (`2 overfitting, 1 good_fit` when they differ)."""
    if text:
        return _counted([str(v) for v in values if v is not None and v != ""])
    return _fmt(_numbers(values), digits, spread=digits != 0)


def _counted(texts: list[str]) -> str:
    counts = {t: texts.count(t) for t in dict.fromkeys(texts)}
    if len(counts) <= 1:
        return next(iter(counts), "")
    return ", ".join(f"{n} {t}" for t, n in counts.items())


def print_summary(summary: Summary, title: str, with_names: bool, logdir: Path) -> None:
    console = Console()
    grouped = summary.groups is not None
    header, body = table_cells(summary, summary.ranked, grouped, with_names and not grouped)
    numeric = {"seeds", "epochs", "time", *(c.header for c in summary.shown if c.csv not in summary.texts)}
    texts = [i for i, name in enumerate(header) if name not in numeric and i > 0]
    body, cut = print_table(console, title, header, body, texts, highlight=lambda cells: cells[0] == "*")
    lines = [f"note: no run has {key} (a column that names nothing shows -)" for key in summary.missing]
    if summary.failed and (grouped or cut):  # the reasons in full, where the table has none or cut them
        lines += ["not finished:", *[f"  {row.name}: {row.status}" for row in summary.failed]]
    if summary.search and "best_params" in summary.search:
        lines.append(f"optuna best parameters: {_params(summary.search)}")
    lines += importance_lines(summary.search)
    lines.append(f"summary: {summary.out_dir / 'summary.md'}, summary.csv, curves.png")
    lines.append(f"open them with: tensorboard --logdir {logdir}")
    for line in lines:
        print(line, flush=True)


def importance_lines(search: dict | None) -> list[str]:
    """The parameters' importance an Optuna search measured (fANOVA; written with 10 completed trials or more)."""
    importance = (search or {}).get("importance")
    if not isinstance(importance, dict) or not importance:
        return []
    width = max(len(str(k)) for k in importance)
    rows = [f"  {k!s:<{width}}  {float_or_nan(v):.3f}" for k, v in importance.items()]
    return ["parameter importance (fANOVA over the completed trials; they sum to 1):", *rows]


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
    numeric = {"epochs", "wall_time_s", *(c.csv for c in summary.saved if c.csv not in summary.texts)}
    records = [_record(header, cells, numeric) for cells in rows]
    write_json(
        out / "summary.json",
        {
            "title": title,
            "monitor": summary.monitor,
            "rank_by": summary.rank.csv if summary.rank else f"best_{summary.monitor}",
            "mode": summary.mode,
            "failed": failed,
            "rows": records,
        },
    )
    write_text(out / "summary.md", summary_markdown(summary, title, with_names))
    # A sweep's end: its jobs' helpers have matplotlib loaded and nothing to draw; `dlrun compare` draws it here.
    write_png(drawing.draw_with_helpers_if_running("sweep_curves_figure", *curve_lines(summary)).png, out / "curves.png")


def job_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of summary.csv: one row per job, every digit kept."""
    header = ["run", *summary.axes, *(c.csv for c in summary.saved), "epochs", "wall_time_s", "status", "error", "path"]
    rows = []
    for row in summary.rows:
        run = row.runs[0]
        cells = [
            _counted([str(v) for v in row.cells[c.csv] if v]) if c.csv in summary.texts else _csv(_numbers(row.cells[c.csv]))
            for c in summary.saved
        ]
        rows.append(
            [
                row.name,
                *[row.values[a] for a in summary.axes],
                *cells,
                _csv(row.epochs),
                _csv(row.time_s),
                run.status,
                run.problem or run.metrics.get("error", ""),
                os.path.relpath(run.path, summary.out_dir),
            ]
        )
    return header, rows


def summary_markdown(summary: Summary, title: str, with_names: bool) -> str:
    order = "lowest" if summary.mode == "min" else "highest"
    parts = [
        f"# {title}",
        "",
        f"Ranked by {summary.rank_name}, {order} first; the top row is marked *. Jobs: {len(summary.rows)}, "
        f"not finished: {len(summary.failed)}. A failed job's traceback is in its log file.",
        "",
    ]
    if summary.search and "best_params" in summary.search:
        parts += [f"Optuna's best parameters: {_params(summary.search)}", ""]
        if importance_lines(summary.search):
            parts += ["```", *importance_lines(summary.search), "```", ""]
    if summary.groups is not None:
        by_config = markdown_table(*table_cells(summary, summary.groups, True, False))
        parts += ["## By configuration, mean ± std over seeds", "", by_config, "", "## Every job", ""]
    parts += [markdown_table(*table_cells(summary, summary.rows, False, with_names)), ""]
    return "\n".join(parts)


def _record(header: list[str], cells: list[str], numeric: set[str]) -> dict:
    """A summary.csv row as JSON: numbers as numbers, the swept values as the text the overrides gave."""
    record = dict(zip(header, cells))
    for key in numeric:
        record[key] = float(record[key]) if record.get(key) else None
    return record


def _csv(values: list[float]) -> str:
    value = _mean(values)
    return "" if math.isnan(value) else f"{value:.10g}"


def curve_lines(summary: Summary) -> tuple[list[dict], tuple]:
    """What curves.png draws: val accuracy (a regression's rmse), val loss and train loss per epoch, one line per job
    (or per group's mean over its seeds, with their std), ranked best first; and the panels' (key, title)."""
    rows = summary.ranked
    # regression runs have no accuracy: their rmse takes its panel
    regression = not any("val/accuracy" in h[0] for r in rows for h in (run.history for run in r.runs) if h)
    curves = REGRESSION_CURVES if regression and any(run.history for r in rows for run in r.runs) else CURVES
    best = rows[0] if rows and not math.isnan(rows[0].score) else None
    lines = []
    for i, row in enumerate(rows):
        histories = [r.history for r in row.runs if r.history]
        if not histories:
            continue
        length = max(len(h) for h in histories)
        values = {}
        for key, _ in curves:
            table = np.full((len(histories), length), np.nan)
            for j, history in enumerate(histories):
                table[j, : len(history)] = [h.get(key, math.nan) for h in history]
            if not np.isnan(table).all():
                values[key] = (np.nanmean(table, axis=0), np.nanstd(table, axis=0) if len(histories) > 1 else None)
        name = row.name if len(row.name) <= 60 else row.name[:57] + "..."
        lines.append({"index": i, "of": len(rows), "name": name, "best": row is best, "values": values})
    return lines, curves


def summarize(
    paths: list[Path],
    out_dir: Path,
    what: str = "runs",
    choice: SummaryChoice | None = None,
    strict: bool = False,
    started_only: bool = False,
) -> Summary:
    """The summary over every run in `paths` (run or sweep directories), printed and written to `out_dir`.
    `strict`: a chosen column that no finished run has is an error (`dlrun compare`), not a note (a sweep's end).
    `started_only`: leave out directories of runs that never started (no metrics.json: only Hydra's `.hydra/`)."""
    run_dirs: list[Path] = []
    for path in paths:
        run_dirs += [p for p in find_runs(Path(path)) if p not in run_dirs]
    if started_only:
        hidden = [p for p in run_dirs if not (p / "metrics.json").is_file()]
        run_dirs = [p for p in run_dirs if p not in hidden]
        if hidden:
            print(f"({len(hidden)} never-started run director{'y' if len(hidden) == 1 else 'ies'} left out; --all shows them)")
    if not run_dirs:
        raise DlrunError(f"no runs found in {', '.join(map(str, paths))} (a run directory holds metrics.json)")
    # Within one sweep the swept values name the rows; runs from anywhere else are named by their path too.
    parents = {p.parent for p in run_dirs}
    with_names = len(parents) > 1 or not (parents.pop() / "multirun.yaml").is_file()
    runs = [Run.load(p, resolve_when_needed=True) for p in run_dirs]
    summary = build_summary(runs, Path(out_dir), with_names, choice)
    if strict and summary.missing:
        raise DlrunError(_missing_message(summary.missing, runs))
    ranked = f"ranked by {summary.rank_name}, {'lowest' if summary.mode == 'min' else 'highest'} first"
    title = f"{len(run_dirs)} {what} in {', '.join(map(str, paths))}, {ranked}"
    if len(paths) > 1 and len(title) > shutil.get_terminal_size().columns:  # summary.md names them all
        title = f"{len(run_dirs)} {what} in {len(paths)} folders, {ranked}"
    # TensorBoard over the runs' closest common folder shows them overlaid.
    print_summary(summary, title, with_names, Path(os.path.commonpath([str(p) for p in run_dirs])))
    write_summary(summary, f"{len(run_dirs)} {what} in {', '.join(map(str, paths))}, {ranked}", with_names)
    return summary


def _missing_message(missing: list[str], runs: list[Run]) -> str:
    known = set()
    for run in runs:
        known |= {k for row in run.history for k in row}
        known |= {f"test/{k}" for k in run.metrics.get("test") or {}} | set(run.metrics.get("best") or {})
    hints = "".join(did_you_mean(key, known) for key in missing[:1])
    return f"no run has {', '.join(missing)}{hints} (columns: val/<metric>, test/<metric>, train/<metric>@last, verdict...)"


def saved_choice(paths: list[Path]) -> SummaryChoice:
    """What the sweeps among `paths` ranked by and showed (their multirun.yaml), when they agree."""
    found = set()
    for path in paths:
        saved = read_yaml(Path(path) / "multirun.yaml")
        if not isinstance(saved, dict):
            continue
        conf = ((saved.get("hydra") or {}).get("callbacks") or {}).get("sweep_summary") or {}
        columns = conf.get("columns")
        found.add((conf.get("rank_by"), conf.get("mode"), tuple(columns) if isinstance(columns, list) and columns else None))
    return SummaryChoice(*found.pop()) if len(found) == 1 else SummaryChoice()
