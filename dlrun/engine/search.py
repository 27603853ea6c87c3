"""A run that is a trial of an Optuna search (`hparams_search=optuna`): after every epoch it reports the monitored
val metric to the trial in the study's storage and asks the study's pruner whether to go on.

The trial's identity arrives in the config (`search.storage`, `search.study`, `search.trial`), set by the sweeper as
job overrides, so a trial reports the same way from the sweeping process, a joblib worker or a cluster node. Optuna
is imported, and the study opened, only at the first report of a run that has a trial."""

import logging

from dlrun.core.ranks import is_main, world_size

log = logging.getLogger(__name__)


class Pruned(Exception):
    """The study's pruner stopped this trial after `epoch`; the run ends as `pruned`, resumable like any other."""

    def __init__(self, epoch: int, value: float, pruner: str):
        self.details = {"epoch": epoch, "value": value, "pruner": pruner}
        super().__init__(f"pruned after epoch {epoch} by the {pruner} pruner ({value:.4g} is not promising)")


def make_pruner(search: dict, epochs: int):
    """The pruner a search block names; the sweeper builds the same one, so the sampler sees it too (Hyperband's brackets)."""
    import optuna

    name, warmup = search.get("pruner", "median"), int(search.get("warmup_epochs", 1))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(search.get("startup_trials", 5)), n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup), max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


class TrialReport:
    """Reports each epoch of one run to its trial; a no-op for a run that is no trial (or no longer a running one)."""

    def __init__(self, search, epochs: int, device):
        self.search = dict(search) if search and search.get("trial") is not None else None
        self.epochs, self.device = epochs, device
        self.trial = None

    def after_epoch(self, epoch: int, value: float) -> None:
        """Raise Pruned when the pruner stops the trial; every rank stops together, on rank 0's word."""
        if self.search is None:
            return
        prune = False
        if is_main():
            try:
                prune = self._report(epoch, value)
            except Exception as err:  # noqa: BLE001 - a storage that cannot be reached costs the pruning, not the run
                log.warning("search: epoch %d not reported to trial %s: %s", epoch, self.search.get("trial"), err)
        if world_size() > 1:
            prune = _broadcast(prune, self.device)
        if prune:
            raise Pruned(epoch, value, self.search.get("pruner", "median"))

    def _report(self, epoch: int, value: float) -> bool:
        trial = self.trial or self._open()
        if trial is None:
            return False
        if epoch not in trial.storage.get_trial(trial.id).intermediate_values:  # a resumed epoch reports once
            trial.handle.report(value, epoch)
        # A trial that trained every epoch is complete: pruning it then would only skip its test.
        return epoch < self.epochs and trial.handle.should_prune()

    def _open(self):
        """The trial in its study's storage, if it is still running (a pruned trial resumed by hand trains on)."""
        import optuna

        storage = optuna.storages.RDBStorage(self.search["storage"])
        study_id = storage.get_study_id_from_name(self.search["study"])
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(self.search["trial"]))
        if storage.get_trial(trial_id).state != optuna.trial.TrialState.RUNNING:
            log.info("trial %s of study %s is finished; this run is not reported", self.search["trial"], self.search["study"])
            self.search = None
            return None
        pruner = make_pruner(self.search, self.epochs)
        study = optuna.load_study(study_name=self.search["study"], storage=storage, pruner=pruner)
        self.trial = _OpenTrial(storage, trial_id, optuna.trial.Trial(study, trial_id))
        return self.trial


class _OpenTrial:
    def __init__(self, storage, trial_id: int, handle):
        self.storage, self.id, self.handle = storage, trial_id, handle


def _broadcast(flag: bool, device) -> bool:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([int(flag)], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())
