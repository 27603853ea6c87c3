"""Finished (or unfinished) runs read back from their directories: metrics.json, history.csv and .hydra/.

Nothing here imports torch: `dlrun compare` and a sweep's summary read runs without it."""

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from dlrun.core.io import read_json, read_yaml
from dlrun.core.nested import lookup


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

    @classmethod
    def load(cls, path: Path) -> "Run":
        hydra_dir = path / ".hydra"
        overrides = {}
        for item in read_yaml(hydra_dir / "overrides.yaml") or []:
            key, _, value = str(item).partition("=")
            overrides[key.lstrip("+~")] = value
        hydra_cfg = read_yaml(hydra_dir / "hydra.yaml") or {}
        choices = (hydra_cfg.get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
        return cls(
            path,
            overrides,
            read_yaml(hydra_dir / "config.yaml") or {},
            choices,
            read_json(path / "metrics.json"),
            read_history(path / "history.csv"),
        )

    def value(self, key: str) -> str:
        """A config value as text: a group's chosen option, else the key in the saved config."""
        if key in self.choices:
            choice = self.choices[key]
            return "null" if choice is None else str(choice)  # as an override writes it: experiment=null
        found, node = lookup(self.config, key)
        if not found:
            return self.overrides.get(key, "")
        if isinstance(node, list):
            return "[" + ",".join(map(str, node)) + "]"  # as it is written in an override
        return json.dumps(node) if isinstance(node, dict) else str(node)

    @property
    def run_dir(self) -> Path:
        return self.path

    @property
    def status(self) -> str:
        return self.metrics.get("status", "not started")

    @property
    def monitor(self) -> str:
        return self.metrics.get("monitor") or self.config.get("trainer", {}).get("monitor", "val/f1")

    @property
    def mode(self) -> str:
        return self.config.get("trainer", {}).get("mode", "max")


def read_history(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return [{k: float_or_nan(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except OSError:
        return []


def float_or_nan(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
