"""Files written whole or not at all, and files read back without failing on a missing or broken one.

A run directory can hold anything a disk or a user left there: a file is measured before it is read,
so that a huge one is refused by its size instead of filling the memory."""

import contextlib
import csv
import io
import json
import math
import os
from pathlib import Path

import yaml

from dlrun.core.errors import DlrunError
from dlrun.core.faultpoints import full_disk, kill_point

# What a run's own files can reach: metrics.json and the YAML files are a few kilobytes, history.csv
# about one kilobyte an epoch. Past these a file is not what dlrun wrote, and it is not parsed.
MAX_JSON_BYTES = 64 * 2**20
MAX_YAML_BYTES = 64 * 2**20
MAX_CSV_BYTES = 512 * 2**20


class Unreadable(DlrunError):
    """A file that is there but cannot be used: too large, not the format its name says, or the wrong shape.
    Its text names the file by its name alone (a table row names the run)."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{self.path.name}: {reason}")


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename it over `path`: a crash leaves the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            full_disk(path)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        kill_point("file_written")  # the new version complete beside the old one, not yet renamed over it
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk keeps no half-written file
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):
            raise OSError(err.errno, err.strerror, str(path)) from err  # name the file the user knows
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def size_text(size: int) -> str:
    """2 GB, 512.1 MB: rounded up, so that a file just over a limit never reads as the limit itself."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if size >= scale:
            return f"{math.ceil(size * 10 / scale) / 10:g} {unit}"
    return f"{size} bytes"


def check_size(path: Path, limit: int) -> None:
    """Refuse a file larger than `limit` bytes, by its size alone (a sparse file costs nothing to measure).
    FileNotFoundError passes through: a missing file is for the caller to judge."""
    size = os.stat(path).st_size
    if size > limit:
        raise Unreadable(path, f"{size_text(size)}, more than the {size_text(limit)} such a file can hold; not read")


def load_json(path: Path) -> dict | None:
    """The JSON object in `path`; None when there is no such file; Unreadable when it is too large, not
    JSON, or not an object."""
    path = Path(path)
    try:
        check_size(path, MAX_JSON_BYTES)
        text = path.read_bytes().decode()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise Unreadable(path, "not JSON (not even text)") from None
    except OSError as err:
        raise Unreadable(path, f"cannot be read ({err.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise Unreadable(path, f"not JSON ({err})") from None
    if not isinstance(data, dict):
        raise Unreadable(path, f"holds {json_kind(data)}, not an object")
    return data


def read_json(path: Path) -> dict:
    """The JSON object in `path`; {} when the file is missing, too large, or not a JSON object."""
    try:
        return load_json(path) or {}
    except Unreadable:
        return {}


def json_kind(value) -> str:
    """What a JSON value is, in JSON's words: `"best" is a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path):
    """The YAML in `path`, through the safe loader; None when the file is missing, too large, or not YAML."""
    try:
        check_size(path, MAX_YAML_BYTES)
        # libyaml's parser where PyYAML has it: the same safe loader, ~8x faster (`dlrun runs` reads two files per run)
        return yaml.load(Path(path).read_text(), Loader=SAFE_LOADER)
    except (OSError, UnicodeDecodeError, Unreadable, yaml.YAMLError):
        return None
