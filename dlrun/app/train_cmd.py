"""`dlrun train`: the Hydra app that composes the config and runs the task, one run or a sweep.

Nothing here imports torch: `dlrun train --help` and `--cfg job` stay fast. The task imports the
engine when a job actually runs."""

import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf.errors import OmegaConfBaseException

from dlrun.config.groups import groups_setting_run_mode
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.io import read_json, read_yaml
from dlrun.core.lock import LOCK_NAME, DirLock, DirLocked
from dlrun.core.ranks import is_main, started_as_rank, world_size
from dlrun.core.text import override_key, quote_override, unquote_override
from dlrun.observe import drawing

# Flags with which Hydra shows something (help, the config, completion) and runs no job.
SHOW_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--version")


class SweepFailed(DlrunError):
    exit_code = 1


@dataclass
class Launched:
    """What `dlrun train` ran: the run directory of a single run, or the sweep directory and its summary."""

    run_dirs: list[Path] = field(default_factory=list)
    sweep_dir: Path | None = None
    summary: dict | None = None  # summary.json of the sweep


def run_train_app(args: list[str], verbose: bool = False) -> Launched:
    """Compose the config from `args` (as `dlrun train ARGS` takes them) and run it, in this process."""
    resuming = any(a.startswith("resume=") and a != "resume=null" for a in args)
    if resuming and any(a in ("-m", "--multirun") for a in args):
        raise DlrunError("resume=: continues one run; to continue a sweep, run the same sweep command again")
    launched, failures, held = Launched(), [], []
    with tempfile.TemporaryDirectory(prefix="dlrun-") as tmp, contextlib.ExitStack() as locks:
        report = Path(tmp) / "sweep.json"
        if resuming:  # the run's own overrides, into its own directory, which this process locks first
            run_dir = find_run(next(a.split("=", 1)[1] for a in args if a.startswith("resume=")), Path.cwd())
            if not (started_as_rank() and world_size() > 1):
                held.append(locks.enter_context(DirLock(run_dir, "run", "hydra.run.dir")))
            args = resume_args(args, run_dir)
        if not any(a.split("=", 1)[0] in SHOW_FLAGS for a in args):  # a command that runs jobs
            args = [*args, f"hydra.callbacks.sweep_summary.report={quote_override(str(report))}"]
            # The directories the command names, locked before Hydra writes into them.
            mine = {lock.folder.resolve() for lock in held}
            held += [locks.enter_context(lock) for lock in named_dirs(args) if lock.folder.resolve() not in mine]
            locks.callback(_remove_unused, held)
        stop_file, stopped = Path(tmp) / "stop", []
        # HYDRA_FULL_ERROR: Hydra re-raises errors instead of exiting. DLRUN_SWEEP_STOP: see forward_sigterm.
        with (
            _argv(args),
            _env(HYDRA_FULL_ERROR="1", DLRUN_SWEEP_STOP=str(stop_file)),
            forward_sigterm(stop_file, stopped),
            _run_mode_from_command_line(),
        ):
            try:
                _hydra_app(launched, failures, verbose, {lock.folder.resolve() for lock in held})()
            except Exception:
                if not stopped:
                    raise
        if stopped:
            raise SweepStopped(len(launched.run_dirs))
        if failures:
            raise failures[0]
        outcome = read_json(report)
    if outcome:
        check_sweep(outcome, launched)
    return launched


class SweepStopped(DlrunError):
    exit_code = 143

    def __init__(self, _jobs: int):
        super().__init__(
            "stopped by SIGTERM: each running job saved its state as interrupted; run the same command again "
            "to resume those and run the rest (finished jobs are skipped)"
        )


@contextlib.contextmanager
def forward_sigterm(stop_file: Path, stopped: list):
    """SIGTERM to a sweep whose jobs run in worker processes (joblib, submitit's local executor): each
    worker's run stops at its next step and saves, as a single run does, and no further job starts.
    Without workers the signal does what it did before: a run's own handler, or the process ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        workers = _children()
        if not workers:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stopped.append(signum)
        stop_file.touch()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _children() -> list[int]:
    """The processes this one started (Linux: /proc); none elsewhere."""
    me, found, helpers = str(os.getpid()), [], drawing.helper_pids()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        if int(stat.parent.name) in helpers:  # the figures' helper leaves when this process has gone
            continue
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                found.append(int(stat.parent.name))
    return found


def _hydra_app(launched: Launched, failures: list, verbose: bool, locked: set[Path]):
    """The Hydra app around the task; the task records what it ran in `launched` and `failures`.
    `locked`: the directories this process holds the lock of already."""

    @hydra.main(version_base="1.3", config_path="pkg://dlrun.configs", config_name="train")
    def train(cfg):
        if is_main() and not _launches_ranks(cfg):  # the figures' helper imports matplotlib while this process imports torch
            drawing.painter().add_helpers(_helpers_wanted())
        from dlrun.app import job  # the boundary: torch and the engine load only when a job runs

        if not gc.isenabled():  # the dlrun command's start-up is over: what it made stays uncollected (cli.entry)
            gc.freeze()
            gc.enable()

        ctx = job.context()
        if ctx.is_sweep:
            return job.run_job(cfg, ctx, verbose)
        launched.run_dirs.append(ctx.run_dir)
        try:
            lock = job.run_dir_lock(ctx.run_dir, locked)
        except DirLocked as err:  # another process's run: leave its directory alone
            failures.append(err)
            return None
        try:
            with lock:
                return job.run_job(cfg, ctx, verbose)
        except Exception as err:
            # A single run's error is re-raised outside Hydra, which would otherwise print its own
            # "Error executing job" line first.
            failures.append(err)
            job.remove_if_never_started(ctx.run_dir)

    return train


def _launches_ranks(cfg) -> bool:
    """This process starts trainer.devices ranks and draws nothing itself: its ranks' main draws the figures.
    A devices value that is not a number is the config check's to name; until then, this process may train."""
    try:
        return int(cfg.trainer.get("devices", 1)) > 1 and not started_as_rank()
    except (TypeError, ValueError, OmegaConfBaseException):
        return False


def _helpers_wanted() -> int:
    """Two figure helpers where this process runs its jobs itself (a single run, or the basic launcher's sweep): a
    run's end-of-run figures are then drawn two at a time while it waits. One in the workers of joblib or submitit,
    whose jobs take the cores themselves."""
    from hydra.core.hydra_config import HydraConfig

    return 2 if HydraConfig.get().launcher.get("_target_", "").endswith(".BasicLauncher") else 1


def named_dirs(args: list[str]) -> list[DirLock]:
    """Locks for the run or sweep directory the command line names (hydra.run.dir=, hydra.sweep.dir=, or
    resume='s), so that a second command into the same directory stops before anything is written there.
    Ranks of a multi-process run write under the lock their launcher holds."""
    if started_as_rank() and world_size() > 1:
        return []
    multirun = any(a in ("-m", "--multirun") for a in args)
    chosen = {}
    for arg in args:
        key, _, value = arg.partition("=")
        key = override_key(key)
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            chosen[key] = unquote_override(value)
    locks = []
    if "hydra.run.dir" in chosen and not multirun:
        locks.append(DirLock(Path(chosen["hydra.run.dir"]), "run", "hydra.run.dir"))
    if "hydra.sweep.dir" in chosen:
        locks.append(DirLock(Path(chosen["hydra.sweep.dir"]), "sweep", "hydra.sweep.dir"))
    return locks


def _remove_unused(locks: list[DirLock]) -> None:
    """A folder made only to hold the lock (the command failed, or ran in another mode) does not stay."""
    for lock in locks:
        if lock.folder.is_dir() and [p.name for p in lock.folder.iterdir()] == [LOCK_NAME]:
            shutil.rmtree(lock.folder, ignore_errors=True)


def check_sweep(outcome: dict, launched: Launched) -> None:
    """A sweep whose summary failed, or in which any job did not finish, exits non-zero after its summary."""
    if outcome.get("error"):
        raise DlrunError(outcome["error"])
    launched.sweep_dir = Path(outcome["sweep_dir"])
    launched.summary = read_json(launched.sweep_dir / "summary.json")
    failed, rows = launched.summary.get("failed", []), launched.summary.get("rows", [])
    if failed:
        raise SweepFailed(
            f"{len(failed)} of {len(rows)} jobs did not finish ({', '.join(failed)}); see {launched.sweep_dir / 'summary.md'}"
        )


# Flags that add config folders or pick another primary config, whose options dlrun cannot read ahead.
OTHER_CONFIGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


def run_mode(overrides: list[str]):
    """hydra.mode as the overrides set it (a RunMode, or None: the command line's -m decides), read without composing;
    `...` when only composing can tell (a choice in a group whose options set it, or the user's own config folder)."""
    from hydra.types import RunMode

    if any(arg.split("=", 1)[0] in OTHER_CONFIGS for arg in sys.argv[1:]):
        return ...
    mode = None
    for override in overrides:
        key, _, value = override.partition("=")
        key = override_key(key)
        if key == "hydra.mode" and value in RunMode.__members__:
            mode = RunMode[value]
        elif key == "hydra.mode" or any(f"{key.split('@', 1)[0]}/".startswith(f"{g}/") for g in groups_setting_run_mode()):
            return ...
    return mode


@contextlib.contextmanager
def _run_mode_from_command_line():
    """Before running, Hydra composes the whole config once only to read hydra.mode from it, then composes it
    again for the run (about 0.3 s each). The shipped options that set hydra.mode are known (experiments,
    hparams_search=optuna): for any other command line the mode is read from the overrides instead."""
    from hydra._internal.hydra import Hydra

    composed = Hydra.get_mode

    def get_mode(self, config_name, overrides):
        mode = run_mode(overrides)
        return composed(self, config_name, overrides) if mode is ... else mode

    Hydra.get_mode = get_mode
    try:
        yield
    finally:
        Hydra.get_mode = composed


@contextlib.contextmanager
def _argv(args: list[str]):
    saved = sys.argv
    sys.argv = [saved[0] if saved else "dlrun", *args]
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _env(**values: str):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---- `dlrun train resume=PATH|latest`: which run, and the command line that continues it ----

LAST_PT, BEST_PT = "last.pt", "best.pt"


def find_run(spec: str, cwd: Path) -> Path:
    """The run directory that `resume=SPEC` names: a run directory, its last.pt or best.pt, or `latest`."""
    if spec == "latest":
        found = sorted((cwd / "outputs").glob(f"**/{LAST_PT}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError("resume", spec, f"no run with a last.pt under {cwd / 'outputs'}; pass its directory")
        return found[-1].parent.resolve()
    path = Path(spec).expanduser()
    if path.name == BEST_PT and not path.is_file():
        raise ConfigError("resume", spec, "no such file: best.pt is written at the end of the run's first epoch")
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise ConfigError("resume", spec, "must be a run directory, its last.pt or best.pt, or latest")
    if Path(spec).name != BEST_PT and not (path / LAST_PT).is_file():
        if (path / BEST_PT).is_file():
            best = quote_override(str(path.resolve() / BEST_PT))
            raise ConfigError("resume", spec, f"has no last.pt; continue from best.pt's epoch with `dlrun train resume={best}`")
        raise ConfigError(
            "resume", spec, "has no last.pt to continue from: the run stopped before its first checkpoint, so start it again"
        )
    return path.resolve()


def resume_args(args: list[str], run_dir: Path) -> list[str]:
    """`dlrun train resume=X [KEY=VALUE...]` -> the run's own overrides, then the new ones, into its directory.
    X naming best.pt continues from best.pt's epoch (`resume=RUN_DIR/best.pt`)."""
    spec = next(a.split("=", 1)[1] for a in args if a.startswith("resume="))
    from_best = Path(spec).name == BEST_PT
    # Read whole (every checksum) before anything is written: a damaged file is refused here, the run untouched.
    state = continuable_best(run_dir) if from_best else continuable_last(run_dir)
    # the checkpoint's copy of the overrides: written atomically, unlike Hydra's .hydra/overrides.yaml
    saved = state.get("overrides")
    if saved is None:
        saved = read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    merged = {}
    for override in [*saved, *(a for a in args if not a.startswith("resume="))]:
        key = override_key(override)
        # hparams_search: a trial of a search resumes as the one run it is (its `search` block still finds its trial)
        if key not in ("resume", "hydra.run.dir", "hparams_search"):
            merged[key] = override
    quoted = quote_override(str(run_dir))
    target = quote_override(str(run_dir / BEST_PT)) if from_best else quoted
    return [*merged.values(), f"resume={target}", f"hydra.run.dir={quoted}"]


def continuable_last(run_dir: Path) -> dict:
    """last.pt, whole; when it cannot be read, one line that says whether best.pt can stand in for it."""
    from dlrun.engine import checkpoint  # torch, only when resuming

    try:
        return checkpoint.load(run_dir / LAST_PT, verify=True)
    except DlrunError as err:
        raise DlrunError(f"{err}; {_best_instead(run_dir)}") from None


def continuable_best(run_dir: Path) -> dict:
    """best.pt, whole, with history.csv's rows up to its epoch; else one line that says whether last.pt can be used."""
    from dlrun.engine import checkpoint

    try:
        return checkpoint.best_source(run_dir)[0]
    except DlrunError as err:
        try:
            checkpoint.load(run_dir / LAST_PT, verify=True)
        except DlrunError:
            raise DlrunError(f"{err}; last.pt cannot be read either, so start the run again") from None
        raise DlrunError(
            f"{err}; last.pt is whole: continue from it with `dlrun train resume={quote_override(str(run_dir))}`"
        ) from None


def _best_instead(run_dir: Path) -> str:
    """What the user can do when last.pt cannot be read: continue from best.pt's epoch, if best.pt can be."""
    from dlrun.engine import checkpoint

    best = run_dir / BEST_PT
    if not best.is_file():
        return "there is no best.pt to continue from either, so start the run again"
    try:
        state = checkpoint.best_source(run_dir)[0]
    except DlrunError as err:
        if str(err).startswith(str(best)):
            return f"{err}: neither last.pt nor best.pt can be read, so start the run again"
        return f"best.pt cannot stand in for it ({err}), so start the run again"
    return (
        f"best.pt can be read: continue from its epoch {state['epoch']} (training the epochs after it again) "
        f"with `dlrun train resume={quote_override(str(best))}`"
    )
