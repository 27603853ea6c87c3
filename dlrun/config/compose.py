"""Configs composed from the shipped groups outside a Hydra app (`dlrun eval`, error messages, tests)."""

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dlrun.config.groups import CONFIG_MODULE, config_groups
from dlrun.config.table_task import register
from dlrun.core.nested import walk

register()  # a saved config (dlrun eval's) resolves dataset=csv's task without composing the shipped configs first


def compose_config(name: str = "train", overrides=()):
    """`name`.yaml composed with `overrides`, as `dlrun train OVERRIDES` would compose it (without hydra.*)."""
    if GlobalHydra.instance().is_initialized():  # called inside a Hydra context (a test's compose, a run)
        return compose(name, overrides=list(overrides))
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def known_keys(overrides: list[str]) -> list[str]:
    """Every key of the config composed with the user's group choices, plus the group names."""
    choices = [o for o in overrides if "=" in o and "." not in o.split("=")[0] and "," not in o]
    keys = set(config_groups())
    try:
        try:
            cfg = compose_config("train", choices)
        except Exception:
            cfg = compose_config("train")
    except Exception:
        return sorted(keys)
    keys.update(key for key, _ in walk(OmegaConf.to_container(cfg, resolve=False)))
    return sorted(keys)
