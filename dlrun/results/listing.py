"""Every run under some folders, one entry each, for `dlrun runs`: its status (a run whose process died while
metrics.json still says running is `crashed`), what it trained, its best and test scores, its verdict.

It reads metrics.json, .hydra/ and history.csv only, and never imports torch: a folder of a thousand runs lists
in well under two seconds. The config's interpolations are resolved only for a run whose asked-for value has one."""

import fcntl
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dlrun.core.errors import DlrunError
from dlrun.core.lock import LOCK_NAME
from dlrun.core.nested import lookup
from dlrun.core.text import did_you_mean, show_value
from dlrun.results.runs import Run, find_runs, float_or_nan, read_config, resolved

STATUSES = ("completed", "running", "crashed", "failed", "diverged", "interrupted", "pruned", "unreadable", "not started")
TEST_SCORES = ("accuracy", "f1", "rmse", "r2")  # a classifier has the first two, a regression the last two
# The fields of an entry, in the order of the table and of --json; --sort takes these or any metric of a run.
FIELDS = (
    "date",
    "status",
    "model",
    "dataset",
    "epochs",
    "epochs_planned",
    "monitor",
    "best",
    *(f"test/{name}" for name in TEST_SCORES),
    "verdict",
    "wall_time_s",
    "note",
    "host",
    "path",
)
TEXT_FIELDS = ("status", "model", "dataset", "monitor", "verdict", "note", "host", "path")
SINCE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LOWER_IS_BETTER = ("loss", "rmse", "mse", "mae", "error", "time", "wall_time_s")


@dataclass
class Entry:
    run: Run
    status: str
    note: str  # why it failed or cannot be read, or that a run on another host cannot be checked from here
    started: float | None  # seconds since the epoch
    epochs: float | None
    epochs_planned: float | None
    best: float | None  # the monitored value's best; for a run that never finished, the best in history.csv so far
    wall_time_s: float | None
    config_read: bool = False  # the run's config is read only for a run whose config is asked about
    config_resolved: bool = False

    def config(self) -> dict:
        if not self.config_read:
            self.run.config, self.config_read = read_config(self.path), True
        return self.run.config

    @property
    def monitor(self) -> str:
        if not self.run.metrics.get("monitor"):  # a run that never started: its config's trainer.monitor
            self.config()
        return self.run.monitor

    @property
    def mode(self) -> str:
        self.config()
        return self.run.mode

    @property
    def path(self) -> Path:
        return self.run.path

    def field(self, key: str):
        """A field of FIELDS, or any metric the run recorded (`val/loss` at its best epoch, `parameters.total`)."""
        metrics = self.run.metrics
        if key == "date":
            return self.started
        # A job whose config never composed (an Optuna trial's sampled option that does not exist) has only overrides.
        if key == "model":  # the option chosen (resnet18), not the class it builds (ResNet)
            return self.run.choices.get("model") or metrics.get("model") or self.run.overrides.get("model")
        if key == "dataset":  # the dataset's own name (an image folder's), else the option chosen
            return metrics.get("dataset") or self.run.choices.get("dataset") or self.run.overrides.get("dataset")
        if key == "monitor":
            return self.monitor
        if key == "host":
            return metrics.get("host")
        if key == "path":
            return shown_path(self.path)
        if key in ("status", "note", "epochs", "epochs_planned", "best", "wall_time_s"):
            return getattr(self, key)
        if key in ("time", "wall_time"):
            return self.wall_time_s
        value = self.run.metric(key)
        return None if isinstance(value, bool) else value

    def record(self) -> dict:
        """The entry as JSON: numbers that are not finite as null, the date in ISO 8601 with its offset."""
        record = {}
        for key in FIELDS:
            value = self.field(key)
            if key == "date" and value is not None:
                value = datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                value = finite_number(value)
                value = int(value) if value is not None and value.is_integer() and key.startswith("epochs") else value
            record[key] = value
        return record


def shown_path(path: Path) -> str:
    """Relative to the working directory when the run is below it (so that `dlrun compare $(dlrun runs --paths)` is
    short), else as found."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def list_runs(paths: list[Path], started_only: bool = True) -> tuple[list[Entry], int]:
    """The entries of every run under `paths`, newest first, and how many never-started ones were left out."""
    run_dirs = list(dict.fromkeys(run_dir for path in paths for run_dir in find_runs(Path(path))))  # each once
    hidden = 0
    if started_only:
        started = [p for p in run_dirs if (p / "metrics.json").is_file()]
        hidden, run_dirs = len(run_dirs) - len(started), started
    entries = [load_entry(p) for p in run_dirs]
    return sort_entries(entries, "date"), hidden


def load_entry(path: Path) -> Entry:
    try:
        return _entry(Run.load(path, resolve=False, with_config=False))
    except Exception as err:  # noqa: BLE001 - a damaged run directory is one row saying why, never the end of the list
        reason = f"{type(err).__name__}: {err}"
        return Entry(Run(path, {}, {}, {}, {}, [], reason), "unreadable", reason, _file_date(path), None, None, None, None)


def _entry(run: Run) -> Entry:
    metrics = run.metrics
    if run.problem:
        return Entry(run, "unreadable", run.problem, _file_date(run.path), None, None, None, None)
    status, note = liveness(run)
    epochs = finite_number(metrics.get("epochs_completed"))
    if epochs is None and run.history:  # metrics.json is written as a run starts and ends; history.csv each epoch
        epochs = float(len(run.history))
    started = _iso_date(metrics.get("started"))
    wall = finite_number(metrics.get("wall_time_s"))
    if status == "running" and not note:  # metrics.json holds its time up to this attempt's start, when it was written
        wall = (wall or 0.0) + max(0.0, time.time() - (_mtime(run.path / "metrics.json") or time.time()))
    error = metrics.get("error") if status != "running" else None
    entry = Entry(run, status, error or note, started or _file_date(run.path), epochs, None, None, wall)
    entry.best = finite_number((metrics.get("best") or {}).get(entry.monitor))
    if entry.best is None and run.history:  # not finished: the best epoch so far
        entry.best = finite_number(run.metric(entry.monitor, "max" if entry.mode == "max" else "min"))
    entry.epochs_planned = finite_number(metrics.get("epochs_planned"))
    if entry.epochs_planned is None:  # runs made before metrics.json kept it: the config's trainer.epochs
        entry.epochs_planned = finite_number(_config_number(entry, "trainer.epochs"))
    return entry


def liveness(run: Run) -> tuple[str, str]:
    """The status metrics.json gives, except that `running` becomes `crashed` when no process holds the run's lock.
    A run started on another host cannot be checked from here: it stays `running`, with a note saying so."""
    status = run.status
    if status != "running":
        return status, ""
    host = run.metrics.get("host")
    if host and host != socket.gethostname():
        return "running", f"on {host}? (cannot be checked from here)"
    held = lock_held(run.path)
    if held is None:
        return "running", "its lock cannot be read from here"
    return ("running", "") if held else ("crashed", "")


def lock_held(run_dir: Path) -> bool | None:
    """Whether a process holds the run directory's lock (core/lock.py): a shared lock is tried and dropped at once,
    which fails only while a writer holds its exclusive one. None when the lock file cannot be opened."""
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:  # a writer creates it before anything else: no lock, no writer
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return False


def finite_number(value) -> float | None:
    if value is None or isinstance(value, bool | str):
        return None
    number = float_or_nan(value) if not isinstance(value, int) or abs(value) < 2**63 else math.inf
    return number if math.isfinite(number) else None


def _iso_date(text) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    # a date no run can have (year 1, year 9999 in a far time zone) is no date: the run's files date it instead
    return when.timestamp() if 1970 <= when.year < 9999 else None


def _file_date(run_dir: Path) -> float | None:
    """When Hydra wrote the run's config (as the run started), for runs whose metrics.json has no start date."""
    for candidate in (run_dir / ".hydra" / "config.yaml", run_dir / "metrics.json", run_dir):
        if (when := _mtime(candidate)) is not None:
            return when
    return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def config_value(entry: Entry, key: str) -> str | None:
    """The run's config value for `key` as an override writes it (a config group's chosen option, or a key of the
    composed config with its interpolations resolved: `null`, `true`, `[100]`); None when the run has no such key."""
    run = entry.run
    if key in run.choices:
        return run.value(key)  # for `device`: the device the run used
    found, node = lookup(entry.config(), key)
    if found and isinstance(node, str) and "${" in node and not entry.config_resolved:
        run.config, entry.config_resolved = resolved(run.config), True
        found, node = lookup(run.config, key)
    if not found:
        return run.overrides.get(key)
    return show_value(node)


def _config_number(entry: Entry, key: str):
    value = config_value(entry, key)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_where(spec: str) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not sep or not key.strip():
        raise DlrunError(f"--where {spec}: not KEY=VALUE (e.g. --where model=cnn or --where dataset.name=mnist)")
    return key.strip(), value.strip()


def matches(value: str | None, wanted: str) -> bool:
    """`wanted` as the run's value, as the same number (1e-3 and 0.001), or one of a comma list (model=cnn,mlp)."""
    if value is None:
        return False
    if value == wanted or _same_number(value, wanted):
        return True
    if "," in wanted and not wanted.startswith(("[", "{")):
        return any(matches(value, part.strip()) for part in wanted.split(","))
    return False


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def filter_where(entries: list[Entry], wheres: list[tuple[str, str]]) -> list[Entry]:
    """The entries whose config has every KEY=VALUE; a key that no run has is an error, not an empty list."""
    for key, wanted in wheres:
        values = [(entry, config_value(entry, key)) for entry in entries]
        if entries and all(value is None for _, value in values):
            known = {k for e in entries for k in (*e.run.choices, *e.config(), *e.run.overrides)}
            raise DlrunError(
                f"--where {key}={wanted}: no run has {key}{did_you_mean(key, known)} (a config group such as model, "
                "or a dotted key of the config such as dataset.name)"
            )
        entries = [entry for entry, value in values if matches(value, wanted)]
    return entries


def parse_since(text: str) -> float:
    """`30m`, `12h`, `2d`, `1w` as seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", text)
    if not found:
        raise DlrunError(f"--since {text}: not a duration; a number and m, h, d or w (30m, 12h, 2d, 1w)")
    return float(found[1]) * SINCE_UNITS[found[2]]


def filter_status(entries: list[Entry], statuses: list[str]) -> list[Entry]:
    for status in statuses:
        if status not in STATUSES:
            raise DlrunError(f"--status {status}: not a status{did_you_mean(status, STATUSES)} (one of {', '.join(STATUSES)})")
    return [entry for entry in entries if entry.status in statuses]


def sort_entries(entries: list[Entry], key: str, reverse: bool = False) -> list[Entry]:
    """Newest first by date, A to Z by a text, best first by a number (lowest first for a loss, an error or a
    time); `reverse` the other way. Runs without the value come last either way."""
    values = [(entry, entry.field(key)) for entry in entries]
    if entries and key not in FIELDS and all(value is None for _, value in values):
        known = set(FIELDS) | {f"val/{k.split('/', 1)[-1]}" for e in entries for k in (e.run.metrics.get("best") or {})}
        raise DlrunError(f"--sort {key}: no run has {key}{did_you_mean(key, known)} (fields: {', '.join(FIELDS)}, or a metric)")
    if all(isinstance(value, str) for _, value in values if value is not None):
        present = [(entry, value) for entry, value in values if value is not None]
        present.sort(key=lambda pair: (pair[1], str(pair[0].path)), reverse=reverse)
    else:
        descending = key == "date" or not _lower_is_better(key, entries)
        present = [(entry, number) for entry, value in values if (number := finite_number(value)) is not None]
        present.sort(key=lambda pair: (-pair[1] if descending else pair[1], str(pair[0].path)), reverse=reverse)
    shown = {id(entry) for entry, _ in present}
    return [entry for entry, _ in present] + [entry for entry in entries if id(entry) not in shown]


def _lower_is_better(key: str, entries: list[Entry]) -> bool:
    if key == "best":
        modes = [e.mode for e in entries]
        return bool(modes) and max(set(modes), key=modes.count) == "min"
    name = key.rsplit("/", 1)[-1]
    return any(word in name for word in LOWER_IS_BETTER)
