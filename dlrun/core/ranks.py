"""Where this process stands in a multi-process run, read from the environment that torchrun, dlrun's
launcher or a submitit task set, so that any layer can ask without a process group or torch."""

import os


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def started_as_rank() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_label() -> str:
    """'rank 1: ' in a rank of a multi-process run, for error lines; '' otherwise."""
    return f"rank {rank()}: " if started_as_rank() and world_size() > 1 else ""
