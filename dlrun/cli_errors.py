"""Turn an exception from a `dlrun` command into one line for the user, and an exit code."""

import re

from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)

from dlrun.cli import config_groups, did_you_mean
from dlrun.errors import DlrunError


def describe(err: BaseException, overrides: list[str]) -> tuple[str, int]:
    if isinstance(err, DlrunError):
        return str(err), err.exit_code
    if isinstance(err, MissingConfigException):
        return _missing_option(err), 2
    if isinstance(err, OverrideParseException):
        return f"cannot parse override '{err.override}': {_first_line(err.message)}", 2
    if isinstance(err, ConfigCompositionException):
        match = re.search(r"Could not override '([^']+)'", str(err)) or re.search(r"'([^']+)' does not exist", str(err))
        if match:
            key = match.group(1)
            return f"{key}: no such key{did_you_mean(key, known_keys(overrides))}", 2
        cause = err.__cause__
        return _first_line(str(cause) if cause else str(err)), 2
    if isinstance(err, InstantiationException):
        return _first_line(str(err)), 2
    return f"{type(err).__name__}: {_first_line(str(err))} (run again with --verbose for the traceback)", 1


def _missing_option(err: MissingConfigException) -> str:
    path = err.missing_cfg_file or ""
    group, _, option = path.rpartition("/")
    options = err.options or config_groups().get(group, [])
    if group:
        return f"{group}={option}: no such option{did_you_mean(option, options)} (options: {', '.join(options)})"
    return _first_line(str(err))


def known_keys(overrides: list[str]) -> list[str]:
    """Every key of the config composed with the user's group choices, plus the group names."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    choices = [o for o in overrides if "=" in o and "." not in o.split("=")[0] and "," not in o]
    keys = set(config_groups())
    try:
        with initialize_config_module("dlrun.configs", version_base="1.3"):
            try:
                cfg = compose("train", overrides=choices)
            except Exception:
                cfg = compose("train")
    except Exception:
        return sorted(keys)

    def walk(node, prefix):
        for k, v in node.items():
            full = f"{prefix}{k}"
            keys.add(full)
            if isinstance(v, dict):
                walk(v, full + ".")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return sorted(keys)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)
