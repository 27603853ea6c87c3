"""Named moments of a run where the tests kill it, to prove that a kill at any of them loses nothing.

`DLRUN_KILL_POINT=NAME:N` makes the process SIGKILL itself the N-th time it reaches `kill_point(NAME)`
(`NAME` may be `*`: the N-th point of any name). Unset, as for every user, each call is one dict lookup."""

import errno
import os
import signal

ENV = "DLRUN_KILL_POINT"
_seen: dict[str, int] = {}


def kill_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, count = spec.rpartition(":")
    if wanted not in (name, "*"):
        return
    _seen[wanted] = _seen.get(wanted, 0) + 1
    if _seen[wanted] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


FULL_DISK_ENV = "DLRUN_FULL_DISK"


def full_disk(path) -> None:
    """`DLRUN_FULL_DISK=NAME`: the disk is full when a file named NAME is written (ENOSPC, as a write would
    raise it), so that the tests can fill the disk at the exact write they mean."""
    name = os.environ.get(FULL_DISK_ENV)
    if name and os.path.basename(str(path)) == name:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
