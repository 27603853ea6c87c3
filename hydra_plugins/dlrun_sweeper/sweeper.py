"""Hydra's BasicSweeper composes every job's config before the first job starts, so that a bad override fails the
sweep before anything runs, and then its launcher composes each job again as it starts: about 0.07 s a job, twice.
With the basic launcher, which runs the jobs in this process, the launcher's composition can be the check's, and a
job whose overrides differ from the first job's in values only (`optimizer.lr=0.1` for `optimizer.lr=0.05`, not
`model=cnn` for `model=mlp`) starts from the first job's composed defaults instead of reading and merging them again.
Other launchers compose in their workers and get Hydra's config loader untouched.

For dlrun's commands it is the `basic` sweeper, the default: Hydra's plugin scan runs this module after Hydra's
own, whose `hydra/sweeper=basic` it replaces. Another Hydra app in the same environment keeps Hydra's."""

import copy
import dataclasses
import os
import sys
from dataclasses import dataclass

from hydra._internal.config_loader_impl import ConfigLoaderImpl, create_defaults_list, get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.conf import ConfigSourceInfo
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobRuntime
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# The most composed configs held for their jobs at once (a few hundred KB each); a job beyond is composed again.
MAX_HELD = 256


@dataclass
class ComposeOnceSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.dlrun_sweeper.sweeper.ComposeOnceSweeper"


class ComposeOnceSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        if config.hydra.launcher.get("_target_") == BASIC_LAUNCHER:
            hydra_context = dataclasses.replace(hydra_context, config_loader=ComposedOnce(hydra_context.config_loader))
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch) -> None:
        loader = self.hydra_context.config_loader
        if not isinstance(loader, ComposedOnce):
            super().validate_batch_is_legal(batch)
            return
        for overrides in batch:
            loader.hold(self.config, list(overrides))


class ComposedOnce:
    """Hydra's config loader, except that the launcher's load of a job the check composed takes the check's config.
    The loader returns a new config each time and the check had thrown its copy away: the launcher gets what a
    second composition would give it."""

    def __init__(self, loader):
        self.loader = loader
        self.held: dict[tuple, object] = {}
        self.composer = DefaultsOnce(loader)

    def hold(self, master_config, sweep_overrides: list[str]) -> None:
        """Compose one job's config (raising as the check does for one that cannot be) and keep it for its launch."""
        config = self.composer.load_sweep_config(master_config, sweep_overrides)
        if len(self.held) < MAX_HELD:
            self.held[(id(master_config), tuple(sweep_overrides))] = config

    def load_sweep_config(self, master_config, sweep_overrides):
        held = self.held.pop((id(master_config), tuple(sweep_overrides)), None)
        return held if held is not None else self.composer.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name):
        return getattr(self.loader, name)


@dataclass
class _Composed:
    """What a composition found before it applied its value overrides: a later job with the same defaults starts here."""

    parsed: list  # the overrides, parsed
    values: list[int]  # which of them are value overrides (the others chose the defaults)
    defaults_list: object
    config: object  # the defaults merged, before any value override
    sources: list[ConfigSourceInfo]

    def fits(self, parsed: list) -> bool:
        """Whether overrides compose to the same defaults: the same keys in the same order, and where one differs,
        a plain value of a key that is not a config group, outside hydra's own settings (its search path among them)."""
        if len(parsed) != len(self.parsed):
            return False
        values = set(self.values)
        for i, (mine, theirs) in enumerate(zip(self.parsed, parsed)):
            same_slot = (mine.key_or_group, mine.package, mine.type) == (theirs.key_or_group, theirs.package, theirs.type)
            if not same_slot:
                return False
            if mine.input_line == theirs.input_line:
                continue
            plain = not isinstance(mine.value(), dict) and not isinstance(theirs.value(), dict)
            if i not in values or not plain or theirs.is_hydra_override():
                return False
        return True


class DefaultsOnce:
    """Hydra's load_sweep_config (ConfigLoaderImpl._load_configuration_impl, step for step), which keeps the first
    job's merged defaults and composes each later job that fits them from a copy, applying only its own overrides."""

    def __init__(self, loader: ConfigLoaderImpl):
        self.loader = loader
        self.first: dict[int, _Composed] = {}  # by id of the sweep's master config

    def load_sweep_config(self, master_config, sweep_overrides: list[str]):
        overrides = [*OmegaConf.to_container(master_config.hydra.overrides.hydra), *sweep_overrides]
        config_name = master_config.hydra.job.config_name
        try:
            config = self._compose(id(master_config), config_name, overrides)
        except OmegaConfBaseException as e:
            raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config

    def _compose(self, sweep: int, config_name: str, overrides: list[str]):
        loader = self.loader
        first = self.first.get(sweep)
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        if first is not None and first.fits(parsed):
            loader.validate_sweep_overrides_legal(overrides=parsed, run_mode=RunMode.RUN, from_shell=True)
            composed = dataclasses.replace(first, parsed=parsed, config=copy.deepcopy(first.config))
        else:
            composed = self._merge_defaults(config_name, overrides)
            if first is None:
                self.first[sweep] = dataclasses.replace(composed, config=copy.deepcopy(composed.config))
        cfg = composed.config
        loader._apply_overrides_to_config([composed.parsed[i] for i in composed.values], cfg)
        app_overrides = []
        for override in composed.parsed:
            if override.is_hydra_override():
                cfg.hydra.overrides.hydra.append(override.input_line)
            else:
                cfg.hydra.overrides.task.append(override.input_line)
                app_overrides.append(override)
        with open_dict(cfg.hydra):
            cfg.hydra.runtime.choices.update(composed.defaults_list.overrides.known_choices)
            for key in cfg.hydra.job.env_copy:
                cfg.hydra.job.env_set[key] = os.environ[key]
        from hydra import __version__, version

        cfg.hydra.runtime.version = __version__
        cfg.hydra.runtime.version_base = version.getbase()
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.config_sources = list(composed.sources)
        if "name" not in cfg.hydra.job:
            cfg.hydra.job.name = JobRuntime().get("name")
        cfg.hydra.job.override_dirname = _overrides_dirname(app_overrides, cfg)
        cfg.hydra.job.config_name = config_name
        return cfg

    def _merge_defaults(self, config_name: str, overrides: list[str]) -> _Composed:
        loader = self.loader
        loader.ensure_main_config_source_available()
        parsed, caching_repo = loader._parse_overrides_and_create_caching_repo(config_name, overrides)
        loader.validate_sweep_overrides_legal(overrides=parsed, run_mode=RunMode.RUN, from_shell=True)
        defaults_list = create_defaults_list(
            repo=caching_repo, config_name=config_name, overrides_list=parsed, prepend_hydra=True, skip_missing=False
        )
        cfg = loader._compose_config_from_defaults_list(defaults=defaults_list.defaults, repo=caching_repo)
        OmegaConf.set_struct(cfg, True)
        OmegaConf.set_readonly(cfg.hydra, False)
        chosen = {id(o) for o in defaults_list.config_overrides}
        sources = [ConfigSourceInfo(path=x.path, schema=x.scheme(), provider=x.provider) for x in caching_repo.get_sources()]
        return _Composed(parsed, [i for i, o in enumerate(parsed) if id(o) in chosen], defaults_list, cfg, sources)


def _overrides_dirname(app_overrides: list, cfg) -> str:
    named = cfg.hydra.job.config.override_dirname
    return get_overrides_dirname(
        overrides=app_overrides, kv_sep=named.kv_sep, item_sep=named.item_sep, exclude_keys=named.exclude_keys
    )


if "dlrun.app.train_cmd" in sys.modules:
    ConfigStore.instance().store(group="hydra/sweeper", name="basic", node=ComposeOnceSweeperConf, provider="dlrun")
