"""The sweeper's config, `hydra/sweeper=dlrun_optuna`: its own name, so it never collides with hydra-optuna-sweeper's
`optuna`. Hydra imports this module on every command (its plugin scan), so it imports nothing heavy."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class DlrunOptunaSweeperConf:
    # Counts are typed Any and checked by the sweep, whose error line names the key (n_trials=x).
    _target_: str = "hydra_plugins.dlrun_optuna_sweeper.sweeper.DlrunOptunaSweeper"
    # The sampler is built in the sweep, once the study's history is known (its seed depends on it).
    _recursive_: bool = False
    direction: str = "minimize"  # or maximize; hparams_search=optuna follows trainer.mode
    study_name: str = "dlrun"
    storage: str | None = None  # an Optuna storage URL; null keeps the study in memory (no resume, no pruning elsewhere)
    n_trials: Any = 20  # the study's total: a rerun runs only the trials it lacks
    n_trials_more: Any = 0  # > 0: this many trials beyond those the study holds
    n_jobs: Any = 1  # trials launched together (the launcher's workers); 1 lets the sampler use every result so far
    max_failures: Any = 10  # failed trials in one command before the search stops (null: never)
    pruner: str = "median"  # none, median or hyperband
    warmup_epochs: Any = 1  # epochs every trial trains before the pruner may stop it
    startup_trials: Any = 5  # finished trials before the median pruner prunes at all
    sampler: dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    params: dict[str, Any] = field(default_factory=dict)  # key -> interval(...), tag(log, interval(...)), choice(...), range(...)


ConfigStore.instance().store(group="hydra/sweeper", name="dlrun_optuna", node=DlrunOptunaSweeperConf, provider="dlrun")
