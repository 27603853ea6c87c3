"""The `dlrun` command: subcommands, help, and errors as one line.

Nothing here imports torch, so `dlrun --help` and `dlrun train --cfg job` stay fast;
the training code is imported only when a job actually runs.
"""

import atexit
import difflib
import logging
import os
import sys
import threading
from importlib.resources import files

from dlrun import __version__
from dlrun.errors import DlrunError

SUBCOMMANDS = {
    "train": "train a model, or one per combination with -m (a Hydra app: see `dlrun train --help`)",
    "compare": "one table and plot over existing run or sweep directories (see `dlrun compare --help`)",
    "eval": "evaluate a saved run or checkpoint again, on test, val or another dataset (see `dlrun eval --help`)",
}
HIDDEN_GROUPS = {"hydra"}
VERBOSE = False  # tracebacks wanted (--verbose or HYDRA_FULL_ERROR=1); ranks started by trainer.devices=N inherit it


def config_groups() -> dict[str, list[str]]:
    """The shipped config groups and their options, read from the package's configs folder."""
    root = files("dlrun.configs")
    groups = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and entry.name not in HIDDEN_GROUPS and not entry.name.startswith("_"):
            options = sorted(f.name[: -len(".yaml")] for f in entry.iterdir() if f.name.endswith(".yaml"))
            groups[entry.name] = options
    return groups


def print_help() -> None:
    lines = [
        f"dlrun {__version__}: a command-line experiment runner for PyTorch, driven by Hydra configs.",
        "",
        "Usage: dlrun COMMAND [ARGS...]",
        "",
        "Commands:",
        *[f"  {name:<10}{text}" for name, text in SUBCOMMANDS.items()],
        "",
        "Config groups (choose with GROUP=OPTION, e.g. `dlrun train model=cnn`):",
        *[f"  {group:<16}{', '.join(options) or '(none yet)'}" for group, options in config_groups().items()],
        "",
        "Examples:",
        "  dlrun train                                    # an MLP on the bundled digits",
        "  dlrun train model=cnn dataset=mnist device=cuda",
        "  dlrun train -m optimizer.momentum=0,0.1,0.2,0.4,0.5",
        "  dlrun train experiment=activation              # one of the course's comparisons",
        "  dlrun compare outputs/sweeps/<dir> outputs/runs/<dir>",
        "  dlrun train resume=latest                      # continue a stopped run from its last.pt",
        "  dlrun eval outputs/runs/<dir> split=val        # evaluate a saved run again",
        "  tensorboard --logdir outputs",
        "",
        "Options: --help, --version. Set HYDRA_FULL_ERROR=1 or pass --verbose to see tracebacks.",
    ]
    print("\n".join(lines))


def closest(word: str, choices, n: int = 2) -> list[str]:
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def did_you_mean(word: str, choices) -> str:
    matches = closest(word, choices)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    global VERBOSE
    VERBOSE = debug = os.environ.get("HYDRA_FULL_ERROR") == "1" or "--verbose" in args
    args = [a for a in args if a != "--verbose"]

    if args and args[0] in ("-sc", "--shell-completion"):
        return _complete_subcommand(args)
    if not args or args[0] in ("-h", "--help", "help"):
        print_help()
        return
    if args[0] in ("-V", "--version"):
        print(f"dlrun {__version__}")
        return
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        _fail(f"unknown command '{command}'{did_you_mean(command, SUBCOMMANDS)} (commands: {', '.join(SUBCOMMANDS)})", 2)

    # Hydra reports errors itself unless HYDRA_FULL_ERROR is set; with it set, they reach us
    # and become one line here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        if command == "train":
            run_train_app(rest)
        elif command == "compare":
            from dlrun.sweep import compare_main

            compare_main(rest)
        elif command == "eval":
            from dlrun.evaluate import main as eval_main

            eval_main(rest)
    except KeyboardInterrupt as err:  # Ctrl-C (130), or SIGTERM (143) once the run has saved its state
        _fail(str(err) or "interrupted", getattr(err, "exit_code", 130))
    except BrokenPipeError:
        # The reader left (`dlrun train --help | head`): not an error; keep Python quiet at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Exception as err:
        if debug:
            raise
        from dlrun.cli_errors import describe

        message, code = describe(err, rest)
        _fail(message, code)


def entry() -> None:
    """The `dlrun` console script: main(), then a prompt exit.

    After a run has saved everything, Python's own shutdown still tears down every module torch and
    its friends loaded, about a second per process (every job of a sweep, every rank). The exit
    handlers still run, and streams and logs are flushed, before the process ends."""
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    if isinstance(code, str):  # sys.exit("message"): Python prints it and exits 1
        sys.stderr.write(code + "\n")
        code = 1
    code = 0 if code is None else code
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)  # a thread still working: let Python wait for it as usual
    logging.shutdown()
    atexit._run_exitfuncs()  # multiprocessing's and joblib's clean-up, among others
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader left, or the stream is closed
            pass
    os._exit(code)


def run_train_app(args: list[str]):
    import hydra

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    failure: list[BaseException] = []

    @hydra.main(version_base="1.3", config_path="pkg://dlrun.configs", config_name="train")
    def train(cfg):
        from dlrun.sweep import run_job  # a sweep's job: skipped when finished, recorded when failing

        try:
            return run_job(cfg)
        except Exception as err:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise
            # A single run's error is re-raised below, outside Hydra, which would
            # otherwise print its own "Error executing job" line first.
            failure.append(err)

    if any(a.startswith("resume=") and a != "resume=null" for a in args):
        if any(a in ("-m", "--multirun") for a in args):
            raise DlrunError("resume=: continues one run; to continue a sweep, run the same sweep command again")
        from pathlib import Path

        from dlrun.checkpoint import resume_args

        args = resume_args(args, Path.cwd())  # the run's own overrides, into its own directory
    sys.argv = [sys.argv[0], *args]
    result = train()
    if failure:
        raise failure[0]
    from dlrun.sweep import check_last_sweep

    check_last_sweep()  # a sweep in which any job failed exits non-zero, after its summary
    return result


def _complete_subcommand(args: list[str]) -> None:
    """Shell completion: Hydra's script calls `dlrun -sc query=bash`; route it through `train`."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    is_query = any(a.startswith("query") for a in args[1:])
    if is_query and len(words) >= 2 and words[1] in SUBCOMMANDS and (len(words) > 2 or line.endswith(" ")):
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + (" " if line.endswith(" ") else "")
        run_train_app(args)
    elif is_query:
        prefix = words[1] if len(words) > 1 and not line.endswith(" ") else ""
        print(" ".join(name for name in SUBCOMMANDS if name.startswith(prefix)))
    else:  # install / uninstall
        run_train_app(args)


def _fail(message: str, code: int) -> None:
    from dlrun.distributed import rank_label  # "rank N: " when this is one of several ranks

    sys.stderr.write(f"dlrun: error: {rank_label()}{message}\n")
    sys.exit(code)
