"""The `dlrun` command: subcommands, help, and errors as one line.

Nothing here imports torch, so `dlrun --help` and `dlrun train --cfg job` stay fast;
the training code is imported only when a job actually runs.
"""

import atexit
import gc
import logging
import os
import sys
import threading

from dlrun.config.groups import config_groups
from dlrun.core import __version__
from dlrun.core.ranks import rank_label
from dlrun.core.text import did_you_mean

SUBCOMMANDS = {
    "train": "train a model, or one per combination with -m (a Hydra app: see `dlrun train --help`)",
    "compare": "one table and plot over existing run or sweep directories (see `dlrun compare --help`)",
    "eval": "evaluate a saved run or checkpoint again, on test, val or another dataset (see `dlrun eval --help`)",
    "runs": "list the runs under some folders, newest first, with status and scores (see `dlrun runs --help`)",
    "lr-find": "the learning-rate range test: suggests optimizer.lr for a train config (see `dlrun lr-find --help`)",
}


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
        "  dlrun runs --status running,crashed --since 2d    # find runs again",
        "  dlrun train resume=latest                      # continue a stopped run from its last.pt",
        "  dlrun eval outputs/runs/<dir> split=val        # evaluate a saved run again",
        "  dlrun lr-find model=cnn optimizer=adam         # suggest an lr, and the train command that uses it",
        "  tensorboard --logdir outputs",
        "",
        "Options: --help, --version. Set HYDRA_FULL_ERROR=1 or pass --verbose to see tracebacks.",
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # Tracebacks wanted (--verbose or HYDRA_FULL_ERROR=1); ranks started by trainer.devices=N inherit it.
    verbose = os.environ.get("HYDRA_FULL_ERROR") == "1" or "--verbose" in args
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

    try:
        run_command(command, rest, verbose)
    except KeyboardInterrupt as err:  # Ctrl-C (130), or SIGTERM (143) once the run has saved its state
        _fail(str(err) or "interrupted", getattr(err, "exit_code", 130))
    except BrokenPipeError:
        # The reader left (`dlrun train --help | head`): not an error; keep Python quiet at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Exception as err:
        if verbose:
            raise
        from dlrun.app.explain import describe  # Hydra's error types: imported only when a command failed

        message, code = describe(err, rest)
        _fail(message, code)


def run_command(command: str, args: list[str], verbose: bool) -> None:
    """The boundary of the commands: each is imported only when it runs, so `dlrun --help` loads nothing heavy."""
    if command != "train":
        gc.enable()
    if command == "train":
        from dlrun.app.train_cmd import run_train_app

        run_train_app(args, verbose)
    elif command == "compare":
        from dlrun.app.compare_cmd import main as compare_main

        compare_main(args)
    elif command == "eval":
        from dlrun.app.eval_cmd import main as eval_main

        eval_main(args)
    elif command == "runs":
        from dlrun.app.runs_cmd import main as runs_main

        runs_main(args)
    elif command == "lr-find":
        from dlrun.app.lr_find_cmd import run_lr_find_app

        run_lr_find_app(args)


def entry() -> None:
    """The `dlrun` console script: main(), then a prompt exit.

    After a run has saved everything, Python's own shutdown still tears down every module torch and
    its friends loaded, about a second per process (every job of a sweep, every rank). The exit
    handlers still run, and streams and logs are flushed, before the process ends."""
    code = 0
    # Start-up (Hydra, the config, torch and the engine) makes objects that live as long as the process: Python's
    # collector scanning them again and again took about 0.15 s of a run. `dlrun train` freezes them once its
    # engine is imported and collects from then on (train_cmd.py); the other commands collect from the start.
    gc.disable()
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    except BrokenPipeError:  # `dlrun ... | head`: the reader left; end quietly, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
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


def _complete_subcommand(args: list[str]) -> None:
    """Shell completion: Hydra's script calls `dlrun -sc query=bash`; route it through `train`."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    is_query = any(a.startswith("query") for a in args[1:])
    if is_query and len(words) >= 2 and words[1] in SUBCOMMANDS and (len(words) > 2 or line.endswith(" ")):
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + (" " if line.endswith(" ") else "")
        run_command("train", args, verbose=False)
    elif is_query:
        prefix = words[1] if len(words) > 1 and not line.endswith(" ") else ""
        print(" ".join(name for name in SUBCOMMANDS if name.startswith(prefix)))
    else:  # install / uninstall
        run_command("train", args, verbose=False)


def _fail(message: str, code: int) -> None:
    # "rank N: " when this is one of several ranks
    sys.stderr.write(f"dlrun: error: {rank_label()}{message}\n")
    sys.exit(code)
