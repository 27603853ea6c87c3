"""The shipped config groups and their options, read from the package without importing Hydra."""

import functools
import re
from importlib.resources import files

CONFIG_MODULE = "dlrun.configs"
HIDDEN_GROUPS = {"hydra", "paths"}


def config_groups() -> dict[str, list[str]]:
    """The shipped config groups and their options, read from the package's configs folder."""
    root = files(CONFIG_MODULE)
    groups = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and entry.name not in HIDDEN_GROUPS and not entry.name.startswith("_"):
            options = sorted(
                f.name[: -len(".yaml")] for f in entry.iterdir() if f.name.endswith(".yaml") and not f.name.startswith("_")
            )
            groups[entry.name] = options
    return groups


# An option that makes a command a sweep, or a single run, by itself: `hydra: {mode: MULTIRUN}` in its YAML.
_SETS_RUN_MODE = re.compile(r"^\s+mode:\s*(MULTIRUN|RUN)\b", re.MULTILINE)


@functools.cache
def groups_setting_run_mode() -> frozenset[str]:
    """The groups (`experiment`, `hparams_search`, `hydra/sweeper`, ...) with an option that sets hydra.mode: only
    a command choosing one of them needs its config composed to tell whether it runs once or sweeps."""
    root = files(CONFIG_MODULE)
    found, folders = set(), [(entry, entry.name) for entry in root.iterdir() if entry.is_dir()]
    while folders:
        folder, group = folders.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                folders.append((entry, f"{group}/{entry.name}"))
            elif entry.name.endswith(".yaml") and _SETS_RUN_MODE.search(entry.read_text()):
                found.add(group)
    return frozenset(found)
