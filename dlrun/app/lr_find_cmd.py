"""`dlrun lr-find`: the learning-rate range test, a Hydra app composing lr_find.yaml (the train config and its
`lr_find:` block), so that it takes the groups and overrides `dlrun train` takes. It writes into a run
directory of its own under outputs/lr_find/ and prints the `dlrun train` command that uses its suggestion.

As in `dlrun train`, nothing here imports torch: `dlrun lr-find --help` and `--cfg job` stay fast."""

import shutil
from dataclasses import dataclass
from pathlib import Path

import hydra

from dlrun.app.train_cmd import _argv, _env
from dlrun.config.schema import LR_FIND
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.lock import LOCK_NAME
from dlrun.core.text import did_you_mean, override_key, quote_override, unquote_override

# Files a training run keeps; a folder holding one is never an lr-find's directory (Hydra would rewrite its .hydra/).
RUN_FILES = ("metrics.json", "last.pt", "best.pt", "history.csv")


@dataclass
class LrFound:
    run_dir: Path
    summary: dict  # what lr_find.json holds: the suggestion, its rule, the range, the command


def run_lr_find_app(args: list[str]) -> LrFound | None:
    """Compose the config from `args` (as `dlrun lr-find ARGS` takes them) and run the test in this process;
    None when Hydra only showed something (--help, --cfg)."""
    if any(a in ("-m", "--multirun") for a in args):
        raise DlrunError("dlrun lr-find runs one range test; drop -m (a sweep of trainings is `dlrun train -m ...`)")
    known = [key for key in LR_FIND if key != "lr_find"]
    for arg in args:
        key, _, value = arg.partition("=")
        key = override_key(key)
        if key == "hydra.run.dir" and value:
            _refuse_run_dir(Path(unquote_override(value)))
        if key.startswith("lr_find.") and key not in known:  # Hydra's own line would name train's keys only
            names = ", ".join(k.split(".")[1] for k in known)
            raise DlrunError(f"{key}: no such key{did_you_mean(key, known)} (lr_find's keys: {names})")
    found, failures = [], []
    # One test even where an experiment sets hydra.mode=MULTIRUN: its base config, without its sweep.
    args = [*args, "hydra.mode=RUN"]
    with _argv(args), _env(HYDRA_FULL_ERROR="1"):
        _hydra_app(found, failures)()
    if failures:
        raise failures[0]
    return found[0] if found else None


def _refuse_run_dir(folder: Path) -> None:
    held = [name for name in RUN_FILES if (folder / name).exists()]
    if held:
        raise ConfigError(
            "hydra.run.dir", str(folder), f"holds a training run ({held[0]}); lr-find writes into a folder of its own"
        )


def _hydra_app(found: list, failures: list):
    @hydra.main(version_base="1.3", config_path="pkg://dlrun.configs", config_name="lr_find")
    def lr_find(cfg):
        from dlrun.app import job  # the boundary: torch and the engine load only when the test runs

        ctx = job.context()
        try:
            with job.run_dir_lock(ctx.run_dir, set()):
                found.append(LrFound(ctx.run_dir, _run(cfg, ctx)))
        except Exception as err:
            failures.append(err)  # raised outside Hydra, which would print its own "Error executing job" first
            _remove_if_never_started(ctx.run_dir)

    return lr_find


def _run(cfg, ctx) -> dict:
    from dlrun.config.check import check_config

    check_config(cfg)  # a bad value is one line before torch loads; the engine's check adds the dry build
    from dlrun.engine import lr_find as range_test
    from dlrun.observe.console import Console

    console = Console()
    found = range_test.find(cfg, console)
    chosen = found.suggestions[found.rule]
    shown = f"{chosen.lr:.3g}"
    command = train_command(ctx.overrides, shown)
    summary = range_test.save(found, ctx.run_dir, cfg.lr_find, command)
    others = ", ".join(f"{rule}: {s.lr:.3g}" for rule, s in found.suggestions.items() if rule != found.rule)
    console.print(f"suggested lr: {shown} (lr_find.rule={found.rule}; {others})")
    console.print(f"train with it: {command}")
    console.print(f"lr-find saved in {ctx.run_dir} (lr_find.png, lr_find.csv, lr_find.json)")
    console.print(f"open the curve: {ctx.run_dir / 'lr_find.png'}")
    return summary


def train_command(overrides: list[str], lr: str) -> str:
    """`dlrun train` with the test's own overrides (less the lr_find.* keys and any optimizer.lr) and the lr,
    each value quoted as dlrun quotes values it prints, so that the line pastes into a shell as it is."""
    kept = []
    for override in overrides:
        key = override_key(override)
        if key == "optimizer.lr" or key == "lr_find" or key.startswith("lr_find."):
            continue
        head, sep, value = override.partition("=")
        kept.append(f"{head}={quote_override(unquote_override(value))}" if sep else override)
    return " ".join(["dlrun train", *kept, f"optimizer.lr={lr}"])


def _remove_if_never_started(run_dir: Path) -> None:
    """A test that failed before writing a file of its own (a bad value) leaves no directory behind."""
    here = Path.cwd().resolve()
    if run_dir.resolve() in (here, *here.parents):
        return
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "lr_find.log", LOCK_NAME}:
        shutil.rmtree(run_dir, ignore_errors=True)
