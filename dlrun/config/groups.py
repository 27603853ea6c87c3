"""The shipped config groups and their options, read from the package without importing Hydra."""

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
