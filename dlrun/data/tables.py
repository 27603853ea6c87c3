"""A user's own table: `dataset=csv` reads a CSV file with a header row, one sample a row, into float features.

Numeric columns keep their own units here; the loaders standardise them on the device with the training
split's mean and std (Data.mean and Data.std), as they normalise every in-memory set, so the same
statistics travel in the checkpoint to `dlrun eval`. Text columns become one 0/1 feature per category
seen in the training split (a value seen only in val or test is all zeros). The task follows the target
column: text, or at most 20 distinct integers, is a classification; other numbers are a
regression. Every problem with the file is one line naming the file and the row (as an editor numbers
its lines) or the column. Read with the csv module: pandas is no dependency."""

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlrun.config.table_task import MAX_TABLE_BYTES, MISSING, number, target_task
from dlrun.core.errors import ConfigError, DataError
from dlrun.core.io import size_text
from dlrun.core.text import did_you_mean

MAX_CATEGORIES = 1000  # a text column with more distinct values is an identifier, not a category
SPLIT_COLUMN = "split"
SPLITS = ("train", "val", "test")
FILLS = ("mean", "drop")
TASKS = ("classification", "regression")


@dataclass
class Table:
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]]  # train, val, test: features (N, D) float32 and targets (N,)
    classes: list[str]  # class names, sorted; a regression's target column alone
    mean: tuple[float, ...]  # per feature, of the training split (one-hot features: 0 and 1, left as they are)
    std: tuple[float, ...]
    features: list[str]  # the model's inputs: numeric columns by name, one-hot ones as column=value
    task: str
    target_scale: tuple[float, float] = (0.0, 1.0)  # a regression's target: the training split's mean and std


@dataclass
class Cells:
    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # each row's first line in the file


def load_table(cfg, seed: int, val_fraction: float, task: str | None = None) -> Table:
    """The train/val/test features and targets of the CSV file `cfg.path` (the `dataset` config group). The task:
    dataset.task, else `task` (the run's), else the target column's."""
    cells = read_cells(cfg.get("path"), cfg.get("delimiter", ","))
    target, features, split_column = _columns(cfg, cells)
    numeric = {c: _numbers(cells, c) for c in features if _looks_numeric(cells, c, cfg)}
    rows = _complete_rows(cfg, cells, [target, *features])
    task, classes, y = _target(cfg.get("task") or task, cells, target, rows)
    parts = _assign_splits(cfg, cells, rows, split_column, seed, val_fraction)
    columns, mean, std, names = [], [], [], []
    for c in features:
        encoded, stats, labels = (_numeric_feature if c in numeric else _text_feature)(cells, c, numeric.get(c), parts)
        columns.append(encoded)
        mean += stats[0]
        std += stats[1]
        names += labels
    x = np.concatenate(columns, axis=1) if columns else np.zeros((len(cells.rows), 0))
    scale = (0.0, 1.0)
    if task == "regression":
        train_y = y[parts["train"]]
        scale = (float(train_y.mean()), float(train_y.std()) or 1.0)
        y = (y - scale[0]) / scale[1]
    dtype = torch.long if task == "classification" else torch.float32
    tensors = {
        name: (torch.as_tensor(x[index], dtype=torch.float32), torch.as_tensor(y[index], dtype=dtype))
        for name, index in parts.items()
    }
    return Table(tensors, classes, tuple(mean), tuple(std), names, task, scale)


def read_cells(path_option, delimiter: str = ",") -> Cells:
    """The header and the data rows of a CSV file, as text; blank lines are skipped."""
    if not path_option:
        raise ConfigError("dataset.path", "null", "must be the path of a CSV file, e.g. dataset=csv dataset.path=data.csv")
    path = Path(str(path_option)).expanduser()
    if not path.is_file():
        held = "a folder, not a CSV file" if path.is_dir() else "no such file"
        raise DataError(f"dataset.path={path_option}: {held}")
    size = os.stat(path).st_size
    if size > MAX_TABLE_BYTES:
        raise DataError(f"{path}: {size_text(size)}, more than the {size_text(MAX_TABLE_BYTES)} dataset=csv reads; not read")
    header, rows, lines = None, [], []
    line = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            for record in reader:
                first, line = line + 1, reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if header is None:
                    header = [name.strip() for name in record]
                    continue
                if len(record) != len(header):
                    raise DataError(f"{path}: row {first}: {len(record)} fields, but the header has {len(header)}")
                rows.append([cell.strip() for cell in record])
                lines.append(first)
    except UnicodeDecodeError:
        raise DataError(f"{path}: row {line + 1}: not UTF-8 text; save the file as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{path}: row {line + 1}: not CSV ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from None
    if header is None:
        raise DataError(f"{path}: the file is empty; dataset=csv reads a header row, then one row per sample")
    if not rows:
        raise DataError(f"{path}: only a header row, no data rows")
    twice = next((name for i, name in enumerate(header) if name in header[:i]), None)
    if twice is not None:
        raise DataError(f"{path}: the header names the column {twice!r} twice")
    return Cells(path, header, rows, lines)


def _columns(cfg, cells: Cells) -> tuple[int, list[int], int | None]:
    """The target's column, the feature columns and the `split` column (or None), by index."""
    header = cells.header
    listed = ", ".join(header)
    target = cfg.get("target")
    if target is None:
        raise ConfigError("dataset.target", "null", f"must name the column to predict; {cells.path.name} has {listed}")
    if str(target) not in header:
        hint = did_you_mean(str(target), header)
        raise ConfigError("dataset.target", target, f"{cells.path} has no such column; its columns: {listed}{hint}")
    drop = cfg.get("drop") or []
    if isinstance(drop, str):
        drop = [drop]
    for name in drop:
        if str(name) not in header:
            hint = did_you_mean(str(name), header)
            raise ConfigError("dataset.drop", name, f"{cells.path} has no such column; its columns: {listed}{hint}")
    for name in cfg.get("categorical") or []:
        if str(name) not in header:
            raise ConfigError("dataset.categorical", name, f"{cells.path} has no such column; its columns: {listed}")
    use_split = SPLIT_COLUMN in header and SPLIT_COLUMN not in map(str, drop) and str(target) != SPLIT_COLUMN
    split = header.index(SPLIT_COLUMN) if use_split else None
    skipped = {str(target), SPLIT_COLUMN if split is not None else None, *map(str, drop)}
    return header.index(str(target)), [i for i, name in enumerate(header) if name not in skipped], split


def _is_missing(text: str) -> bool:
    return text.lower() in MISSING


def _looks_numeric(cells: Cells, column: int, cfg) -> bool:
    """A column is numeric when most of its cells are numbers; the others are then mistakes (_numbers names the
    first). Listed in dataset.categorical, it is one-hot encoded whatever it holds."""
    if cells.header[column] in [str(c) for c in cfg.get("categorical") or []]:
        return False
    present = [row[column] for row in cells.rows if not _is_missing(row[column])]
    numbers = sum(number(text) is not None for text in present)
    return bool(present) and numbers * 2 >= len(present)


def _numbers(cells: Cells, column: int) -> np.ndarray:
    """A numeric column's values, NaN where a cell is missing; a cell that is no number is one line naming it."""
    texts = [row[column] for row in cells.rows]
    try:
        values = np.asarray(texts, dtype=np.float64)  # the fast path: every cell a number
        if np.isfinite(values).all():
            return values
    except ValueError:
        pass
    values = np.empty(len(texts))
    for i, text in enumerate(texts):
        value = number(text)
        if value is None and not _is_missing(text):
            raise DataError(
                f"{cells.path}: row {cells.lines[i]}, column {cells.header[column]}: {text!r} is not a finite number, "
                f"in a column of numbers; fix the cell, or list the column in dataset.categorical or dataset.drop"
            )
        values[i] = math.nan if value is None else value
    return values


def _complete_rows(cfg, cells: Cells, columns: list[int]) -> np.ndarray:
    """The rows to use: all of them, unless cells are missing, which dataset.fill must say what to do with."""
    fill = cfg.get("fill")
    if fill is not None and fill not in FILLS:
        raise ConfigError("dataset.fill", fill, "must be null (refuse missing cells), mean or drop")
    missing = np.array([[_is_missing(row[c]) for c in columns] for row in cells.rows], dtype=bool)
    holes = missing.sum()
    if holes and fill is None:
        row, col = np.argwhere(missing)[0]
        raise DataError(
            f"{cells.path}: row {cells.lines[row]}, column {cells.header[columns[col]]}: an empty cell ({holes} in all); "
            "set dataset.fill=mean (the training split's column mean, or a text column's commonest value) "
            "or dataset.fill=drop (leave such rows out)"
        )
    # A row without its target has nothing to learn from, whatever the fill.
    keep = ~missing.any(1) if fill == "drop" else ~missing[:, 0]
    if not keep.any():
        raise DataError(f"{cells.path}: every row has an empty cell; dataset.fill=drop leaves none")
    return np.flatnonzero(keep)


def _target(task: str | None, cells: Cells, column: int, rows: np.ndarray) -> tuple[str, list[str], np.ndarray]:
    """The task (None: the column's), the class names and the target per row of the file (unused rows hold 0)."""
    name = cells.header[column]
    texts = [cells.rows[i][column] for i in rows]
    numbers = [number(t) for t in texts]
    numeric = all(n is not None for n in numbers)
    if task not in (None, *TASKS):
        raise ConfigError("dataset.task", task, "must be null (from the target column), classification or regression")
    task = task or target_task(texts)
    y = np.zeros(len(cells.rows), dtype=np.int64 if task == "classification" else np.float64)
    if task == "regression":
        if not numeric:
            bad = next(i for i, n in zip(rows, numbers) if n is None)
            raise DataError(
                f"{cells.path}: row {cells.lines[bad]}, column {name}: {cells.rows[bad][column]!r} is not a number, "
                "and a regression's target must be (dataset.task=regression)"
            )
        y[rows] = numbers
        return task, [name], y
    labels = [f"{int(n)}" if n.is_integer() else f"{n:g}" for n in numbers] if numeric else texts
    order = sorted(set(labels), key=float) if numeric else sorted(set(labels))
    if len(order) < 2:
        raise DataError(f"{cells.path}: column {name} holds one class only ({order[0]}); a classifier needs two or more")
    index = {label: k for k, label in enumerate(order)}
    y[rows] = [index[label] for label in labels]
    return task, order, y


def _held_out(index: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random `fraction` of `index` held out, drawn as the other in-memory sets draw theirs."""
    n_out = max(1, round(len(index) * fraction))
    perm = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed)).numpy()
    return index[np.sort(perm[n_out:])], index[np.sort(perm[:n_out])]


def _assign_splits(cfg, cells: Cells, rows: np.ndarray, column: int | None, seed: int, val_fraction: float) -> dict:
    """Row indices of train, val and test: from the `split` column where there is one, the rest seeded (test by
    dataset.split_seed, fixed whatever the run's seed; val by `seed`, as digits does)."""
    parts = {"train": rows}
    if column is not None:
        names = np.array([cells.rows[i][column].lower() for i in rows])
        bad = next((i for i, name in zip(rows, names) if name not in SPLITS), None)
        if bad is not None:
            raise DataError(
                f"{cells.path}: row {cells.lines[bad]}, column {SPLIT_COLUMN}: {cells.rows[bad][column]!r} is not a split; "
                f"allowed: {', '.join(SPLITS)}"
            )
        parts = {name: rows[names == name] for name in SPLITS if (names == name).any()}
        if "train" not in parts:
            raise DataError(f"{cells.path}: column {SPLIT_COLUMN} names no row train; the model needs training rows")
    if "test" not in parts:
        parts["train"], parts["test"] = _held_out(parts["train"], cfg.get("test_fraction", 0.2), cfg.get("split_seed", 0))
    if "val" not in parts:
        parts["train"], parts["val"] = _held_out(parts["train"], val_fraction, seed)
    if len(parts["train"]) < 2:
        raise DataError(f"{cells.path}: {len(rows)} usable rows are too few to split into train, val and test")
    return parts


def _numeric_feature(cells: Cells, column: int, values: np.ndarray, parts: dict):
    """One feature in its own units, its missing cells filled with the training mean; (mean, std) of training."""
    train = values[parts["train"]]
    if np.isnan(train).all():
        raise DataError(f"{cells.path}: column {cells.header[column]} has no value in any training row; list it in dataset.drop")
    mean = float(np.nanmean(train))
    values = np.where(np.isnan(values), mean, values)
    std = float(values[parts["train"]].std())  # population std, as scikit-learn's StandardScaler
    return values[:, None], ([mean], [std if std > 0 else 1.0]), [cells.header[column]]


def _text_feature(cells: Cells, column: int, _values, parts: dict):
    """One 0/1 feature per category of the training split; a missing cell takes its commonest value."""
    name = cells.header[column]
    texts = [row[column] for row in cells.rows]
    seen = Counter(texts[i] for i in parts["train"] if not _is_missing(texts[i]))
    if not seen:
        raise DataError(f"{cells.path}: column {name} has no value in any training row; list it in dataset.drop")
    if len(seen) > MAX_CATEGORIES:
        raise DataError(
            f"{cells.path}: column {name} holds {len(seen)} different texts, more than the {MAX_CATEGORIES} categories "
            "one-hot encoding takes (an identifier?); list it in dataset.drop"
        )
    commonest = seen.most_common(1)[0][0]
    categories = sorted(seen)
    index = {c: k for k, c in enumerate(categories)}
    encoded = np.zeros((len(texts), len(categories)))
    for i, text in enumerate(texts):
        k = index.get(commonest if _is_missing(text) else text)
        if k is not None:
            encoded[i, k] = 1.0
    k = len(categories)
    return encoded, ([0.0] * k, [1.0] * k), [f"{name}={c}" for c in categories]
