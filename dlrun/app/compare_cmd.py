"""`dlrun compare PATH...`: one table and one plot over existing run or sweep directories."""

import argparse
import time
from pathlib import Path

from dlrun.core.errors import DlrunError
from dlrun.results.runs import find_runs, is_run
from dlrun.results.summary import summarize


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


def _usage_error(message: str):
    raise DlrunError(f"compare: {message} (usage: dlrun compare PATH... [--out DIR])")
