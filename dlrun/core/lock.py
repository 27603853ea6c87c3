"""One writer per run or sweep directory: an exclusive lock that the operating system drops with its process.

The lock is `flock` on `<dir>/.dlrun.lock`. A process killed in any way (kill -9, a machine that goes
down) releases it, so a stale lock never blocks; the file's text (pid, host, start) only says who holds
it, and is never trusted on its own. On NFS, Linux maps flock onto the server's byte-range locks (NFSv4,
or NFSv3 with its lock manager), so processes on different nodes of a cluster exclude each other too;
a file system mounted with `nolock` (or `local_lock=all`) locks per machine only."""

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from dlrun.core.errors import ConfigError, DlrunError

LOCK_NAME = ".dlrun.lock"


class DirLocked(DlrunError):
    """Another process is writing into the directory."""

    exit_code = 1


class DirLock:
    def __init__(self, folder: Path, what: str, key: str):
        self.folder, self.what, self.key = Path(folder), what, key  # key: the override that chooses the folder
        self.fd: int | None = None

    def acquire(self) -> "DirLock":
        if self.fd is not None:  # held already
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(
                self.key, self.folder, f"must be a writable folder ({err.strerror}); choose another with {self.key}=PATH"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace").split() or ["?", "?", "?"]
            os.close(fd)
            pid, host, since = (holder + ["?", "?", "?"])[:3]
            raise DirLocked(
                f"{self.folder}: another dlrun is writing into this {self.what} directory (pid {pid} on {host}, "
                f"since {since}); wait for it to finish, or choose another folder with {self.key}=PATH"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing the last descriptor releases the lock
            self.fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
