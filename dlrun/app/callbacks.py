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
from dlrun.core.io import write_json
from dlrun.core.ranks import is_main, rank, started_as_rank, world_size
from dlrun.core.text import first_line
from dlrun.results.summary import summarize

log = logging.getLogger(__name__)


def job_dir_name(override_dirname: str, num) -> str:
    """The job's directory within the sweep: its overrides, or `job<N>` when it has none
    (otherwise the job would write into the sweep directory itself)."""
    return override_dirname or f"job{num}"


if not OmegaConf.has_resolver("dlrun.job_dir"):
    OmegaConf.register_new_resolver("dlrun.job_dir", job_dir_name)


class SweepSummary(Callback):
    """The summary at the end of every sweep, whatever the launcher or sweeper.

    `report`: a file where the command that started the sweep reads how it went (the sweep directory,
    or the error that kept the summary from being written): Hydra turns a callback's exception into a
    warning, and the command must still exit non-zero."""

    def __init__(self, report: str | None = None):
        self.report = report

    def on_multirun_start(self, config, **kwargs) -> None:
        # Optuna's SQLite study lives in the sweep directory and is opened before any job runs.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        outcome = {"sweep_dir": str(sweep_dir), "error": None}
        try:
            summarize([sweep_dir], sweep_dir, what="jobs")
        except Exception as err:  # noqa: BLE001 - reported through the report file, then raised by the command
            log.error("sweep summary failed", exc_info=err)
            outcome["error"] = str(err) if isinstance(err, DlrunError) else f"{type(err).__name__}: {first_line(str(err))}"
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
