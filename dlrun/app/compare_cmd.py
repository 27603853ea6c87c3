"""`dlrun compare PATH...`: one table and one plot over existing run or sweep directories."""

import argparse
import time
from pathlib import Path

from dlrun.core.errors import DlrunError
from dlrun.results.runs import find_runs, is_run
from dlrun.results.summary import SummaryChoice, saved_choice, summarize

COLUMNS_HELP = (
    "KEY[@AGG] each: val/<metric> (at the best epoch), test/<metric>, train/<metric> (its last epoch), epoch, "
    "verdict, or a key of metrics.json (parameters.total); @last, @min, @max or @best: over history.csv"
)


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="dlrun compare",
        description="One table and one plot over existing runs: run directories, sweep directories, or a mix.",
        epilog="Example:\n  dlrun compare outputs/sweeps/2024-05-01_10-00-00 outputs/runs/2024-05-01_11-00-00_mlp_mnist",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    parser.error = _usage_error
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a run directory or a sweep directory")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where summary.csv, summary.md and curves.png go (default: the sweep directory when "
        "PATH is one sweep, else outputs/compare/<date>_<time>)",
    )
    parser.add_argument(
        "--rank-by",
        metavar="COLUMN",
        help="what ranks the runs, a number named as in --columns, e.g. train/loss@last (default: a sweep's own, "
        "else trainer.monitor's best value)",
    )
    parser.add_argument("--mode", choices=("min", "max"), help="lowest or highest first (default: min for a loss, else max)")
    parser.add_argument(
        "--columns",
        metavar="A,B,...",
        help=f"the table's metric columns, e.g. train/loss@last,val/loss@min,test/f1_micro. {COLUMNS_HELP}. Default: a "
        "sweep's own, else the best monitored value, its epoch, test accuracy and F1",
    )
    parser.add_argument(
        "--all", action="store_true", help="also list run directories that never started (only Hydra's .hydra/ in them)"
    )
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
    summarize(paths, out, choice=_choice(opts, paths), strict=True, started_only=not opts.all)


def _choice(opts, paths: list[Path]) -> SummaryChoice:
    """The flags given, else what the sweeps compared ranked by and showed (an experiment's own columns)."""
    saved = saved_choice(paths)
    columns = [c.strip() for c in opts.columns.split(",") if c.strip()] if opts.columns else None
    if opts.rank_by and not opts.mode:  # the sweep's mode belonged to its own ranking column
        return SummaryChoice(opts.rank_by, None, columns or saved.columns)
    return SummaryChoice(opts.rank_by or saved.rank_by, opts.mode or saved.mode, columns or saved.columns)


def _usage_error(message: str):
    usage = "dlrun compare PATH... [--out DIR] [--rank-by COLUMN] [--mode min|max] [--columns A,B]"
    raise DlrunError(f"compare: {message} (usage: {usage})")
