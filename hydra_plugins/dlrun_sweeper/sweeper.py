"""Hydra's BasicSweeper composes every job's config before the first job starts, so that a bad override fails the
sweep before anything runs, and then its launcher composes each job again as it starts: about 0.17 s a job, twice.
With the basic launcher, which runs the jobs in this process, the launcher's composition can be the check's.
Other launchers compose in their workers and get Hydra's config loader untouched.

For dlrun's commands it is the `basic` sweeper, the default: Hydra's plugin scan runs this module after Hydra's
own, whose `hydra/sweeper=basic` it replaces. Another Hydra app in the same environment keeps Hydra's."""

import dataclasses
import sys
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore

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

    def hold(self, master_config, sweep_overrides: list[str]) -> None:
        """Compose one job's config (raising as the check does for one that cannot be) and keep it for its launch."""
        config = self.loader.load_sweep_config(master_config, sweep_overrides)
        if len(self.held) < MAX_HELD:
            self.held[(id(master_config), tuple(sweep_overrides))] = config

    def load_sweep_config(self, master_config, sweep_overrides):
        held = self.held.pop((id(master_config), tuple(sweep_overrides)), None)
        return held if held is not None else self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name):
        return getattr(self.loader, name)


if "dlrun.app.train_cmd" in sys.modules:
    ConfigStore.instance().store(group="hydra/sweeper", name="basic", node=ComposeOnceSweeperConf, provider="dlrun")
