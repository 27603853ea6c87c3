"""dlrun from Python: `dlrun.train([...])` and `dlrun.sweep([...])` run what `dlrun train` runs, in the
calling process, and return what it wrote. A bad override raises dlrun's own error with the line the
command would print; nothing here exits the process."""

from pathlib import Path

from dlrun.app.explain import describe
from dlrun.app.lr_find_cmd import run_lr_find_app
from dlrun.app.train_cmd import run_train_app
from dlrun.core.errors import DlrunError
from dlrun.results.runs import Run


class RunError(DlrunError):
    """A run or sweep that could not be composed or started: the same one line `dlrun train` prints."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def train(overrides: list[str] | tuple[str, ...] = (), config_dir: str | Path | None = None) -> Run:
    """One run, as `dlrun train OVERRIDES` makes it; returns it read back from its directory
    (`run_dir`, `status`, `metrics` as metrics.json holds them, `history` as history.csv's rows)."""
    launched = _launch(_args(overrides, config_dir))
    if not launched.run_dirs:
        raise DlrunError("dlrun.train runs one config; for -m or a sweeping experiment use dlrun.sweep")
    return Run.load(launched.run_dirs[-1])


def sweep(overrides: list[str] | tuple[str, ...] = (), config_dir: str | Path | None = None) -> list[dict]:
    """A multirun, as `dlrun train -m OVERRIDES` makes it; returns the summary's rows, best first
    (summary.json in the sweep directory)."""
    args = _args(overrides, config_dir)
    if not any(a in ("-m", "--multirun") for a in args):
        args = ["-m", *args]
    launched = _launch(args)
    return list((launched.summary or {}).get("rows", []))


def lr_find(overrides: list[str] | tuple[str, ...] = (), config_dir: str | Path | None = None) -> dict:
    """The learning-rate range test, as `dlrun lr-find OVERRIDES` runs it; returns what its lr_find.json holds
    (`suggestion`, `rule`, `suggestions` by rule, `range`, `steps_run`, `stopped_early`, `command`) and `run_dir`."""
    args = _args(overrides, config_dir)
    try:
        found = run_lr_find_app(args)
    except (DlrunError, KeyboardInterrupt):
        raise
    except Exception as err:  # Hydra's own errors, as the command's line
        message, code = describe(err, args)
        raise RunError(message, code) from err
    return {**found.summary, "run_dir": found.run_dir}


def _args(overrides, config_dir) -> list[str]:
    if isinstance(overrides, str):
        raise TypeError("overrides: a list of strings, e.g. ['model=cnn', 'trainer.epochs=1']")
    for arg in overrides:
        if arg.startswith("-") and arg not in ("-m", "--multirun"):  # Hydra's own flags would exit the interpreter
            raise DlrunError(f"{arg}: dlrun.train and dlrun.sweep take KEY=VALUE overrides (config_dir= for --config-dir)")
    return [*(["--config-dir", str(Path(config_dir).expanduser().resolve())] if config_dir else []), *overrides]


def _launch(args: list[str]):
    try:
        return run_train_app(args)
    except DlrunError:
        raise
    except KeyboardInterrupt:
        raise
    except Exception as err:  # Hydra's own errors (a missing option, an unparsable override) as dlrun's line
        message, code = describe(err, args)
        raise RunError(message, code) from err
