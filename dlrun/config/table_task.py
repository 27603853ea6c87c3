"""The task of a CSV file's target column, known when the config is composed: `dataset=csv` sets `dataset.task`
to `${dlrun.table_task:...}`, so that the run's `task`, and the monitor and mode that follow from it, fit the file
before anything loads. The rule is the loader's own (dlrun.data.tables reads it from here)."""

import csv
import math
import os
from pathlib import Path

from omegaconf import OmegaConf

MAX_INTEGER_CLASSES = 20  # integer targets with more distinct values are counts or amounts: a regression
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})  # compared in lower case
# A file this large is refused by the loader, with its size; the task is not worth reading it for.
MAX_TABLE_BYTES = 2 * 2**30
_seen: dict[tuple, str] = {}


def number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def target_task(texts: list[str]) -> str:
    """classification for text, or for at most MAX_INTEGER_CLASSES distinct integers; regression for other numbers."""
    numbers = [number(t) for t in texts if t.lower() not in MISSING]
    if any(n is None for n in numbers):
        return "classification"
    few = all(n.is_integer() for n in numbers) and len(set(numbers)) <= MAX_INTEGER_CLASSES
    return "classification" if few else "regression"


def table_task(path, target, delimiter=",") -> str:
    """The task of `target`'s column in the CSV file `path`; classification when the file or column cannot be
    read, so that composing never fails: the loader then names the problem in one line."""
    if path is None or target is None:
        return "classification"
    try:
        file = Path(str(path)).expanduser()
        info = os.stat(file)
        if info.st_size > MAX_TABLE_BYTES:
            return "classification"
        key = (str(file.resolve()), info.st_size, info.st_mtime_ns, str(target), str(delimiter))
        if key not in _seen:
            with open(file, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f, delimiter=str(delimiter))
                header = [name.strip() for name in next(reader)]
                column = header.index(str(target))
                _seen[key] = target_task([row[column].strip() for row in reader if len(row) == len(header)])
        return _seen[key]
    except (OSError, ValueError, StopIteration, UnicodeDecodeError, csv.Error):
        return "classification"


def register() -> None:
    if not OmegaConf.has_resolver("dlrun.table_task"):
        OmegaConf.register_new_resolver("dlrun.table_task", table_task)
