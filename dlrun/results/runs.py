"""Finished (or unfinished) runs read back from their directories: metrics.json, history.csv and .hydra/.

Nothing here imports torch: `dlrun compare` and a sweep's summary read runs without it."""

import contextlib
import csv
import json
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from dlrun.core.io import MAX_CSV_BYTES, MAX_YAML_BYTES, SAFE_LOADER, Unreadable, check_size, json_kind, load_json, read_yaml
from dlrun.core.nested import lookup

# Interpolations that mean something only inside the Hydra app that ran the job, or only at that moment:
# resolved later they would fail, or give today's date. They stay as the saved config writes them.
UNRESOLVABLE = ("${hydra:", "${now:")
_ABSENT = object()

# The types of what the summaries read from metrics.json; a value of another type makes the run unreadable.
NUMBER = (int, float)
METRICS_TYPES = {
    "status": (str,),
    "monitor": (str,),
    "error": (str,),
    "best": (dict,),
    "test": (dict,),
    "diagnosis": (dict,),
    "epochs_completed": NUMBER,
    "wall_time_s": NUMBER,
    "model": (str,),
    "dataset": (str,),
    "host": (str,),
    "started": (str,),
    "epochs_planned": NUMBER,
}


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
    problem: str | None = None  # why metrics.json or history.csv cannot be used: the run shows as unreadable
    unresolved: bool = False  # `config` as saved: a value read that is an interpolation is resolved then (find)
    _conf: object = field(default=None, repr=False, compare=False)  # the saved config as OmegaConf's, once needed

    @classmethod
    def load(cls, path: Path, resolve: bool = True, with_config: bool = True, resolve_when_needed: bool = False) -> "Run":
        """`resolve`: the saved config with its interpolations resolved (a few ms a run; see `resolved`);
        `resolve_when_needed`: each value resolved as it is read (a sweep's summary reads the few it shows);
        `with_config` False: no config read at all (`dlrun runs` reads it only for a run it asks about)."""
        hydra_dir = path / ".hydra"
        overrides = {}
        for item in _typed(read_yaml(hydra_dir / "overrides.yaml"), list):
            key, _, value = str(item).partition("=")
            overrides[key.lstrip("+~")] = value
        choices = read_choices(hydra_dir / "hydra.yaml")
        metrics, history, problem = {}, [], None
        try:
            metrics = load_metrics(path / "metrics.json")
            history = load_history(path / "history.csv")
        except Unreadable as err:  # one damaged file: the run is a row that says why, the others are read as ever
            metrics, history, problem = {}, [], str(err)
        config = read_config(path) if with_config else {}
        later = resolve and resolve_when_needed
        config = resolved(config) if resolve and not later else config
        return cls(path, overrides, config, choices, metrics, history, problem, unresolved=later)

    def find(self, key: str) -> tuple[bool, object]:
        """(found, value) of a dotted key of the config, its interpolations resolved as `load` was asked to."""
        found, node = lookup(self.config, key)
        if self.unresolved and (not found or "${" in str(node)):  # a key below an interpolation, or one itself
            return self._resolved(key, found, node)
        return found, node

    def _resolved(self, key: str, found: bool, node) -> tuple[bool, object]:
        """One key resolved in the saved config, as `resolved` resolves them all (in a third of the time): one that
        cannot be outside its job keeps its saved text."""
        if any(u in str(node) for u in UNRESOLVABLE):
            return found, node
        if self._conf is None:
            self._conf = OmegaConf.create(self.config)
        try:
            value = OmegaConf.select(self._conf, key, default=_ABSENT, throw_on_resolution_failure=True)
            if value is _ABSENT:
                return False, None
            return True, OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except Exception:  # noqa: BLE001 - an interpolation that needs its job (or another resolver)
            return found, node

    def value(self, key: str) -> str:
        """A config value as text: a group's chosen option, else the key in the saved config; for `device`,
        the device the run used (`cpu` where the config said `auto`)."""
        if key == "device" and self.metrics.get("device"):
            return str(self.metrics["device"])
        if key in self.choices:
            choice = self.choices[key]
            return "null" if choice is None else str(choice)  # as an override writes it: experiment=null
        found, node = self.find(key)
        if not found:
            return self.overrides.get(key, "")
        if isinstance(node, list):
            return "[" + ",".join(map(str, node)) + "]"  # as it is written in an override
        return json.dumps(node) if isinstance(node, dict) else str(node)

    def metric(self, key: str, agg: str | None = None):
        """A number (or a text) the run recorded, None where it has none. With `agg` (last, min, max, best): over
        history.csv's column `key`, its last row, its lowest or highest value, or its row at the best epoch.
        Without: the best epoch's value in metrics.json (`val/f1`, `epoch`), test/<name> from its test results,
        a train/ metric's last epoch, `verdict` from its diagnosis, anything else by its dotted path (`device`)."""
        best = self.metrics.get("best") or {}
        if agg is None and key.startswith("train/") and key not in best:
            agg = "last"
        if agg is not None:
            return self._from_history(key, agg, best.get("epoch"))
        if key in best:
            return best[key]
        if key.startswith("test/"):
            return (self.metrics.get("test") or {}).get(key[len("test/") :])
        if key == "verdict":
            return (self.metrics.get("diagnosis") or {}).get("verdict")
        found, node = lookup(self.metrics, key)
        return node if found and not isinstance(node, dict | list) else None

    def _from_history(self, key: str, agg: str, best_epoch):
        rows = [row for row in self.history if key in row]
        if not rows:
            return None
        if agg == "last":
            return rows[-1][key]
        if agg == "best":
            return next((row[key] for row in rows if row.get("epoch") == best_epoch), None)
        finite = [row[key] for row in rows if not math.isnan(row[key])]
        if not finite:
            return None
        return min(finite) if agg == "min" else max(finite)

    @property
    def run_dir(self) -> Path:
        return self.path

    @property
    def status(self) -> str:
        return "unreadable" if self.problem else self.metrics.get("status", "not started")

    @property
    def monitor(self) -> str:
        return self.metrics.get("monitor") or self._trainer("monitor", "val/f1")

    @property
    def mode(self) -> str:
        return self._trainer("mode", "max")

    def _trainer(self, key: str, default: str) -> str:
        found, value = self.find(f"trainer.{key}")
        return value if found and value is not None else default


# How Hydra writes hydra.yaml (through OmegaConf): `hydra.runtime.choices` is this block, its entries six spaces in.
CHOICES_BLOCK = re.compile(r"^  runtime:\n(?:    .*\n)*?    choices:\n((?:      .*\n)+)", re.MULTILINE)


def read_choices(path: Path) -> dict:
    """hydra.yaml's hydra.runtime.choices: each config group's chosen option. The file holds some 400 values; the
    block is parsed alone (`dlrun runs` reads a thousand of these), a file laid out otherwise whole."""
    try:
        check_size(path, MAX_YAML_BYTES)
        found = CHOICES_BLOCK.search(Path(path).read_text())
        choices = yaml.load(textwrap.dedent(found[1]), Loader=SAFE_LOADER) if found else None
    except (OSError, UnicodeDecodeError, Unreadable, yaml.YAMLError):
        choices = None
    if isinstance(choices, dict):
        return choices
    hydra_cfg = _typed(read_yaml(path), dict)
    return _typed(_typed(_typed(hydra_cfg.get("hydra"), dict).get("runtime"), dict).get("choices"), dict)


def read_config(run_dir: Path) -> dict:
    """The run's composed config as Hydra saved it, interpolations unresolved; {} when it is missing or damaged."""
    return _typed(read_yaml(Path(run_dir) / ".hydra" / "config.yaml"), dict)


def _typed(value, kind: type):
    """A file of .hydra/ as the type it should have; missing or of another type, an empty one (Hydra writes
    these files in place, so a crash can leave them cut)."""
    return value if isinstance(value, kind) else kind()


def load_metrics(path: Path) -> dict:
    """metrics.json, checked for the types the summaries read; {} when there is none (a run not started);
    Unreadable when it is too large, not JSON, or holds a value of the wrong type."""
    metrics = load_json(path)
    if metrics is None:
        return {}
    for key, kinds in METRICS_TYPES.items():
        value = metrics.get(key)
        if key in metrics and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise Unreadable(path, f'"{key}" is {json_kind(value)}, not {_kind_name(kinds)}')
    for key in ("best", "test"):
        for name, value in (metrics.get(key) or {}).items():
            if value is not None and (not isinstance(value, NUMBER) or isinstance(value, bool)):
                raise Unreadable(path, f'"{key}"."{name}" is {json_kind(value)}, not a number')
    verdict = (metrics.get("diagnosis") or {}).get("verdict")
    if verdict is not None and not isinstance(verdict, str):
        raise Unreadable(path, f'"diagnosis"."verdict" is {json_kind(verdict)}, not a string')
    return metrics


def _kind_name(kinds: tuple) -> str:
    return "a number" if kinds == NUMBER else {str: "a string", dict: "an object"}[kinds[0]]


def load_history(path: Path) -> list[dict]:
    """history.csv's rows as numbers (a cell that is not one: NaN); [] when there is none; Unreadable when
    it is too large or not CSV text."""
    try:
        check_size(path, MAX_CSV_BYTES)
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: float_or_nan(v) for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []
    except (UnicodeDecodeError, csv.Error) as err:
        raise Unreadable(path, f"not CSV text ({err})") from None
    except OSError as err:
        raise Unreadable(path, f"cannot be read ({err.strerror})") from None


def read_history(path: Path) -> list[dict]:
    """history.csv's rows, [] when the file is missing or cannot be used."""
    try:
        return load_history(path)
    except Unreadable:
        return []


def float_or_nan(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def resolved(config: dict) -> dict:
    """The saved config with its interpolations resolved (`${oc.select:dataset.epochs,20}` -> 20), key by key:
    one that cannot be resolved outside its job (`${hydra:...}`, a missing key) keeps its saved text."""
    conf = OmegaConf.create(config)
    if not any(u in str(config) for u in UNRESOLVABLE):
        with contextlib.suppress(Exception):  # one that cannot be: key by key, below (a tenth of the speed)
            return OmegaConf.to_container(conf, resolve=True)

    def walk(node, prefix: str):
        if isinstance(node, dict):
            return {k: walk(v, f"{prefix}{k}.") for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{prefix}{i}.") for i, v in enumerate(node)]
        if not isinstance(node, str) or "${" not in node or any(u in node for u in UNRESOLVABLE):
            return node
        try:
            value = OmegaConf.select(conf, prefix[:-1], throw_on_resolution_failure=True)
        except Exception:  # noqa: BLE001 - an interpolation that needs its job (or another resolver)
            return node
        return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value

    try:
        return walk(OmegaConf.to_container(conf, resolve=False), "")
    except Exception:  # noqa: BLE001 - a config OmegaConf cannot read: as it was saved
        return config
