"""The search behind DlrunOptunaSweeper, on Optuna's ask-and-tell API. Its name starts with `_`, so Hydra's plugin
scan skips it: optuna is imported only when a search runs.

The study is the record: `n_trials` is its total, so a rerun into the same sweep directory asks only for the trials
it lacks, resumes those a killed sweep left running (in their own job directories), and never re-proposes the
sampler's seeded first points. Each trial's job reports its epochs to the study's storage itself (dlrun.engine.search);
here its end is told: complete, pruned (the job's metrics.json says so) or failed."""

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override, Transformer
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from dlrun.config.schema import PRUNERS
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.io import read_json, write_json, write_text
from dlrun.core.text import first_line, quote_override, show_value
from dlrun.engine.search import make_pruner

log = logging.getLogger(__name__)

SWEEP_DIR_ATTR = "dlrun_sweep_dir"  # which sweep directory a trial's job lives in: a RUNNING one there is ours to resume
SYNTAX = "interval(a, b), int(interval(a, b)), tag(log, interval(a, b)), choice(x, y, ...), range(a, b[, step]) or a value"


def search_space(lines: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions of the swept keys, and the overrides every trial shares; a later line of a key wins."""
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception as err:  # noqa: BLE001 - Hydra's parse error, as one line
        raise DlrunError(f"hydra.sweeper.params: {first_line(str(err))}") from None
    final: dict[str, Override] = {o.get_key_element(): o for o in parsed}
    space, fixed = {}, []
    for key, override in final.items():
        if override.is_sweep_override():
            space[key] = distribution(key, override)
        else:
            fixed.append(override.input_line)
    return space, fixed


def distribution(key: str, override: Override) -> BaseDistribution:
    value = override.value()
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if override.is_range_sweep() and not value.shuffle:
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(key, _value_text(override), "is an empty range")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if (override.is_choice_sweep() or override.is_range_sweep()) and not isinstance(value, Glob):
        # a list or dict choice ([16,16]) stays the text of its override: Optuna's choices are plain values
        choices = [v if isinstance(v, str | int | float | bool) or v is None else show_value(v) for v in _encoded(override)]
        return CategoricalDistribution(choices)
    raise ConfigError(key, _value_text(override), f"an Optuna search takes {SYNTAX}")


def _value_text(override: Override) -> str:
    return override.input_line.split("=", 1)[1] if override.input_line else str(override.value())


def _encoded(override: Override) -> list:
    return list(override.sweep_iterator(transformer=Transformer.encode))


def override_text(key: str, value) -> str:
    """A sampled value as the job's override: every digit of a float; a text quoted where it needs it (`a,b`), but
    not a list or dict choice, which is the text of its own override already."""
    if isinstance(value, float):
        return f"{key}={value!r}"
    if isinstance(value, str) and not value.startswith(("[", "{")):
        return f"{key}={quote_override(value)}"
    return f"{key}={show_value(value)}"


def shown_storage(storage: str | None) -> str:
    """A storage URL as printed: a database password in it is masked."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", storage) if storage else "in memory"


def search_block(settings: dict, storage: str, number: int) -> str:
    """The `search` override that tells a trial's job where to report: storage, study, trial number and pruner."""
    block = {
        "storage": storage,
        "study": settings["study_name"],
        "trial": number,
        "pruner": settings["pruner"],
        "warmup_epochs": settings["warmup_epochs"],
        "startup_trials": settings["startup_trials"],
    }
    # every text quoted: a URL's `:` and `/` would end an unquoted value of a dict override
    quoted = ("'" + v.replace("'", "\\'") + "'" if isinstance(v, str) else str(v) for v in block.values())
    return "search={" + ",".join(f"{k}:{v}" for k, v in zip(block, quoted)) + "}"


def absolute_storage(storage: str | None) -> str | None:
    """A SQLite URL with a relative path names the file from the sweeping process's folder: workers elsewhere get it whole."""
    prefix = "sqlite:///"
    if storage and storage.startswith(prefix) and not storage.startswith(prefix + "/") and ":memory:" not in storage:
        return prefix + str(Path(storage[len(prefix) :]).resolve())
    return storage


def check_settings(settings: dict) -> None:
    if settings["pruner"] not in PRUNERS:
        raise ConfigError("hydra.sweeper.pruner", settings["pruner"], f"must be one of {', '.join(PRUNERS)}")
    if settings["direction"] not in ("minimize", "maximize"):
        raise ConfigError("hydra.sweeper.direction", settings["direction"], "must be minimize or maximize")
    for key in ("n_trials", "n_trials_more", "warmup_epochs", "startup_trials"):
        if not _is_count(settings[key], 0):
            raise ConfigError(f"hydra.sweeper.{key}", show_value(settings[key]), "must be an integer >= 0")
    n_jobs = settings["n_jobs"]
    if not (isinstance(n_jobs, int) and not isinstance(n_jobs, bool) and n_jobs != 0):
        raise ConfigError("hydra.sweeper.n_jobs", show_value(n_jobs), "must be an integer >= 1 (or, as joblib's, -1: every CPU)")
    if n_jobs < 0:  # joblib's count: -1 every CPU, -2 all but one
        settings["n_jobs"] = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    if settings["max_failures"] is not None and not _is_count(settings["max_failures"], 0):
        raise ConfigError("hydra.sweeper.max_failures", show_value(settings["max_failures"]), "must be an integer >= 0 or null")


def _is_count(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def open_study(settings: dict, storage: str | None, epochs: int) -> optuna.Study:
    """The study, created or loaded; its sampler's seed moves on by the trials it holds, so a rerun continues the
    seeded random start-up instead of proposing its first points again."""
    pruner = make_pruner(settings, epochs)
    try:
        study = optuna.create_study(
            study_name=settings["study_name"],
            storage=storage,
            direction=settings["direction"],
            pruner=pruner,
            sampler=optuna.samplers.RandomSampler(),
            load_if_exists=True,
        )
    except Exception as err:  # noqa: BLE001 - a storage that cannot be opened, a study with another direction
        raise DlrunError(
            f"hydra.sweeper.storage={shown_storage(storage)}: {type(err).__name__}: {first_line(str(err))}"
        ) from None
    if study.direction.name.lower() != settings["direction"]:
        raise ConfigError(
            "hydra.sweeper.direction",
            settings["direction"],
            f"study {study.study_name} was made to {study.direction.name.lower()}",
        )
    sampler = dict(settings["sampler"])
    if sampler.get("seed") is not None:
        sampler["seed"] = int(sampler["seed"]) + len(study.trials)
    try:
        study.sampler = instantiate(sampler)
    except Exception as err:  # noqa: BLE001 - a typo in the sampler's _target_ or arguments
        target = sampler.get("_target_")
        why = first_line(str(err)).split(", set env var HYDRA_FULL_ERROR")[0]
        raise ConfigError("hydra.sweeper.sampler._target_", target, f"cannot be built: {why}") from None
    return study


def sweep_stopping() -> bool:
    """The flag `dlrun train` raises when the sweep gets SIGTERM (dlrun.app.job.STOP_ENV; that module imports torch,
    which a sweep whose trials run in workers need not load here)."""
    path = os.environ.get("DLRUN_SWEEP_STOP")
    return bool(path) and Path(path).exists()


def say(line: str) -> None:
    # print, not the logger: in the sweeping process Hydra's console handler would show each line twice
    print(line, flush=True)


@dataclass
class Unstarted:
    """A trial whose job never started, and why."""

    why: str


@dataclass
class Tally:
    """What this command's trials came to."""

    failures: int = 0
    stopped: str | None = None  # why the search stopped before its goal


def outcome(ret) -> tuple[TrialState | None, float | None, str]:
    """How a trial's job ended: (state to tell, value, why). None: not finished (interrupted, never started): it stays
    RUNNING in the study, and the same command resumes it."""
    try:
        value = float(ret.return_value)
    except Exception as err:  # noqa: BLE001 - the job raised: Hydra keeps the exception in its return
        return TrialState.FAIL, None, first_line(str(err))
    job_dir = Path(OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir"))
    metrics = read_json(job_dir / "metrics.json")
    status = metrics.get("status")
    if status == "pruned":
        return TrialState.PRUNED, None, "pruned"
    if status in (None, "running", "interrupted"):
        return None, None, status or "not started"
    if status == "completed" and math.isfinite(value):
        return TrialState.COMPLETE, value, status
    return TrialState.FAIL, None, metrics.get("error") or status or "no metrics.json"


def write_results(study: optuna.Study, sweep_dir: Path, seed) -> dict:
    """optimization_results.yaml: the best trial, the count of each state, and with 10 completed trials or more the
    parameters' importance (fANOVA), which the summary prints."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    results: dict = {"name": "optuna", "study": study.study_name}
    results["trials"] = {s.name.lower(): states.count(s) for s in TrialState if states.count(s)}
    complete = states.count(TrialState.COMPLETE)
    if complete:
        best = study.best_trial
        results.update(best_params=dict(best.params), best_value=best.value, best_trial=best.number)
    if complete >= 10:
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            importance = optuna.importance.get_param_importances(study, evaluator=evaluator)
            results["importance"] = {k: round(float(v), 4) for k, v in importance.items()}
        except Exception as err:  # noqa: BLE001 - e.g. a parameter that never varied; the rest stands
            log.warning("parameter importance not computed: %s", first_line(str(err)))
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
    return results


def describe_end(results: dict, tally: Tally) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in results["trials"].items())
    line = f"optuna: study {results['study']} holds {sum(results['trials'].values())} trials ({counts})"
    if "best_value" in results:
        line += f"; best value {results['best_value']:.4g} (trial {results['best_trial']})"
    return line + (f"; {tally.stopped}" if tally.stopped else "")


class Search:
    """One command's share of the study: the trials it lacks, in batches of n_jobs, each told when its job ends."""

    def __init__(self, settings: dict, config, launcher):
        self.settings, self.config, self.launcher = settings, config, launcher
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()
        self.storage = absolute_storage(settings["storage"])
        self.tally = Tally()

    def run(self, arguments: list[str]) -> None:
        check_settings(self.settings)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search's own lines say what it does
        params = [f"{k}={v}" for k, v in (self.settings.get("params") or {}).items()]
        self.space, self.fixed = search_space([*params, *arguments])
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")  # as Hydra's own sweeper: what the summary reads
        epochs = int(OmegaConf.select(self.config, "trainer.epochs", default=1))
        study = open_study(self.settings, self.storage, epochs)
        orphans = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(SWEEP_DIR_ATTR) == str(self.sweep_dir)
        ]
        more = self.settings["n_trials_more"]
        goal = len(study.trials) + more if more > 0 else self.settings["n_trials"]
        self.announce(study, goal, orphans)
        self.loop(study, goal, orphans)
        results = write_results(study, self.sweep_dir, self.settings["sampler"].get("seed"))
        say(describe_end(results, self.tally))

    def announce(self, study: optuna.Study, goal: int, orphans: list) -> None:
        held = len(study.trials)
        sampler, pruner = type(study.sampler).__name__, self.settings["pruner"]
        todo = max(goal - held, 0) + len(orphans)
        line = f"optuna: study {study.study_name} ({shown_storage(self.storage)}) holds {held} trials, goal {goal}: "
        line += f"{todo} to run" + (f", {len(orphans)} of them resumed" if orphans else "")
        say(f"{line}; {sampler}, pruner {pruner}")
        if self.storage is None and pruner != "none":
            say("optuna: no pruning: trials report through a storage (hydra.sweeper.storage)")

    def loop(self, study: optuna.Study, goal: int, orphans: list) -> None:
        job_idx = len(study.trials)
        while not self.tally.stopped:
            room = self.settings["n_jobs"]
            batch = [(t.number, dict(t.params)) for t in orphans[:room]]
            orphans = orphans[len(batch) :]
            while len(batch) < room and len(study.trials) < goal:
                trial = study.ask(fixed_distributions=self.space)
                trial.set_user_attr(SWEEP_DIR_ATTR, str(self.sweep_dir))
                batch.append((trial.number, dict(trial.params)))
            if not batch:
                return
            lines = [self.overrides(number, params) for number, params in batch]
            returns = self.launch(lines, job_idx)
            for i, ((number, _), ret) in enumerate(zip(batch, returns)):
                if isinstance(ret, Exception):  # its config did not compose: the job never started
                    ret = self.record_unstarted(number, lines[i], job_idx + i, ret)
                self.tell(study, number, ret)
            job_idx += len(batch)
            if sweep_stopping():
                self.tally.stopped = "stopped by SIGTERM"

    def overrides(self, number: int, params: dict) -> list[str]:
        lines = [override_text(k, v) for k, v in params.items()] + list(self.fixed)
        return lines + ([search_block(self.settings, self.storage, number)] if self.storage else [])

    def launch(self, batch: list[list[str]], job_idx: int) -> list:
        """The jobs' returns; a batch the launcher cannot start (a sampled group option that does not exist) is
        launched job by job, so that only the bad trial fails (finished ones are skipped on the second launch)."""
        try:
            return list(self.launcher.launch(batch, initial_job_idx=job_idx))
        except Exception as err:  # noqa: BLE001 - Hydra composes each job's config inside launch
            if len(batch) == 1:
                return [err]
            return [self.launch([overrides], job_idx + i)[0] for i, overrides in enumerate(batch)]

    def record_unstarted(self, number: int, overrides: list[str], job_idx: int, err: Exception) -> "Unstarted":
        """A trial whose job could not start still gets the directory Hydra would have named for it, holding its
        overrides and a metrics.json that says it failed and why, so that the summary shows it with the others."""
        from hydra._internal.config_loader_impl import get_overrides_dirname

        from dlrun.app.callbacks import job_dir_name
        from dlrun.app.explain import describe

        why = describe(err, overrides)[0]
        naming = self.config.hydra.job.config.override_dirname
        parsed = OverridesParser.create().parse_overrides(overrides)
        dirname = get_overrides_dirname(parsed, list(naming.exclude_keys), naming.item_sep, naming.kv_sep)
        job_dir = self.sweep_dir / job_dir_name(dirname, job_idx, self.sweep_dir, overrides)
        if not (job_dir / "metrics.json").exists():
            (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
            write_text(job_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(list(overrides)))
            write_json(job_dir / "metrics.json", {"status": "failed", "error": why, "trial": number})
        return Unstarted(why)

    def tell(self, study: optuna.Study, number: int, ret) -> None:
        if isinstance(ret, Unstarted):
            state, value, why = TrialState.FAIL, None, ret.why
        else:
            state, value, why = outcome(ret)
        if state is None:  # stays RUNNING: the same command resumes it in its own job directory
            self.tally.stopped = f"trial {number} did not finish ({why}); the same command resumes it"
            return
        study.tell(number, value, state=state, skip_if_finished=True)
        if state != TrialState.FAIL:
            return
        self.tally.failures += 1
        say(f"optuna: trial {number} failed: {why}")
        limit = self.settings["max_failures"]
        if limit is not None and self.tally.failures > limit:
            self.tally.stopped = (
                f"search stopped: {self.tally.failures} trials failed in this command "
                f"(hydra.sweeper.max_failures={limit}); the summary and the jobs' train.log say why"
            )
