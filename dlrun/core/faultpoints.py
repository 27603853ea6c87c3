"""Named moments of a run where the tests kill it, to prove that a kill at any of them loses nothing.

`DLRUN_KILL_POINT=NAME:N` makes the process SIGKILL itself the N-th time it reaches `kill_point(NAME)`
(`NAME` may be `*`: the N-th point of any name). Unset, as for every user, each call is one dict lookup."""

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
