"""`dlrun runs [PATH...]`: every run under some folders (default ./outputs), single runs and sweep jobs alike,
newest first, one row each; filters on status, config and age; a table, --json, or --paths for other commands."""

import argparse
import json
import math
import sys
import time
from pathlib import Path

from dlrun.core.errors import DlrunError
from dlrun.observe.console import Console
from dlrun.observe.tables import print_table
from dlrun.results import listing
from dlrun.results.listing import Entry

USAGE = (
    "dlrun runs [PATH...] [--status S] [--where KEY=VALUE] [--since 2d] [--sort [-]KEY] [--reverse] [--limit N] "
    "[--json | --paths] [--all]"
)
EXAMPLES = """Examples:
  dlrun runs                                   # every run in ./outputs, newest first
  dlrun runs --status crashed,failed           # what needs a look
  dlrun runs --where model=cnn --where dataset.name=mnist --since 2d
  dlrun runs --sort test/accuracy --limit 5    # the five best by test accuracy (--sort=-test/accuracy: the worst)
  dlrun compare $(dlrun runs --where model=cnn --paths)
  dlrun runs outputs/sweeps/<dir> --json"""
TEST_HEADERS = {"accuracy": "test acc", "f1": "test f1", "rmse": "test rmse", "r2": "test r2"}


def main(args: list[str]) -> None:
    opts = _parser().parse_args(_joined_sort(args))
    paths = [Path(p) for p in opts.folders or ["outputs"]]
    for path in paths:
        if not path.is_dir():
            hint = "no runs here yet; " if not opts.folders else ""
            raise DlrunError(f"{path}: no such directory ({hint}give a folder of runs, a sweep or a run directory)")
    statuses = [s.strip().replace("-", " ") for value in opts.status or [] for s in value.split(",") if s.strip()]
    wheres = [listing.parse_where(spec) for spec in opts.where or []]
    since = listing.parse_since(opts.since) if opts.since is not None else None
    if opts.limit is not None and opts.limit < 1:
        raise DlrunError(f"runs: --limit {opts.limit}: must be 1 or more")
    entries, hidden = listing.list_runs(paths, started_only=not (opts.all or "not started" in statuses))
    found = len(entries)
    if statuses:
        entries = listing.filter_status(entries, statuses)
    entries = listing.filter_where(entries, wheres)
    if since is not None:
        entries = [e for e in entries if e.started is not None and e.started >= time.time() - since]
    key, reverse = (opts.sort[1:], not opts.reverse) if opts.sort.startswith("-") else (opts.sort, opts.reverse)
    entries = listing.sort_entries(entries, key, reverse)
    matched = len(entries)
    entries = entries[: opts.limit] if opts.limit else entries
    if opts.json:
        print(json.dumps([entry.record() for entry in entries], indent=2))
    elif opts.paths_only:
        print("\n".join(listing.shown_path(entry.path) for entry in entries), flush=True)
    else:
        print_runs(entries, _title(paths, len(entries), matched, found, _order(key, reverse)))
    if hidden:
        note = f"({hidden} never-started run director{'y' if hidden == 1 else 'ies'} left out; --all shows them)"
        print(note, file=sys.stderr if opts.json or opts.paths_only else sys.stdout)


def _order(key: str, reverse: bool) -> str:
    if key == "date":
        return "oldest first" if reverse else "newest first"
    return f"sorted by {key}" + (", reversed" if reverse else "")


def _title(paths: list[Path], shown: int, matched: int, found: int, order: str) -> str:
    where = ", ".join(map(str, paths))
    if not found:
        return f"no runs in {where} (a run directory holds metrics.json)"
    if not matched:
        return f"no run in {where} matches (of {found})"
    count = f"{shown} of {matched}" if shown < matched else str(shown)
    return f"{count} run{'s' if matched != 1 else ''} in {where}, {order}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlrun runs",
        description="Every run under the folders given (default ./outputs), single runs and sweep jobs alike, newest "
        "first: status (a run whose process is gone shows as crashed), model, dataset, epochs, the best monitored "
        "value, test scores, the learning-curve verdict, wall time and path. Reads metrics.json, .hydra/ and history.csv.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.error = _usage_error
    parser.add_argument(
        "folders", nargs="*", metavar="PATH", help="a folder of runs, a sweep or a run directory (default: outputs)"
    )
    parser.add_argument(
        "--status",
        action="append",
        metavar="S",
        help=f"only runs with this status; repeat it or give a comma list ({', '.join(listing.STATUSES)})",
    )
    parser.add_argument(
        "--where",
        action="append",
        metavar="KEY=VALUE",
        help="only runs whose config has it: a config group's option (model=cnn) or a dotted key of the composed "
        "config (dataset.name=mnist, optimizer.lr=0.01); VALUE may be a comma list; repeat it for more",
    )
    parser.add_argument("--since", metavar="AGE", help="only runs started within AGE: 30m, 12h, 2d, 1w")
    parser.add_argument(
        "--sort",
        default="date",
        metavar="[-]KEY",
        help=f"the order: date (newest first, the default), a field ({', '.join(listing.FIELDS[1:])}) or a metric "
        "(val/loss at the best epoch, test/f1_micro, parameters.total); numbers best first, -KEY the other way",
    )
    parser.add_argument("--reverse", action="store_true", help="the other order")
    parser.add_argument("--limit", type=_count, metavar="N", help="the first N runs only")
    outputs = parser.add_mutually_exclusive_group()
    outputs.add_argument("--json", action="store_true", help="a JSON list of objects with the table's fields")
    outputs.add_argument(
        "--paths",
        dest="paths_only",
        action="store_true",
        help="only the runs' paths, one a line, for other commands",
    )
    parser.add_argument("--all", action="store_true", help="also list run directories that never started (as `not started`)")
    return parser


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a whole number") from None


def _joined_sort(args: list[str]) -> list[str]:
    """`--sort -best`: argparse would read `-best` as a flag; it is the value of --sort."""
    joined, i = [], 0
    while i < len(args):
        if args[i] == "--sort" and i + 1 < len(args) and args[i + 1].startswith("-") and len(args[i + 1]) > 1:
            joined.append(f"--sort={args[i + 1]}")
            i += 2
            continue
        joined.append(args[i])
        i += 1
    return joined


def table_cells(entries: list[Entry]) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the rows of text, and which columns hold text (the ones cut to fit the terminal)."""
    monitors = {entry.monitor for entry in entries if entry.best is not None}
    one_monitor = len(monitors) <= 1
    tests = [name for name in listing.TEST_SCORES if any(e.field(f"test/{name}") is not None for e in entries)]
    verdicts = any(entry.field("verdict") for entry in entries)
    header = [
        "date",
        "status",
        "model",
        "dataset",
        "epochs",
        *([] if one_monitor else ["monitor"]),
        f"best {monitors.pop()}" if len(monitors) == 1 else "best",
        *(TEST_HEADERS[name] for name in tests),
        *(["verdict"] if verdicts else []),
        "time",
        "path",
    ]
    body = []
    for entry in entries:
        body.append(
            [
                time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.started)) if entry.started is not None else "-",
                status_text(entry),
                str(entry.field("model") or ""),
                str(entry.field("dataset") or ""),
                _epochs(entry),
                *([] if one_monitor else [entry.monitor if entry.best is not None else ""]),
                _score(entry.best),
                *(_score(entry.field(f"test/{name}")) for name in tests),
                *([str(entry.field("verdict") or "")] if verdicts else []),
                _duration(entry.wall_time_s),
                listing.shown_path(entry.path),
            ]
        )
    # The path is never cut: it is what a user copies. It comes last, where a long line does least harm.
    texts = [i for i, name in enumerate(header) if name in ("status", "model", "dataset", "monitor", "verdict")]
    return header, body, texts


def status_text(entry: Entry) -> str:
    if entry.status == "running" and entry.field("host") and entry.note.startswith("on "):
        return f"running on {entry.field('host')}?"
    return f"{entry.status}: {entry.note}" if entry.note else entry.status


def _epochs(entry: Entry) -> str:
    if entry.epochs is None:
        return "-"
    done = f"{entry.epochs:.0f}"
    return f"{done}/{entry.epochs_planned:.0f}" if entry.epochs_planned is not None else done


def _score(value) -> str:
    number = listing.finite_number(value)
    return "" if number is None else f"{number:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def print_runs(entries: list[Entry], title: str) -> None:
    """A rich table on a terminal, plain columns when piped; cut to the terminal's width, the reasons in full below."""
    console = Console()
    if not entries:
        print(title)
        return
    header, body, texts = table_cells(entries)
    cut, _ = print_table(console, title, header, body, texts, left=("date", "path"))
    status = header.index("status")
    reasons = [(entry, row) for entry, row, full in zip(entries, cut, body) if row[status] != full[status] and entry.note]
    for entry, _ in reasons:
        print(f"  {listing.shown_path(entry.path)}: {status_text(entry)}")


def _usage_error(message: str):
    raise DlrunError(f"runs: {message} (usage: {USAGE})")
