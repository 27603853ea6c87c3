"""`hydra/sweeper=dlrun_optuna`, which `hparams_search=optuna` picks: an Optuna search as a Hydra sweep, each trial a
job of the sweep's launcher (in this process, joblib workers or submitit jobs). Hydra's plugin scan imports this
module on every command, so optuna is imported only in `sweep`."""

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf


class DlrunOptunaSweeper(Sweeper):
    def __init__(self, **settings) -> None:
        # The settings are read in setup, resolved against the whole config (${trainer.mode}, ${seed}).
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        try:
            from ._search import Search
        except ModuleNotFoundError as err:
            if err.name != "optuna":
                raise
            from dlrun.core.errors import DlrunError

            raise DlrunError("hparams_search=optuna: needs optuna: pip install 'dlrun[search]'") from None
        settings = OmegaConf.to_container(self.config.hydra.sweeper, resolve=True)
        Search(settings, self.config, self.launcher).run(list(arguments))
