"""Hydra callbacks that `train.yaml` names, and the resolver that names a sweep's job directories.

Hydra imports this module on every `dlrun train` (and, through the pickled callbacks, in every joblib or
submitit worker) before any job directory is resolved, so it stays torch-free."""

import logging
import os
import re
import time
from datetime import datetime, timedelta
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, open_dict, read_write

from dlrun.core.errors import DlrunError
from dlrun.core.io import read_json, write_json
from dlrun.core.ranks import is_main, rank, started_as_rank, world_size
from dlrun.core.text import first_line
from dlrun.results.summary import SummaryChoice, summarize

log = logging.getLogger(__name__)


# Written into the sweep directory when a sweep starts, read by every job (in joblib or submitit
# workers too, which see the same directory): which overrides name the job directories.
SWEEP_RECORD = ".dlrun-sweep.json"


def job_dir_name(override_dirname: str, num, sweep_dir=None, overrides=None) -> str:
    """The job's directory within the sweep: the overrides its sweep varies (`optimizer.momentum=0.4`, not the
    `trainer.epochs=15` every job shares), or `job<N>` when it has none (otherwise the job would write into the
    sweep directory itself). Without the sweep's record, all of Hydra's override_dirname."""
    record = read_json(Path(sweep_dir) / SWEEP_RECORD) if sweep_dir else {}
    swept = record.get("swept")
    if isinstance(swept, list) and overrides is not None:
        named = set(swept) | set(record.get("changed") or [])
        items = [str(o) for o in overrides if _key(str(o)) in named] + [f"~{k}" for k in record.get("dropped") or []]
        # sorted, as Hydra sorts override_dirname, so a job keeps its name whatever the order on the command line
        override_dirname = ",".join(sorted(items))
    return override_dirname or f"job{num}"


if not OmegaConf.has_resolver("dlrun.job_dir"):
    OmegaConf.register_new_resolver("dlrun.job_dir", job_dir_name)


def _key(override: str) -> str:
    """`+model.x@pkg=1` -> `model.x`, the key Hydra's parser gives as key_or_group."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def sweep_keys(overrides: list[str], params: dict | None) -> tuple[list[str], list[str]] | None:
    """(the keys the sweep varies, the overrides every job shares) from the sweep's command-line overrides and
    the sweeper's params (where experiments put their sweeps); a later override of a key wins, as in Hydra's
    basic and Optuna sweepers. Sweep syntax: `a=1,2`, range(), choice(), interval(), glob(). None when an
    override cannot be parsed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + [str(o) for o in overrides]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception:  # noqa: BLE001 - the job names fall back to every override
        return None
    final = {o.key_or_group: o for o in parsed}
    swept = [key for key, o in final.items() if o.is_sweep_override()]
    shared = sorted(o.input_line for key, o in final.items() if not o.is_sweep_override())
    return swept, shared


def record_sweep(sweep_dir: Path, overrides: list[str], params: dict | None, exclude: list[str]) -> None:
    """Writes the sweep's record: the keys it varies, which name its jobs. The first sweep into a directory also
    records the overrides its jobs share. The same sweep run again with other shared values (trainer.epochs=5,
    then 30) names its jobs by those too (`~key` for one no longer set): a finished job is found by its directory,
    and one finished with the first settings must not pass for one with the second."""
    path = sweep_dir / SWEEP_RECORD
    previous = read_json(path)
    found = sweep_keys(overrides, params)
    if found is None:
        write_json(path, {**previous, "swept": None})
        return
    swept, lines = found
    shared = {_key(line): line for line in lines if _key(line) not in exclude}  # excluded keys never name a job
    first = {_key(line): line for line in previous.get("shared") or []} if "shared" in previous else shared
    record = {
        "swept": swept,
        "shared": sorted(first.values()),
        "changed": sorted(k for k, line in shared.items() if first.get(k) != line and k not in swept),
        "dropped": sorted(k for k in first if k not in shared and k not in swept),
    }
    write_json(path, record)


def summary_error(err: Exception) -> str:
    """The one line the command ends with when the summary could not be written."""
    if isinstance(err, DlrunError):
        return str(err)
    if isinstance(err, OSError) and err.filename:  # a full disk, a folder made read-only
        return (
            f"cannot write {err.filename}: {err.strerror}. The jobs' own files are intact; free some space, then "
            "run the same command again (finished jobs are skipped, and the summary is written anew)"
        )
    return f"{type(err).__name__}: {first_line(str(err))}"


class SweepSummary(Callback):
    """The summary at the end of every sweep, whatever the launcher or sweeper.

    `report`: a file where the command that started the sweep reads how it went (the sweep directory,
    or the error that kept the summary from being written): Hydra turns a callback's exception into a
    warning, and the command must still exit non-zero.
    `rank_by`, `mode`, `columns`: what the table ranks by and shows (see dlrun.results.summary.parse_column);
    an experiment sets them for the number its lesson is about."""

    def __init__(self, report: str | None = None, rank_by: str | None = None, mode: str | None = None, columns=None):
        self.report = report
        self.choice = SummaryChoice(rank_by, mode, list(columns) if columns else None)

    def on_multirun_start(self, config, **kwargs) -> None:
        # Optuna's SQLite study lives in the sweep directory and is opened before any job runs.
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        exclude = OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys", default=None) or []
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        params = OmegaConf.to_container(params, resolve=False) if params is not None else None
        record_sweep(sweep_dir, list(config.hydra.overrides.task), params, list(exclude))

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        outcome = {"sweep_dir": str(sweep_dir), "error": None}
        try:
            summarize([sweep_dir], sweep_dir, what="jobs", choice=self.choice)
        except Exception as err:  # noqa: BLE001 - reported through the report file, then raised by the command
            log.error("sweep summary failed", exc_info=err)
            outcome["error"] = summary_error(err)
        try:  # HParams' columns and metrics for the whole sweep; without it TensorBoard still lists every job
            from dlrun.observe.dashboards import write_sweep_experiment  # tensorboard's protos: only once a sweep ends

            write_sweep_experiment(sweep_dir)
        except Exception as err:  # noqa: BLE001 - the summary matters more; the log says why
            log.warning("HParams experiment not written: %s", first_line(str(err)))
        if self.report:
            write_json(Path(self.report), outcome)


class ShareRunDir(Callback):
    """Makes every rank of a torchrun job write into one run directory.

    Each rank composes its own config, so `${now:...}` in hydra.run.dir could differ by a second
    between ranks. Rank 0 publishes its clock in torchrun's store and every rank resolves `now` with
    it. Ranks other than 0 keep their own log (train.rank<N>.log) and leave .hydra/ to rank 0.
    """

    def on_run_start(self, config, **kwargs) -> None:
        if not started_as_rank() or world_size() == 1:
            return
        moment = datetime.fromtimestamp(_shared_time())
        OmegaConf.register_new_resolver("now", lambda pattern: moment.strftime(pattern), use_cache=True, replace=True)
        OmegaConf.clear_cache(config)
        if rank() != 0:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None
                handler = OmegaConf.select(config, "hydra.job_logging.handlers.file")
                if handler is not None and "filename" in handler:
                    name = OmegaConf.to_container(handler, resolve=False)["filename"]  # still ${...}, resolved later
                    handler.filename = re.sub(r"(\.log)?$", f".rank{rank()}.log", name, count=1)


def _shared_time() -> float:
    """Rank 0's clock, through the store of torchrun's agent; this process's own clock without one."""
    import torch.distributed as dist  # only under torchrun: this module stays torch-free for every other run

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return time.time()
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=120)
    )
    key = f"dlrun/run_time/{os.environ.get('TORCHELASTIC_RUN_ID')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
    if is_main():
        store.set(key, repr(time.time()))
    return float(store.get(key).decode())
