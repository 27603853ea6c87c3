"""Turn an exception from a `dlrun` command into one line for the user, and an exit code."""

import errno
import re
import traceback

from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from dlrun.config.compose import known_keys
from dlrun.config.groups import config_groups
from dlrun.core.errors import DlrunError
from dlrun.core.text import did_you_mean, first_line


def describe(err: BaseException, overrides: list[str]) -> tuple[str, int]:
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, DlrunError):
        err = err.__cause__  # a model's own ConfigError, raised while Hydra built it
    if isinstance(err, DlrunError):
        return str(err), err.exit_code
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return _disk_error(err)
    if type(err).__name__ == "OutOfMemoryError":  # torch's, before the training loop (which names the batch size)
        return (
            f"CUDA out of memory before training ({first_line(str(err))[:120]}); try a smaller model, "
            "dataset.resize or trainer.batch_size",
            1,
        )
    if isinstance(err, MissingConfigException):
        return _missing_option(err), 2
    if isinstance(err, OverrideParseException):
        return f"cannot parse override '{err.override}': {first_line(err.message)}", 2
    if isinstance(err, ConfigCompositionException):
        match = re.search(r"Could not override '([^']+)'", str(err)) or re.search(r"'([^']+)' does not exist", str(err))
        if match:
            key = match.group(1)
            return f"{key}: no such key{did_you_mean(key, known_keys(overrides))}", 2
        ambiguous = re.match(r"Ambiguous value for argument '([^'=]+)=([^']*)'", str(err))
        if ambiguous:  # Hydra's advice spans three lines: keep it, in one
            key, value = ambiguous.groups()
            return (
                f"{key}={value}: a comma makes a sweep; write a list as {key}=[{value}], a text with commas "
                f"as {key}='{value}', or add -m to run one job per value"
            ), 2
        cause = err.__cause__
        return first_line(str(cause) if cause else str(err)), 2
    if isinstance(err, InstantiationException):
        return first_line(str(err)), 2
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and getattr(err, "full_key", None):
        return f"{err.full_key}: missing from the config (removed with ~KEY?); `dlrun train --cfg job` shows every key", 2
    if isinstance(err, (ValueError, TypeError)) and _raised_in(err, "hydra/_internal/"):
        return _bad_override(err, overrides), 2
    return f"{type(err).__name__}: {first_line(str(err))} (run again with --verbose for the traceback)", 1


# Errors of the file system rather than of dlrun: a path that cannot be written, or a full disk.
DISK_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
}


def _disk_error(err: OSError) -> tuple[str, int]:
    where = err.filename or "a file"
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            f"cannot write {where}: {err.strerror}. Files written before are intact (each is replaced only "
            "once its new version is complete); free some space, then continue with "
            "`dlrun train resume=RUN_DIR` (or resume=latest)",
            1,
        )
    # Hydra creates the run directory before dlrun runs: a failure there is the output folder's fault.
    frames = traceback.extract_tb(err.__traceback__)
    if any(frame.filename.replace("\\", "/").endswith("hydra/core/utils.py") for frame in frames):
        return (
            f"hydra.run.dir={where}: must be a writable folder ({err.strerror}); choose another with "
            "hydra.run.dir=PATH (hydra.sweep.dir=PATH with -m)",
            2,
        )
    return f"{where}: {err.strerror}", 2


def _raised_in(err: BaseException, path: str) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and path in frames[-1].filename.replace("\\", "/")


def _bad_override(err: BaseException, overrides: list[str]) -> str:
    """Hydra's own checks of a group choice that is not a name (`dataset=0`, say) end as plain errors."""
    groups = config_groups()
    for override in overrides:
        group, _, option = override.partition("=")
        if group in groups and option not in groups[group]:
            return f"{group}={option}: no such option{did_you_mean(option, groups[group])} (options: {', '.join(groups[group])})"
    return f"cannot compose the config: {first_line(str(err))}"


def _missing_option(err: MissingConfigException) -> str:
    path = err.missing_cfg_file or ""
    group, _, option = path.rpartition("/")
    options = err.options or config_groups().get(group, [])
    if group:
        return f"{group}={option}: no such option{did_you_mean(option, options)} (options: {', '.join(options)})"
    return first_line(str(err))
