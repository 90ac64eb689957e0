"""Locks in ``state_dir``: one daemon per state dir, one push per package at a time.

``flock(2)`` locks, not POSIX record locks: they belong to the open file
description, so closing some other descriptor of the file (SQLite does, and
so might anything else) never drops them, and the kernel releases them when
the process dies, however it dies. The daemon lock file holds the pid of its
owner, so a second daemon can say which one runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from quiltsync.errors import QuiltsyncError


class AlreadyRunning(QuiltsyncError):
    """Another daemon holds this state dir."""


class DaemonLock:
    """Held for the daemon's whole life; a second one fails at once."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "daemon.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(
                f"another quiltsync daemon (pid {pid}) is running on state_dir {self.path.parent}; "
                "stop it first (systemctl stop quiltsync), or give this one another state_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def running_daemon(state_dir: Path) -> int | None:
    """The pid of the daemon holding ``state_dir``, or None when none does."""
    path = state_dir / "daemon.lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


@contextlib.contextmanager
def package_lock(state_dir: Path, package: str, *, on_wait: Callable[[], None] | None = None
                 ) -> Iterator[None]:
    """Exclusive for one package's push, across processes and within one process.

    Blocks until the other push (the daemon's, or a `quiltsync push`) is done;
    ``on_wait`` is called once if it has to wait.
    """
    locks = state_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(locks / (package.replace("/", "%2F") + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
